"""The native kernel's exact variant (``NativeConv.exact``): its raw sums against a brute-force
exact integer sum (and the saturating variant's, which provably differs at the extreme), whole
layers under every backend flavour against the float engine, and the routing: which layers take
it, on the CPU qcal finds and on the VNNI CPU it emulates with ``QCAL_CPU=avx512_vnni``.

The routing depends on one property of the hardware: on a VNNI CPU oneDNN's int32 sums are exact
and serve the layers the exact kernel would (``onednn_exact``). Each routing test runs twice:
with oneDNN's sums switched off (the native kernels' routing, on any CPU) and with the machine's
own (skipped, naming VNNI, where the CPU has none)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cpu_matrix import ENV_NAME, machine_set, skip_reason
from hypothesis import given, settings
from hypothesis import strategies as st

from qcal.int8 import native
from qcal.int8.backends.ort import ort_saturates
from qcal.int8.common import accumulate
from qcal.int8.cpu.flags import cpu_flags
from qcal.int8.cpu.isa import saturates
from qcal.int8.packed import pack_conv2d, pack_linear

ROOT = Path(__file__).resolve().parents[2]
needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernel here: {native.why_unavailable()}")


def _sums(x, za, w, geometry, zw, saturate):
    """The accumulator per output as int64, (N, H'*W', O): pairs in (kh, kw, c) order per group,
    pads holding za; ``saturate``: each pair sum clamped to int16 first (FBGEMM's), else exact."""
    (sh, sw), (ph, pw), (dh, dw), g = geometry
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    cols = F.unfold(F.pad(x.double(), (pw, pw, ph, ph), value=za), (kh, kw), dilation=(dh, dw), stride=(sh, sw))
    length = cols.shape[-1]
    cols = cols.reshape(n, g, cg, kh * kw, length).permute(0, 1, 4, 3, 2).reshape(n, g, length, -1).long()
    wk = w.permute(0, 2, 3, 1).reshape(g, o // g, -1).long()
    k = wk.shape[-1]
    if k % 2:
        cols, wk = F.pad(cols, (0, 1)), F.pad(wk, (0, 1))
    prods = cols[:, :, :, None, :] * wk[None, :, None, :, :]  # (N, G, L, O/G, K), exact in int64
    pairs = prods.reshape(*prods.shape[:-1], -1, 2).sum(-1)
    raw = (pairs.clamp(-32768, 32767) if saturate else pairs).sum(-1)
    raw = raw.permute(0, 2, 1, 3).reshape(n, length, o)
    rowsum = cols.sum(-1).permute(0, 2, 1).repeat_interleave(o // g, dim=2)  # (N, L, O)
    colsum = w.permute(0, 2, 3, 1).reshape(o, -1).long().sum(1)
    return raw - za * colsum + zw.long() * (k * za - rowsum)


def _codes(gen, shape, extreme, o):
    """(x, w): random codes, or at the extreme 255 and each output channel all +127 or all -128,
    where every pair of two real taps leaves int16."""
    x = torch.randint(0, 256, shape[0], generator=gen, dtype=torch.uint8)
    w = torch.randint(-128, 128, shape[1], generator=gen, dtype=torch.int8)
    if extreme:
        x.fill_(255)
        sign = torch.rand(o, 1, 1, 1, generator=gen) < 0.5
        w = torch.where(sign, 127, -128).to(torch.int8).expand_as(w).contiguous()
    return x, w


def _check_both(x, za, w, geometry, zw, zero_points, out_hw, extreme):
    packed = native.native_conv(w, geometry)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    zarg = zw if zero_points else None
    exact = packed.exact(nhwc, za, zarg, as_float=False, out_hw=out_hw).reshape(x.shape[0], -1, w.shape[0])
    sat = packed(nhwc, za, zarg, as_float=False, out_hw=out_hw).reshape(x.shape[0], -1, w.shape[0])
    want, want_sat = _sums(x, za, w, geometry, zw, False), _sums(x, za, w, geometry, zw, True)
    assert int((exact.long() != want).sum()) == 0
    assert int((sat.long() != want_sat).sum()) == 0
    if extreme and w[0].numel() >= 2:  # a window inside the image holds a pair of two 255s: it saturates
        assert not torch.equal(want, want_sat) and not torch.equal(exact, sat)
    return packed


@needs_native
@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), groups=st.integers(1, 3), cg=st.integers(1, 9), og=st.integers(1, 20),
       kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)), stride=st.integers(1, 2), pad=st.integers(0, 2),
       dilation=st.integers(1, 2), extreme=st.booleans(), zero_points=st.booleans())
