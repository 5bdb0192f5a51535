"""The AVX-512-VNNI build's 512-bit paths (``native_u8s8.c`` under ``QCAL_VNNI512``: the 1x1/GEMM
exact kernel's store, the depthwise kernel, the fused epilogue on 16 lanes) against the AVX2 build,
value for value. Both builds are loaded in this process (``build._load_now`` under
``QCAL_NATIVE_ISA``), each packs its own weights (the depthwise layouts differ) and runs the same
random layers: channel tails, odd tap counts, padding, strides, dilation, groups, the activation
and weight zero points, saturating and exact sums, outputs as int32 (kind 0), float32 (kind 1) and
8-bit codes through every epilogue mode (kind 2), uint8 and int8. Skipped, naming the
instructions, on a CPU without the AVX-512-VNNI build's."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qcal.int8 import native
from qcal.int8.cpu.flags import cpu_flags
from qcal.int8.native import build

WIDE = "avx512_vnni"
_MISSING = sorted(set(build.VARIANTS[WIDE][1]) - cpu_flags())
pytestmark = pytest.mark.skipif(
    bool(_MISSING) or not native.available(),
    reason=f"needs {', '.join(m.upper() for m in _MISSING)}: this CPU has not" if _MISSING
    else f"no native kernel here: {native.why_unavailable()}")


@pytest.fixture(scope="module")
def libs():
    """{build name: its loaded library} for the AVX2 and the AVX-512-VNNI builds."""
    loaded = {}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("avx2", WIDE):
            mp.setenv(build.ISA_VAR, name)
            lib, why = build._load_now()
            assert lib is not None, why
            loaded[name] = lib
    return loaded


@contextlib.contextmanager
def _using(lib):
    """``native``'s packing and kernels on ``lib`` for the duration."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "load", lambda: (lib, ""))
        yield


