"""qcal.qparams against torch: quantize / dequantize bit for bit, qparams_from_range equal to
the observers' _calculate_qparams, and the round trip within half a step."""

import warnings

import numpy as np
import pytest
import torch
import torch.ao.quantization.observer as tobs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qcal.qparams import EPS, dequantize, qparams_from_range, qrange, quantize

TORCH_DTYPE = {"quint8": torch.quint8, "qint8": torch.qint8}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dtypes = st.sampled_from(["quint8", "qint8"])
# float32 scales over many octaves, and powers of two (reciprocal exact: clean .5 ties)
scales = st.one_of(
    st.floats(1e-6, 1e3, allow_subnormal=False).map(lambda v: float(np.float32(v))),
    st.integers(-20, 10).map(lambda e: 2.0**e),
)


pytestmark = pytest.mark.usefixtures("one_thread")


def f32(v: float) -> float:
    return float(np.float32(v))


@st.composite
def per_tensor_cases(draw):
    dtype = draw(dtypes)
    qmin, qmax = qrange(dtype)
    scale = f32(draw(scales))
    zp = draw(st.integers(qmin, qmax))
    n = draw(st.integers(1, 64))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    k = torch.randint(qmin - zp - 40, qmax - zp + 40, (n,), generator=g).float()
    x = torch.cat([
        (k + 0.5) * scale,  # exact ties when the scale is a power of two
        (k + torch.rand(n, generator=g)) * scale,
        torch.randn(n, generator=g) * scale * 1000,  # far outside: clamping
        torch.tensor([0.0, -0.0, scale / 2, -scale / 2, 3e38, -3e38]),
    ])
    return dtype, scale, zp, x


@FAST
@given(case=per_tensor_cases())
def test_quantize_per_tensor_equals_torch(case):
    dtype, scale, zp, x = case
    ours = quantize(x, scale, zp, dtype)
    theirs = torch.quantize_per_tensor(x, scale, zp, TORCH_DTYPE[dtype]).int_repr()
    assert ours.dtype == theirs.dtype
    assert torch.equal(ours, theirs), (x[ours != theirs], ours[ours != theirs], theirs[ours != theirs])


@FAST
@given(case=per_tensor_cases())
def test_dequantize_per_tensor_equals_torch(case):
    dtype, scale, zp, x = case
    qt = torch.quantize_per_tensor(x, scale, zp, TORCH_DTYPE[dtype])
    ours = dequantize(qt.int_repr(), scale, zp)
    assert torch.equal(ours.view(torch.int32), qt.dequantize().view(torch.int32))


@st.composite
def per_channel_cases(draw):
    dtype = draw(dtypes)
    qmin, qmax = qrange(dtype)
    channels = draw(st.integers(1, 6))
    axis = draw(st.integers(0, 2))
    shape = [draw(st.integers(1, 5)) for _ in range(3)]
    shape[axis] = channels
    scale = torch.tensor([f32(draw(scales)) for _ in range(channels)])
    zp = torch.tensor([draw(st.integers(qmin, qmax)) for _ in range(channels)])
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    view = [1, 1, 1]
    view[axis] = channels
    s, z = scale.reshape(view), zp.reshape(view).float()
    k = torch.randint(qmin - 40, qmax + 40, shape, generator=g).float() - z
    halves = draw(st.booleans())
    x = (k + (0.5 if halves else torch.rand(shape, generator=g))) * s
    return dtype, scale, zp, axis, x


@FAST
@given(case=per_channel_cases())
def test_quantize_per_channel_equals_torch(case):
    dtype, scale, zp, axis, x = case
    ours = quantize(x, scale, zp, dtype, axis=axis)
    theirs = torch.quantize_per_channel(x, scale.double(), zp, axis, TORCH_DTYPE[dtype]).int_repr()
    assert torch.equal(ours, theirs)


@FAST
@given(case=per_channel_cases())
def test_dequantize_per_channel_equals_torch(case):
    dtype, scale, zp, axis, x = case
    qt = torch.quantize_per_channel(x, scale.double(), zp, axis, TORCH_DTYPE[dtype])
    ours = dequantize(qt.int_repr(), scale, zp, axis=axis)
    assert torch.equal(ours.view(torch.int32), qt.dequantize().view(torch.int32))