def test_exact_raw_sums_equal_the_exact_integer_sum(seed, groups, cg, og, kernel, stride, pad, dilation, extreme,
                                                     zero_points):
    gen = torch.Generator().manual_seed(seed)
    o = groups * og
    x, w = _codes(gen, ((2, groups * cg, 6, 7), (o, cg, *kernel)), extreme, o)
    za = int(torch.randint(0, 256, (), generator=gen))
    zw = torch.randint(-30, 30, (o,), generator=gen) if zero_points else torch.zeros(o, dtype=torch.long)
    geometry = ((stride, stride), (pad, pad), (dilation, 1), groups)
    oh = (6 + 2 * pad - dilation * (kernel[0] - 1) - 1) // stride + 1
    ow = (7 + 2 * pad - (kernel[1] - 1) - 1) // stride + 1
    if oh < 1 or ow < 1:
        return
    packed = _check_both(x, za, w, geometry, zw, zero_points, (oh, ow), extreme)
    assert not packed.depthwise or groups > 1


@needs_native
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c=st.integers(2, 70), kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       stride=st.integers(1, 2), pad=st.integers(0, 2), dilation=st.integers(1, 2), extreme=st.booleans(),
       zero_points=st.booleans())
def test_exact_depthwise_sums_every_tap_exactly(seed, c, kernel, stride, pad, dilation, extreme, zero_points):
    # the depthwise kernel (qcal_dw): channels in blocks of 32, so c runs past one block and leaves tails
    gen = torch.Generator().manual_seed(seed)
    x, w = _codes(gen, ((2, c, 7, 6), (c, 1, *kernel)), extreme, c)
    za = int(torch.randint(0, 256, (), generator=gen))
    zw = torch.randint(-30, 30, (c,), generator=gen) if zero_points else torch.zeros(c, dtype=torch.long)
    geometry = ((stride, stride), (pad, pad), (dilation, dilation), c)
    oh = (7 + 2 * pad - dilation * (kernel[0] - 1) - 1) // stride + 1
    ow = (6 + 2 * pad - dilation * (kernel[1] - 1) - 1) // stride + 1
    if oh < 1 or ow < 1:
        return
    assert _check_both(x, za, w, geometry, zw, zero_points, (oh, ow), extreme).depthwise


class _Spy:
    """Counts the native kernel's calls: saturating (``__call__``) and exact (``exact``)."""

    def __init__(self, monkeypatch):
        self.saturating = self.exact = 0
        call, exact = native.NativeConv.__call__, native.NativeConv.exact

        def spy_call(this, *args, **kwargs):
            self.saturating += 1
            return call(this, *args, **kwargs)

        def spy_exact(this, *args, **kwargs):
            self.exact += 1
            return exact(this, *args, **kwargs)

        monkeypatch.setattr(native.NativeConv, "__call__", spy_call)
        monkeypatch.setattr(native.NativeConv, "exact", spy_exact)


# (channels, outputs, kernel, stride, groups); o == c == groups: depthwise
_LAYERS = [(3, 32, 7, 2, 1), (32, 48, 3, 1, 1), (64, 32, 1, 1, 1), (64, 32, 1, 2, 1), (32, 32, 3, 1, 8),
           (32, 32, 3, 2, 32), (40, 40, 5, 1, 40), ("linear", 40, 301, 1, 1)]