def _epilogue(draw, o: int) -> native.Epilogue:
    """A random fused store: any mode, multipliers from tiny to huge (rounded values past 2^31
    take the `big` branch), any clamp inside the dtype, either `big` side."""
    signed = draw(st.booleans())
    qmin, qmax = (-128, 127) if signed else (0, 255)
    lo = draw(st.integers(qmin, qmax))
    hi = draw(st.integers(lo, qmax))
    zo = draw(st.integers(qmin, qmax))
    mode = draw(st.integers(0, 3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    log_m = torch.empty(o).uniform_(-12, draw(st.sampled_from([-2.0, 4.0, 30.0])), generator=gen)
    multiplier = (2.0 ** log_m).float() * torch.where(torch.rand(o, generator=gen) < 0.1, -1.0, 1.0)
    fb = (torch.randn(o, generator=gen) * 2.0 ** draw(st.integers(0, 24))).float() if mode in (1, 2) else None
    ib = torch.randint(-2**20, 2**20, (o,), generator=gen, dtype=torch.int32) if mode == 3 else None
    rcp = float(torch.tensor(draw(st.floats(1e-3, 1e3)), dtype=torch.float32))
    return native.Epilogue(multiplier, mode, fb, ib, rcp, zo, lo, hi, torch.int8 if signed else torch.uint8,
                           draw(st.booleans()))


def _out_hw(h, w, kernel, stride, padding, dilation):
    return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                 for size, k, s, p, d in zip((h, w), kernel, stride, padding, dilation, strict=True))


def _every_output(libs, w_q, geometry, x, za, zw, out_hw, epilogue):
    """{build: [outputs]}: saturating and exact sums, as int32, float32 and through the epilogue."""
    found = {}
    for name, lib in libs.items():
        with _using(lib):
            conv = native.native_conv(w_q, geometry)
            assert conv is not None
            outs = []
            for exact in (False, True):
                run = conv.exact if exact else conv
                outs += [run(x, za, zw, as_float=f, out_hw=out_hw) for f in (False, True)]
                outs.append(run(x, za, zw, as_float=False, out_hw=out_hw, epilogue=epilogue))
            found[name] = outs
    return found


def _assert_same(found, what):
    wide, narrow = found[WIDE], found["avx2"]
    differing = sum(int((a != b).sum()) for a, b in zip(wide, narrow, strict=True))
    assert differing == 0, f"{differing} values differ between the builds: {what}"


def _codes(draw, shape):
    """Activations from a random floor (full range: the saturating pairs saturate)."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    floor = draw(st.sampled_from([0, 100, 200, 255]))
    return torch.randint(floor, 256, shape, generator=gen, dtype=torch.uint8), gen


def _zw(draw, o, gen):
    kind = draw(st.sampled_from(["none", "tensor", "channel"]))
    if kind == "none":
        return None
    if kind == "tensor":
        return torch.full((o,), draw(st.integers(-30, 30)), dtype=torch.int64)
    return torch.randint(-30, 31, (o,), generator=gen, dtype=torch.int64)


@st.composite
def depthwise_layers(draw):
    c = draw(st.one_of(st.integers(1, 40), st.integers(41, 200), st.sampled_from([32, 64, 96, 144, 192])))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, kh // 2 + 1)), draw(st.integers(0, kw // 2 + 1)))
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 11)), draw(st.integers(1, 11))
    out_hw = _out_hw(h, w, (kh, kw), stride, padding, dilation)
    assume(min(out_hw) >= 1)
    x, gen = _codes(draw, (n, h, w, c))
    w_q = torch.randint(-128, 128, (c, 1, kh, kw), generator=gen, dtype=torch.int8)
    return w_q, (stride, padding, dilation, c), x, draw(st.integers(0, 255)), _zw(draw, c, gen), out_hw, \
        _epilogue(draw, c)


@st.composite
def gemm_layers(draw):
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cg, kg = draw(st.integers(1, 40)), draw(st.one_of(st.integers(1, 40), st.sampled_from([16, 24, 32, 48, 96])))
    k = draw(st.sampled_from([1, 1, 2, 3]))
    stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, k // 2))
    if draw(st.booleans()):  # the 1x1 layers' direct path: whole blocks of 32 rows read in place
        k, stride, padding, groups, cg = 1, 1, 0, 1, draw(st.sampled_from([4, 8, 16, 24, 96, 100]))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    geometry = ((stride, stride), (padding, padding), (1, 1), groups)
    out_hw = _out_hw(h, w, (k, k), (stride, stride), (padding, padding), (1, 1))
    assume(min(out_hw) >= 1)
    x, gen = _codes(draw, (n, h, w, cg * groups))
    o = kg * groups
    w_q = torch.randint(-128, 128, (o, cg, k, k), generator=gen, dtype=torch.int8)
    if draw(st.booleans()):  # weights near +-127: with full-range activations most pairs saturate
        near = torch.tensor([-128, -127, -126, 125, 126, 127], dtype=torch.int8)
        w_q = near[torch.randint(0, 6, w_q.shape, generator=gen)]
    return w_q, geometry, x, draw(st.integers(0, 255)), _zw(draw, o, gen), out_hw, _epilogue(draw, o)


def _check(libs, layer, what):
    w_q, geometry, x, za, zw, out_hw, epilogue = layer
    _assert_same(_every_output(libs, w_q, geometry, x, za, zw, out_hw, epilogue),
                 f"{what} {tuple(w_q.shape)} {geometry} x {tuple(x.shape)}")


@settings(max_examples=150, deadline=None)
@given(layer=depthwise_layers())
def test_the_wide_depthwise_kernel_is_the_avx2_kernel(libs, layer):
    _check(libs, layer, "depthwise")


@settings(max_examples=150, deadline=None)
@given(layer=gemm_layers())
def test_the_wide_gemm_store_is_the_avx2_store(libs, layer):
    _check(libs, layer, "conv")


def test_the_epilogue_extremes_agree(libs):
    """Values at the edges of the store: |y * m| past 2^31 (the `big` branch, both sides), NaN
    multipliers (the clamp answers lo), exact ties of the rounding, -0.0, and a 1x1 layer whose
    sums are the extremes of int32 once the zero-point terms are in."""
    o = 37
    x = torch.full((1, 8, 8, 64), 255, dtype=torch.uint8)
    w_q = torch.where(torch.arange(o)[:, None, None, None] % 2 == 0, 127, -128).to(torch.int8).expand(o, 64, 1, 1)
    multiplier = torch.tensor([2.0**40, -2.0**40, float("nan"), 0.5, -0.5, 1.5, 2.0**-30, 0.0, -0.0] * 5,
                              dtype=torch.float32)[:o]
    for mode, big_is_low, signed in ((0, True, False), (1, False, True), (2, True, True), (3, False, False)):
        fb = torch.linspace(-2**25, 2**25, o).float() if mode in (1, 2) else None
        ib = torch.arange(o, dtype=torch.int32) * 1000 if mode == 3 else None
        epilogue = native.Epilogue(multiplier, mode, fb, ib, 0.37, 3 if signed else 200, -128 if signed else 0,
                                   127 if signed else 255, torch.int8 if signed else torch.uint8, big_is_low)
        for za in (0, 255):
            _assert_same(_every_output(libs, w_q.contiguous(), ((1, 1), (0, 0), (1, 1), 1), x, za,
                                       torch.arange(o, dtype=torch.int64) - 18, (8, 8), epilogue),
                         f"extremes, mode {mode}, za {za}")