def test_per_tensor_ties_round_after_adding_the_zero_point():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5])  # scale 1: exact .5 ties
    assert quantize(x, 1.0, 10, "quint8").tolist() == [10, 12, 12, 10, 8]  # rint(x + 10)
    assert quantize(x, 1.0, 11, "quint8").tolist() == [12, 12, 14, 10, 10]  # rint(x + 11)
    for zp in (10, 11):
        assert torch.equal(quantize(x, 1.0, zp, "quint8"),
                           torch.quantize_per_tensor(x, 1.0, zp, torch.quint8).int_repr())


def test_per_channel_multiply_add_is_not_fused_unlike_per_tensor():
    # x * f32(1 / 0.1) = -33.5000014..., which float32 rounds to -33.5 exactly: per channel
    # that tie, + 3, gives rint(-30.5) = -30; per tensor the fused multiply-add keeps the
    # tail and gives -31.
    x = torch.tensor([[-3.3500001430511475]])  # f32(-33.5 * f32(0.1))
    scale, zp = torch.tensor([0.1]), torch.tensor([3])
    per_channel = torch.quantize_per_channel(x, scale.double(), zp, 0, torch.qint8).int_repr()
    per_tensor = torch.quantize_per_tensor(x, 0.1, 3, torch.qint8).int_repr()
    assert quantize(x, scale, zp, "qint8", axis=0).tolist() == per_channel.tolist() == [[-30]]
    assert quantize(x, 0.1, 3, "qint8").tolist() == per_tensor.tolist() == [[-31]]


range_values = st.one_of(
    st.floats(-1e6, 1e6, allow_subnormal=False).map(lambda v: float(np.float32(v))),
    st.sampled_from([0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, 1e-7, 1.0]),
)


@st.composite
def range_cases(draw):
    dtype = draw(dtypes)
    symmetric = draw(st.booleans())
    reduce_range = draw(st.booleans())
    assume(not (symmetric and dtype == "quint8" and reduce_range))  # torch refuses it
    n = draw(st.integers(1, 5))
    a = [draw(range_values) for _ in range(n)]
    b = [draw(range_values) for _ in range(n)]
    lo = torch.tensor([min(u, v) for u, v in zip(a, b, strict=True)])
    hi = torch.tensor([max(u, v) for u, v in zip(a, b, strict=True)])
    return dtype, symmetric, reduce_range, lo, hi


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=range_cases())
def test_qparams_from_range_equals_torch_calculate_qparams(case):
    dtype, symmetric, reduce_range, lo, hi = case
    per_channel = lo.numel() > 1
    qscheme = {(False, False): torch.per_tensor_affine, (False, True): torch.per_tensor_symmetric,
               (True, False): torch.per_channel_affine, (True, True): torch.per_channel_symmetric}
    cls = tobs.PerChannelMinMaxObserver if per_channel else tobs.MinMaxObserver
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs = cls(dtype=TORCH_DTYPE[dtype], qscheme=qscheme[per_channel, symmetric],
                  reduce_range=reduce_range)
        s2, z2 = obs._calculate_qparams(lo if per_channel else lo[0], hi if per_channel else hi[0])
    s1, z1 = qparams_from_range(lo, hi, dtype=dtype, symmetric=symmetric, reduce_range=reduce_range)
    assert torch.equal(s1.view(torch.int32), s2.view(torch.int32)) and torch.equal(z1, z2.long())


def test_qparams_of_an_unobserved_range_are_torch_defaults():
    s, z = qparams_from_range(float("inf"), float("-inf"))
    assert s.tolist() == [1.0] and z.tolist() == [0]


def test_worked_example_from_the_docstring():
    s, z = qparams_from_range(-1.0, 3.0, dtype="quint8")
    assert s.item() == np.float32(4 / 255) and z.item() == 64
    s, _ = qparams_from_range(0.0, 0.0)
    assert s.item() == EPS