_FLAVOURS = [("fbgemm", False), ("fbgemm", None), ("qnnpack", None), ("ort", None), ("ort", False), ("onnx", None),
             ("q31", None), ("x86", None), ("x86", False)]


def _layer(layer, backend, gen, bias_kind):
    """(fast, slow, x, family): a packed layer with full-range weights, its float-engine twin, and
    full-range activations (pairs can saturate)."""
    c, o, k, stride, groups = layer
    per_tensor = backend == "qnnpack"  # torch's qnnpack weights: per tensor, zero point 0 here
    sw = 0.004 if per_tensor else torch.rand(o, generator=gen) * 0.01 + 1e-3
    zw = 0 if per_tensor else torch.randint(-4, 5, (o,), generator=gen)
    bias = {"float": torch.randn(o, generator=gen) * 3, "int32": torch.randint(-2**12, 2**12, (o,), generator=gen,
            dtype=torch.int32), "none": None}[bias_kind]
    if c == "linear":
        w = torch.randint(-128, 128, (o, k), generator=gen, dtype=torch.int8)
        x = torch.randint(0, 256, (7, k), generator=gen, dtype=torch.uint8)
        fast, slow = (pack_linear(w, sw, zw, bias, backend=backend, method=m) for m in ("auto", "float"))
        return fast, slow, x, "gemm"
    w = torch.randint(-128, 128, (o, c // groups, k, k), generator=gen, dtype=torch.int8)
    x = torch.randint(0, 256, (2, c, 15, 15), generator=gen, dtype=torch.uint8)
    kw = dict(stride=stride, padding=k // 2, groups=groups, backend=backend)
    fast, slow = (pack_conv2d(w, sw, zw, bias, **kw, method=m) for m in ("auto", "float"))
    return fast, slow, x.contiguous(memory_format=torch.channels_last), fast.path


def _run_both(fast, slow, x, saturate, signed_out):
    zo = torch.tensor(-3, dtype=torch.int8) if signed_out else 60
    so = 0.5 if x.dim() == 2 else 0.05
    try:
        want = slow(x, 0.03, 11, so, zo, saturate=saturate)
    except (ValueError, TypeError):  # a layer or scale the backend refuses: refused alike
        with pytest.raises((ValueError, TypeError)):
            fast(x, 0.03, 11, so, zo, saturate=saturate)
        return None
    return fast(x, 0.03, 11, so, zo, saturate=saturate), want


@pytest.fixture(params=["native", "onednn"], ids=["no-onednn", "machine-onednn"])
def sums(request, monkeypatch):
    """Who computes the exact sums besides the native kernel: nobody ("native": oneDNN's
    sums off, as on a CPU without VNNI) or oneDNN where this CPU has VNNI ("onednn")."""
    if request.param == "native":
        monkeypatch.setattr(accumulate, "onednn_exact", lambda: False)
    elif not accumulate.onednn_exact():
        pytest.skip(skip_reason("avx512_vnni") + " (oneDNN's exact sums need VNNI)")
    return request.param


def _route(sums: str) -> str:
    """Who serves the exact sums: oneDNN where the fixture allows it and the machine has AMX-INT8
    (faster there), else the native kernel (on a VNNI CPU without AMX it is as fast or faster)."""
    return "onednn" if sums == "onednn" and "amx_int8" in cpu_flags() else "native"


def _expected(fast, backend, saturate, family):
    """Which kernel should run the layer: "saturating", "exact" or "float" (the float engine),
    from the backends' rules (``saturates``, ``ort_saturates``), not from the router."""
    flavour = fast.flavour()
    if flavour == "fbgemm":
        sat = saturate if saturate is not None else saturates(family)
    elif flavour == "ort":
        sat = ort_saturates(fast.ort_path, saturate)
    else:  # qnnpack, onnx, q31, x86's oneDNN route: the exact sum
        sat = False
    if sat:
        return "saturating" if flavour == "fbgemm" else "float"  # MLAS pairs in its own order
    if fast.accumulator.onednn_here(255, 11) and "amx_int8" in cpu_flags():
        return "float"  # an AMX CPU: oneDNN's exact sums (faster there) serve the layer; without AMX the kernel
    if not (native.native_vnni() or family == "depthwise" or fast.w_q.dim() == 2 or fast.w_q.shape[2:] == (1, 1)):
        return "float"  # AVX2 build, 3x3 im2col layer: the float engine is faster than the widened kernel
    return "exact"  # full-range codes and weights: a pair could saturate


@needs_native
@pytest.mark.parametrize("cpu", [None, "avx512_vnni"])
@pytest.mark.parametrize("layer", _LAYERS)
@pytest.mark.parametrize(("backend", "saturate"), _FLAVOURS)
def test_layers_match_the_float_engine_on_the_exact_kernel(monkeypatch, sums, cpu, layer, backend, saturate):
    """Full-range activations and weights under every backend flavour: 0 values apart from the
    float engine, and the exact kernel ran wherever the wanted sum is exact (under fbgemm on the
    emulated VNNI CPU every family but depthwise, with AVX2 instructions here)."""
    if cpu is None:
        monkeypatch.delenv("QCAL_CPU", raising=False)
    else:
        monkeypatch.setenv("QCAL_CPU", cpu)
    gen = torch.Generator().manual_seed(len(_LAYERS) * _FLAVOURS.index((backend, saturate)) + _LAYERS.index(layer))
    bias_kind = ("float", "int32", "none")[int(torch.randint(0, 3, (), generator=gen))]
    fast, slow, x, family = _layer(layer, backend, gen, bias_kind)
    spy = _Spy(monkeypatch)
    found = _run_both(fast, slow, x, saturate, signed_out=bool(torch.randint(0, 2, (), generator=gen)))
    if found is None:
        return
    got, want = found
    assert got.dtype == want.dtype and int((got != want).sum()) == 0
    expected = _expected(fast, backend, saturate, family)
    assert (spy.saturating, spy.exact) == {"saturating": (1, 0), "exact": (0, 1), "float": (0, 0)}[expected]
    if cpu == "avx512_vnni" and backend == "fbgemm" and saturate is None:
        if family == "depthwise":
            assert expected == "saturating"  # FBGEMM's depthwise kernel saturates even with VNNI
        elif (layer[2] == 1 or layer[0] == "linear") and not saturates(family):  # pointwise and linear
            # on VNNI's GEMM kernels (unless FBGEMM_ENABLE_INSTRUCTIONS lowers them): the exact sum,
            # by the exact kernel or by oneDNN
            assert expected == {"native": "exact", "onednn": "float"}[_route(sums)]


@needs_native
def test_detailed_results_and_an_explicit_method_keep_the_float_engine(monkeypatch, sums):
    monkeypatch.setenv("QCAL_CPU", "avx512_vnni")
    gen = torch.Generator().manual_seed(7)
    fast, slow, x, _ = _layer((64, 32, 1, 1, 1), "fbgemm", gen, "float")
    spy = _Spy(monkeypatch)
    want = slow(x, 0.03, 11, 0.05, 60)
    detailed = fast(x, 0.03, 11, 0.05, 60, detailed=True)
    assert (spy.saturating, spy.exact) == (0, 0)
    assert torch.equal(detailed.out, want)
    assert torch.equal(fast(x, 0.03, 11, 0.05, 60), want)
    if saturates("pointwise"):  # FBGEMM_ENABLE_INSTRUCTIONS lowered the GEMM kernels: they saturate
        assert (spy.saturating, spy.exact) == (1, 0)
    else:  # VNNI's: the exact sum, by the exact kernel or by oneDNN
        assert (spy.saturating, spy.exact) == {"native": (0, 1), "onednn": (0, 0)}[_route(sums)]


@needs_native
def test_codes_inside_int16_pairs_keep_the_saturating_kernel(monkeypatch, sums):
    # codes <= 127: no pair can saturate, so the saturating kernel is the exact sum, and faster
    # than the widened one of the AVX2 build (a VNNI build's exact kernel is the faster: it runs
    # both); full-range codes: the exact kernel; oneDNN's sums where the machine has them.
    # Under fbgemm on AVX2 full-range pairs saturate, as its kernel does: the saturating
    # kernel, and the exact sum differs
    monkeypatch.setenv("QCAL_CPU", "avx2")
    gen = torch.Generator().manual_seed(8)
    spy = _Spy(monkeypatch)
    for backend in ("qnnpack", "onnx"):
        spy.saturating = spy.exact = 0
        fast, slow, x, _ = _layer((64, 32, 1, 1, 1), backend, gen, "none")
        small = (x // 2).contiguous(memory_format=torch.channels_last)
        if native.native_vnni():
            counts = {"native": [(0, 1), (0, 2)], "onednn": [(0, 0), (0, 0)]}[_route(sums)]
        else:
            counts = {"native": [(1, 0), (1, 1)], "onednn": [(1, 0), (1, 0)]}[_route(sums)]
        for codes, count in zip((small, x), counts, strict=True):
            assert torch.equal(fast(codes, 0.03, 11, 0.05, 60, relu=True), slow(codes, 0.03, 11, 0.05, 60, relu=True))
            assert (spy.saturating, spy.exact) == count
    spy.saturating = spy.exact = 0
    fb, fb_slow, x, _ = _layer((64, 32, 1, 1, 1), "fbgemm", gen, "float")
    assert torch.equal(fb(x, 0.03, 11, 0.05, 60), fb_slow(x, 0.03, 11, 0.05, 60))
    assert (spy.saturating, spy.exact) == (1, 0)
    assert not torch.equal(fb(x, 0.03, 11, 0.05, 60, saturate=False), fb_slow(x, 0.03, 11, 0.05, 60))
    assert spy.exact == {"native": 1, "onednn": 0}[_route(sums)]


@pytest.mark.parametrize("build", sorted(native.VARIANTS))
def test_every_build_this_cpu_runs_sums_exactly(build):
    """Each build of the kernel (AVX2's widened vpmaddwd, the VNNI builds' vpdpbusd) loaded in a
    child process by ``QCAL_NATIVE_ISA``: the raw-sum tests above, against the int64 brute force,
    and the layer tests against the float engine. Skipped, naming the instructions, on a CPU
    without them."""
    missing = sorted(set(native.VARIANTS[build][1]) - cpu_flags())
    if missing:
        pytest.skip(f"needs {', '.join(m.upper() for m in missing)}: this CPU has {ENV_NAME[machine_set()]}")
    env = {**os.environ, native.ISA_VAR: build, "PYTHONPATH": str(ROOT)}
    code = (f"from qcal.int8 import native; assert native.variant() == {build!r} and native.available(), "
            "native.why_unavailable()")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", "-x", __file__,
         "-k", "raw_sums or depthwise_sums or (float_engine and no-onednn)"],
        env=env, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-2000:]
    passed = re.search(r"(\d+) passed", child.stdout)
    assert passed and int(passed[1]) >= 140 and " failed" not in child.stdout, child.stdout[-500:]


def test_a_build_the_cpu_lacks_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(native.ISA_VAR, "avx512_vnni")
    monkeypatch.setattr(native.build, "cpu_flags", lambda: {"avx2", "fma"})
    lib, why = native.build._load_now()
    assert lib is None and why == "QCAL_NATIVE_ISA=avx512_vnni needs avx512_vnni, avx512bw, avx512f, avx512vl: this CPU has not"
    monkeypatch.setenv(native.ISA_VAR, "sse2")
    assert native.build._load_now() == (None, "QCAL_NATIVE_ISA=sse2 is not a build: avx2, avx512_vnni, avx_vnni")
    monkeypatch.delenv(native.ISA_VAR)
    assert native.variant() == "avx2"  # the best build of an AVX2 CPU
    monkeypatch.setattr(native.build, "cpu_flags", lambda: {"avx2", "fma", "avx_vnni"})
    assert native.variant() == "avx_vnni"


@needs_native
@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), backend=st.sampled_from(["fbgemm", "qnnpack", "ort"]),
       per_channel=st.booleans(), bias=st.sampled_from(["none", "float", "int32"]), layout=st.sampled_from(["nhwc", "linear"]),
       as_float=st.booleans(), relu=st.booleans(), signed=st.booleans(), o=st.integers(1, 40))
