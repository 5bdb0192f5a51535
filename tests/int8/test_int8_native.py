"""The native u8 x s8 kernel (``qcal/int8/native/__init__.py``): its raw sums against a brute force over
every int16 pair, its fused requantization against the two-pass engine, whole layers against
torch's fbgemm kernels where pairs saturate, and the fallback when it cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qcal.int8 import native
from qcal.int8.common.saturation import fbgemm_conv_path
from qcal.int8.cpu.isa import assumed_cpu, saturates
from qcal.int8.packed import pack_conv2d, pack_linear

needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernel here: {native.why_unavailable()}")
ROOT = Path(__file__).resolve().parents[2]


def _brute(x, za, w, geometry, zw):
    """``sum_p sat16(a_2p w_2p + a_2p+1 w_2p+1) - za sum w - zw sum a + K za zw`` per output, with
    pairs in (kh, kw, c) order per group, K padded to even, pads holding za: (N, H'*W', O)."""
    (sh, sw), (ph, pw), (dh, dw), g = geometry
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    cols = F.unfold(F.pad(x.double(), (pw, pw, ph, ph), value=za), (kh, kw), dilation=(dh, dw), stride=(sh, sw))
    length = cols.shape[-1]
    cols = cols.reshape(n, g, cg, kh * kw, length).permute(0, 1, 4, 3, 2).reshape(n, g, length, -1)
    wk = w.permute(0, 2, 3, 1).reshape(g, o // g, -1).double()
    k = wk.shape[-1]
    if k % 2:
        cols, wk = F.pad(cols, (0, 1)), F.pad(wk, (0, 1))
    prods = cols[:, :, :, None, :] * wk[None, :, None, :, :]  # (N, G, L, O/G, K)
    raw = prods.reshape(*prods.shape[:-1], -1, 2).sum(-1).clamp(-32768, 32767).sum(-1)
    raw = raw.permute(0, 2, 1, 3).reshape(n, length, o)
    rowsum = cols.sum(-1).permute(0, 2, 1).repeat_interleave(o // g, dim=2)  # (N, L, O)
    colsum = w.permute(0, 2, 3, 1).reshape(o, -1).double().sum(1)
    return raw - za * colsum + zw.double() * (k * za - rowsum)


@needs_native
@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), groups=st.integers(1, 3), cg=st.integers(1, 9), og=st.integers(1, 20),
       kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)), stride=st.integers(1, 2), pad=st.integers(0, 2),
       dilation=st.integers(1, 2), extreme=st.booleans(), zero_points=st.booleans())
def test_raw_sums_equal_a_brute_force_over_every_pair(seed, groups, cg, og, kernel, stride, pad, dilation, extreme,
                                                      zero_points):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (2, groups * cg, 6, 7), generator=gen, dtype=torch.uint8)
    w = torch.randint(-128, 128, (groups * og, cg, *kernel), generator=gen, dtype=torch.int8)
    if extreme:  # codes at 255 and each output channel all +127 or all -128: every pair saturates
        x.fill_(255)
        sign = torch.rand(groups * og, 1, 1, 1, generator=gen) < 0.5
        w = torch.where(sign, 127, -128).to(torch.int8).expand_as(w).contiguous()
    za = int(torch.randint(0, 256, (), generator=gen))
    zw = torch.randint(-30, 30, (groups * og,), generator=gen) if zero_points else torch.zeros(groups * og, dtype=torch.long)
    geometry = ((stride, stride), (pad, pad), (1, dilation), groups)
    oh = (6 + 2 * pad - (kernel[0] - 1) - 1) // stride + 1
    ow = (7 + 2 * pad - dilation * (kernel[1] - 1) - 1) // stride + 1
    if oh < 1 or ow < 1:
        return
    packed = native.native_conv(w, geometry)
    got = packed(x.permute(0, 2, 3, 1).contiguous(), za, zw if zero_points else None, as_float=False, out_hw=(oh, ow))
    want = _brute(x, za, w, geometry, zw)
    assert int((got.reshape(2, -1, groups * og).double() != want).sum()) == 0


@needs_native
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c=st.integers(2, 70), kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       stride=st.integers(1, 2), pad=st.integers(0, 2), dilation=st.integers(1, 2), extreme=st.booleans(),
       zero_points=st.booleans())
def test_depthwise_taps_pair_like_a_brute_force(seed, c, kernel, stride, pad, dilation, extreme, zero_points):
    # the depthwise kernel (qcal_dw) pairs taps of one channel; channels in blocks of 32, so c
    # runs past one block and leaves tails
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (2, c, 7, 6), generator=gen, dtype=torch.uint8)
    w = torch.randint(-128, 128, (c, 1, *kernel), generator=gen, dtype=torch.int8)
    if extreme:
        x.fill_(255)
        w = torch.where(torch.rand(c, 1, 1, 1, generator=gen) < 0.5, 127, -128).to(torch.int8).expand_as(w).contiguous()
    za = int(torch.randint(0, 256, (), generator=gen))
    zw = torch.randint(-30, 30, (c,), generator=gen) if zero_points else torch.zeros(c, dtype=torch.long)
    geometry = ((stride, stride), (pad, pad), (dilation, dilation), c)
    oh = (7 + 2 * pad - dilation * (kernel[0] - 1) - 1) // stride + 1
    ow = (6 + 2 * pad - dilation * (kernel[1] - 1) - 1) // stride + 1
    if oh < 1 or ow < 1:
        return
    packed = native.native_conv(w, geometry)
    assert packed.depthwise
    got = packed(x.permute(0, 2, 3, 1).contiguous(), za, zw if zero_points else None, as_float=False, out_hw=(oh, ow))
    assert int((got.reshape(2, -1, c).double() != _brute(x, za, w, geometry, zw)).sum()) == 0


_BIASES = st.sampled_from(["float", "int32", "none"])


@needs_native
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), backend=st.sampled_from(["fbgemm", "qnnpack", "ort", "x86"]),
       per_channel=st.booleans(), affine=st.booleans(), bias=_BIASES, relu=st.booleans(),
       signed_out=st.booleans(), full_range=st.booleans(), log_so=st.floats(-6, 3), linear=st.booleans(),
       k=st.sampled_from([3, 16, 130, 1200]))
def test_fused_requantization_equals_the_two_pass_engine(seed, backend, per_channel, affine, bias, relu, signed_out,
                                                         full_range, log_so, linear, k):
    # the float engine (method="float") never takes the native path: accumulate, emulate, requantize
    gen = torch.Generator().manual_seed(seed)
    o = 24
    if backend == "qnnpack" and (per_channel or affine):
        per_channel, affine = False, False  # torch's qnnpack weights: per tensor, zero point 0 here
    shape = (o, k) if linear else (o, max(k // 9, 1), 3, 3)
    w = torch.randint(-127, 128, shape, generator=gen, dtype=torch.int8)
    sw = torch.rand(o, generator=gen) * 0.02 + 1e-3 if per_channel else 0.01
    zw = torch.randint(-5, 6, (o,), generator=gen) if affine and per_channel else (3 if affine else 0)
    b = {"float": torch.randn(o, generator=gen) * 50, "int32": torch.randint(-2**20, 2**20, (o,), generator=gen,
         dtype=torch.int32), "none": None}[bias]
    hi = 256 if full_range else 128
    if linear:
        x = torch.randint(0, hi, (5, k), generator=gen, dtype=torch.uint8)
        fast = pack_linear(w, sw, zw, b, backend=backend)
        slow = pack_linear(w, sw, zw, b, backend=backend, method="float")
    else:
        x = torch.randint(0, hi, (2, shape[1], 6, 5), generator=gen, dtype=torch.uint8)
        x = x.contiguous(memory_format=torch.channels_last)
        fast = pack_conv2d(w, sw, zw, b, padding=1, backend=backend)
        slow = pack_conv2d(w, sw, zw, b, padding=1, backend=backend, method="float")
    so, zo = 10.0 ** log_so, (torch.tensor(-3, dtype=torch.int8) if signed_out else 100)
    try:
        want = slow(x, 0.05, 9, so, zo, relu=relu)
    except ValueError:  # a requantization scale the backend refuses: refused alike
        with pytest.raises(ValueError):
            fast(x, 0.05, 9, so, zo, relu=relu)
        return
    got = fast(x, 0.05, 9, so, zo, relu=relu)
    assert got.dtype == want.dtype and int((got != want).sum()) == 0


class _Spy:
    def __init__(self, monkeypatch):
        self.calls = 0
        original = native.NativeConv.__call__

        def spy(this, *args, **kwargs):
            self.calls += 1
            return original(this, *args, **kwargs)

        monkeypatch.setattr(native.NativeConv, "__call__", spy)


def _torch_conv(x, za, sa, w, sw, zw, bias, geometry, so, zo):
    stride, padding, dilation, groups = geometry
    xq = torch._make_per_tensor_quantized_tensor(x, sa, za)
    if isinstance(sw, torch.Tensor):
        wq = torch._make_per_channel_quantized_tensor(w, sw.double(), zw, 0)
    else:
        wq = torch._make_per_tensor_quantized_tensor(w, sw, zw)
    packed = torch.ops.quantized.conv2d_prepack(wq, bias, list(stride), list(padding), list(dilation), groups)
    return torch.ops.quantized.conv2d(xq, packed, so, zo).int_repr()


@needs_native
@pytest.mark.parametrize(("c", "o", "k", "stride", "groups"), [
    (3, 32, 7, 2, 1),     # an RGB stem: pairs straddle taps
    (32, 48, 3, 1, 1),    # im2col
    (64, 32, 1, 1, 1),    # pointwise
    (64, 32, 1, 2, 1),    # strided 1x1
    (32, 32, 3, 1, 8),    # groupwise (4 channels per group)
    (32, 32, 3, 2, 32),   # depthwise
    (48, 48, 5, 1, 48),   # depthwise, 5x5, a channel tail past one block of 32
])
@pytest.mark.parametrize("scheme", ["per_channel", "per_tensor_affine"])
def test_layers_match_torchs_fbgemm_kernels_on_each_instruction_set(cpu_set, monkeypatch, c, o, k, stride, groups,
                                                                    scheme):
    """Full-range activations, so that int16 pairs saturate wherever FBGEMM's kernel for the
    layer's family sums pairs (``saturates``: every family on AVX2 and AVX-512, depthwise alone
    with VNNI): there the native kernel runs it, and the exact sum would differ from torch."""
    torch.backends.quantized.engine = "fbgemm"
    gen = torch.Generator().manual_seed(c * o + k)
    x = torch.randint(120, 256, (2, c, 15, 15), generator=gen, dtype=torch.uint8)
    w = torch.randint(-128, 128, (o, c // groups, k, k), generator=gen, dtype=torch.int8)
    bias = torch.randn(o, generator=gen) * 3
    if scheme == "per_channel":
        sw, zw = torch.rand(o, generator=gen) * 0.01 + 1e-3, torch.zeros(o, dtype=torch.long)
    else:
        sw, zw = 0.004, 5
    geometry = ((stride, stride), (k // 2, k // 2), (1, 1), groups)
    so = 0.02 * (c // groups) * k
    ref = _torch_conv(x, 11, 0.03, w, sw, zw, bias, geometry, so, 60)
    spy = _Spy(monkeypatch)
    ours = pack_conv2d(w, sw, zw, bias, stride=stride, padding=k // 2, groups=groups)(x, 0.03, 11, so, 60)
    assert int((ours != ref).sum()) == 0
    exact = pack_conv2d(w, sw, zw, bias, stride=stride, padding=k // 2, groups=groups)(x, 0.03, 11, so, 60,
                                                                                      saturate=False)
    if saturates(fbgemm_conv_path(c, tuple(w.shape), geometry), assumed_cpu()):
        assert spy.calls == 1  # the native kernel ran the layer
        assert not torch.equal(exact, ref)  # pairs did saturate: the kernel's arithmetic is what matched
    else:
        assert torch.equal(exact, ref)  # this family sums exactly on this set


@needs_native
def test_linear_matches_torchs_fbgemm_kernel_on_each_instruction_set(cpu_set, monkeypatch):
    torch.backends.quantized.engine = "fbgemm"
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(100, 256, (7, 301), generator=gen, dtype=torch.uint8)
    w = torch.randint(-128, 128, (40, 301), generator=gen, dtype=torch.int8)
    sw, bias = torch.rand(40, generator=gen) * 0.01 + 1e-3, torch.randn(40, generator=gen)
    xq = torch._make_per_tensor_quantized_tensor(x, 0.02, 7)
    wq = torch._make_per_channel_quantized_tensor(w, sw.double(), torch.zeros(40, dtype=torch.long), 0)
    ref = torch.ops.quantized.linear(xq, torch.ops.quantized.linear_prepack(wq, bias), 0.5, 64).int_repr()
    spy = _Spy(monkeypatch)
    ours = pack_linear(w, sw, 0, bias)(x, 0.02, 7, 0.5, 64)
    assert int((ours != ref).sum()) == 0
    exact = pack_linear(w, sw, 0, bias)(x, 0.02, 7, 0.5, 64, saturate=False)
    if saturates("gemm", assumed_cpu()):
        assert spy.calls == 1 and not torch.equal(exact, ref)
    else:
        assert torch.equal(exact, ref)


def test_without_the_native_kernel_every_layer_runs_the_float_engine_alike(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 16, 9, 9), generator=gen, dtype=torch.uint8)
    w = torch.randint(-128, 128, (24, 16, 3, 3), generator=gen, dtype=torch.int8)
    args = (w, torch.rand(24, generator=gen) * 0.01 + 1e-3, 0, torch.randn(24, generator=gen))
    with_native = pack_conv2d(*args, padding=1)
    first = with_native(x, 0.02, 4, 0.7, 50)
    monkeypatch.setattr(native.build, "load", lambda: (None, "switched off by the test"))
    without = pack_conv2d(*args, padding=1)
    assert without.native() is None and not native.available()
    assert native.why_unavailable() == "switched off by the test"
    assert torch.equal(without(x, 0.02, 4, 0.7, 50), first)


def _probe(env: dict[str, str]) -> str:
    code = "from qcal.int8 import native; print(native.available(), '|', native.why_unavailable())"
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


@pytest.mark.skipif(not native.available(), reason="needs a machine where the kernel builds")
def test_the_kernel_is_built_once_into_the_data_folder(tmp_path):
    assert _probe({"QCAL_DATA_DIR": str(tmp_path)}) == "True |"
    built = list((tmp_path / "native").glob("qcal_u8s8_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert _probe({"QCAL_DATA_DIR": str(tmp_path)}) == "True |"  # found, not rebuilt
    assert built[0].stat().st_mtime_ns == stamp and len(list((tmp_path / "native").iterdir())) == 1


def test_the_kernel_is_here_where_ci_requires_it():
    # .ci/run sets QCAL_REQUIRE_NATIVE: there the skips above would hide a broken build
    if os.environ.get("QCAL_REQUIRE_NATIVE"):
        assert native.available(), native.why_unavailable()


def test_no_compiler_or_switched_off_means_the_float_engine_with_the_reason(tmp_path):
    broken = _probe({"QCAL_DATA_DIR": str(tmp_path), "CC": str(tmp_path / "no-such-cc")})
    assert broken.startswith("False | build failed")
    assert _probe({"QCAL_NATIVE": "0"}) == "False | QCAL_NATIVE=0"


@needs_native
@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5000), bins=st.sampled_from([1, 3, 8, 512, 2048]),
       step=st.sampled_from([1, 1, 2, 7]), kind=st.sampled_from(["normal", "relu", "grid", "inside", "edges"]))
def test_histc_bins_every_value_as_torch_does(seed, n, bins, step, kind):
    # values on a grid, or on the bin edges and one float either side, are where a rounding
    # differs; "inside" leaves values outside [lo, hi] (skipped)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * float(torch.rand((), generator=gen) * 50 + 1e-3)
    if kind == "edges":
        edges = torch.linspace(float(x.min()) - 0.1, float(x.max()) + 0.1, 7 * bins + 1)
        x = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1)])
    if kind == "relu":
        x = x.relu()
    if kind == "grid":
        x = torch.round(x * 4) / 4
    lo, hi = float(x.min()), float(x.max())
    if kind == "inside":
        lo, hi = lo * 0.5, hi * 0.6
    if not lo < hi:
        return
    got = native.histc(x, bins, lo, hi, step=step)
    want = torch.histc(x[::step], bins, min=lo, max=hi)
    assert got.dtype == want.dtype and torch.equal(got, want)


def test_histc_leaves_torchs_own_cases_to_torch():
    # one value: torch widens the range to [v - 1, v + 1]; qcal's histc hands such calls over
    x = torch.full((10,), 3.0)
    assert torch.equal(native.histc(x, 4, 3.0, 3.0), torch.histc(x, 4, min=3.0, max=3.0))
    assert float(native.histc(x, 4, 3.0, 3.0).sum()) == 10


@needs_native
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c=st.integers(1, 70), kernel=st.integers(1, 4), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), ceil_mode=st.booleans(), signed=st.booleans(), data=st.data())
def test_max_pool_takes_the_window_maximum_over_real_pixels(seed, c, kernel, stride, dilation, ceil_mode, signed,
                                                            data):
    from qcal.int8.ops import max_pool2d

    pad = data.draw(st.integers(0, kernel // 2))
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (-128, 128) if signed else (0, 256)
    x = torch.randint(lo, hi, (2, c, 9, 8), generator=gen, dtype=torch.int8 if signed else torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)
    try:
        want = F.max_pool2d(x.float(), kernel, stride, pad, dilation, ceil_mode).to(x.dtype)
    except RuntimeError:
        return  # a shape torch refuses
    got = max_pool2d(x, kernel, stride, pad, dilation, ceil_mode)
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, want)
    q = torch._make_per_tensor_quantized_tensor(x, 0.1, 0)  # and torch's quantized kernel
    assert torch.equal(F.max_pool2d(q, kernel, stride, pad, dilation, ceil_mode).int_repr(), got)


@needs_native
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3000), signed=st.booleans())
def test_pair_lookup_reads_the_table_a_major(seed, n, signed):
    gen = torch.Generator().manual_seed(seed)
    dtype, lo = (torch.int8, -128) if signed else (torch.uint8, 0)
    a, b = (torch.randint(lo, lo + 256, (n,), generator=gen, dtype=dtype) for _ in range(2))
    table = torch.randint(lo, lo + 256, (65536,), generator=gen, dtype=dtype)
    want = table[(a.long() - lo) * 256 + (b.long() - lo)]
    assert torch.equal(native.pair_lookup(a, b, table), want)