@FAST
@given(case=per_tensor_cases())
def test_round_trip_is_within_half_a_step_inside_the_range(case):
    dtype, scale, zp, x = case
    qmin, qmax = qrange(dtype)
    inside = x[(x >= (qmin - zp) * scale) & (x <= (qmax - zp) * scale)]
    err = (dequantize(quantize(inside, scale, zp, dtype), scale, zp) - inside).abs()
    # half a step, plus float32 rounding of x * (1/scale) and of the dequantized value
    bound = scale / 2 + 4 * np.finfo(np.float32).eps * (inside.abs() + abs(zp * scale))
    assert torch.all(err <= bound)


def test_quantize_rejects_several_scales_without_an_axis():
    with pytest.raises(ValueError, match="pass axis="):
        quantize(torch.zeros(3), torch.ones(3), torch.zeros(3, dtype=torch.int64))


@st.composite
def code_ranges(draw, dtype, reduce_range):
    """A (quant_min, quant_max) torch accepts for ``dtype`` that reduce_range leaves non-empty."""
    lo = 0 if dtype == "quint8" else draw(st.sampled_from([-128, -127, -8, -1, 0]))
    hi = draw(st.integers(2 if reduce_range or lo == 0 else 0, 255 if dtype == "quint8" else 127))
    return lo, hi


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=range_cases(), data=st.data())
def test_qparams_from_range_with_quant_min_max_equals_torch(case, data):
    dtype, symmetric, reduce_range, lo, hi = case
    qmin, qmax = data.draw(code_ranges(dtype, reduce_range))
    per_channel = lo.numel() > 1
    qscheme = getattr(torch, f"per_{'channel' if per_channel else 'tensor'}_{'symmetric' if symmetric else 'affine'}")
    cls = tobs.PerChannelMinMaxObserver if per_channel else tobs.MinMaxObserver
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs = cls(dtype=TORCH_DTYPE[dtype], qscheme=qscheme, reduce_range=reduce_range, quant_min=qmin, quant_max=qmax)
        s2, z2 = obs._calculate_qparams(lo if per_channel else lo[0], hi if per_channel else hi[0])
    s1, z1 = qparams_from_range(lo, hi, dtype=dtype, symmetric=symmetric, reduce_range=reduce_range,
                                quant_min=qmin, quant_max=qmax)
    assert torch.equal(s1.view(torch.int32), s2.view(torch.int32)) and torch.equal(z1, z2.long())


@FAST
@given(case=per_tensor_cases(), data=st.data())
def test_quantize_clamps_codes_to_quant_min_max(case, data):
    """torch's codes, then clamped to the range (what torch's quantize ops with quant_min /
    quant_max, e.g. PT2E's quantize_per_tensor, compute); ONNX's rounding likewise."""
    dtype, scale, zp, x = case
    qmin, qmax = data.draw(code_ranges(dtype, False))
    assume(qmin <= zp <= qmax)
    ours = quantize(x, scale, zp, dtype, quant_min=qmin, quant_max=qmax)
    theirs = torch.quantize_per_tensor(x, scale, zp, TORCH_DTYPE[dtype]).int_repr().clamp(qmin, qmax)
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    onnx = quantize(x, scale, zp, dtype, backend="onnx", quant_min=qmin, quant_max=qmax)
    assert torch.equal(onnx, quantize(x, scale, zp, dtype, backend="onnx").clamp(qmin, qmax))


def test_quantize_clamps_per_channel_int4_codes():
    w = torch.tensor([[-1.0, 0.2, 1.0], [-0.1, 0.0, 0.3]])
    scale, zp = torch.tensor([0.1, 0.01]), torch.tensor([0, 0])
    q = quantize(w, scale, zp, "qint8", axis=0, quant_min=-8, quant_max=7)
    assert q.tolist() == [[-8, 2, 7], [-8, 0, 7]]
    with pytest.raises(ValueError, match=r"within qint8's -128\.\.127"):
        quantize(w, scale, zp, "qint8", axis=0, quant_min=-200, quant_max=7)