def test_the_store_alone_requantizes_as_torch_ops_do(seed, backend, per_channel, bias, layout, as_float, relu, signed, o):
    """``native.requant`` (sums from oneDNN or the float engine, through the fused store) against
    ``requantize``: every flavour it covers, int32 and exact-float32 sums, channel tails."""
    from qcal.int8.common.requant import fused_epilogue, requant_multipliers, requantize
    gen = torch.Generator().manual_seed(seed)
    sw = torch.rand(o, generator=gen).double() * 0.01 + 1e-3 if per_channel else 0.004
    b = {"none": None, "float": torch.randn(o, generator=gen) * 3,
         "int32": torch.randint(-2**12, 2**12, (o,), generator=gen, dtype=torch.int32)}[bias]
    if backend == "qnnpack" and bias == "float":
        b = None
    rq = requant_multipliers(0.03, sw, 0.05, b, backend=backend)
    dtype, zo = (torch.int8, -3) if signed else (torch.uint8, 60)
    epilogue = fused_epilogue(rq, zo, relu, dtype, o)
    if epilogue is None:
        return
    shape, axis = ((2, o, 5, 3), 1) if layout == "nhwc" else ((7, o), -1)
    acc = torch.randint(-20000, 20000, shape, generator=gen, dtype=torch.int32)
    if layout == "nhwc":
        acc = acc.contiguous(memory_format=torch.channels_last)
    acc = acc.float() if as_float else acc
    want = requantize(acc.clone(), rq, zo, relu=relu, out_dtype=dtype, channel_axis=axis, bound=20000.0)
    got = native.requant(acc, epilogue, axis)
    assert got is not None and got.shape == want.shape and got.dtype == want.dtype
    assert int((got != want).sum()) == 0
    if bias == "none":  # oneDNN's fold: y = f32(acc + term) already holds the bias, the store adds none
        y = (acc.float() + torch.randn(o, generator=gen).reshape([-1] + [1] * (acc.dim() - 2 if axis == 1 else 0)) * 3)
        y = y.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else y
        want = requantize(y.clone(), rq, zo, relu=relu, out_dtype=dtype, channel_axis=axis, bound=20004.0)
        assert int((native.requant(y, epilogue, axis, biased=True) != want).sum()) == 0
    # the weight zero-point term subtracted in the store: acc - zw_j * sums[group of j]
    groups = max(g for g in range(1, o + 1) if o % g == 0 and g <= 4) if layout == "nhwc" else 1
    zw = torch.randint(-20, 21, (o,), generator=gen)
    sums_shape = (shape[0], groups, *shape[2:]) if layout == "nhwc" else (*shape[:-1], 1)
    sums = torch.randint(-3000, 3000, sums_shape, generator=gen).float()
    full = sums.repeat_interleave(o // groups, dim=1) if layout == "nhwc" else sums
    zw_b = zw.reshape(-1, 1, 1) if layout == "nhwc" else zw
    want = requantize((acc.long() - zw_b * full.long()).int(), rq, zo, relu=relu, out_dtype=dtype,
                      channel_axis=axis, bound=80000.0)
    assert int((native.requant(acc, epilogue, axis, sums=sums, zw=zw) != want).sum()) == 0
