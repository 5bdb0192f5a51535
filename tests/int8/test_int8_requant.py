"""Requantization numbers and rounding: hand-worked values, torch as oracle, properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcal.int8 as qi
from qcal.int8.common.q31 import q31_requantize


def one_by_one(x: int, w: int):
    return torch.tensor([[[[x]]]], dtype=torch.uint8), torch.tensor([[[[w]]]], dtype=torch.int8)


def test_fbgemm_adds_zero_point_after_rounding_onnx_before():
    # acc = 20, M = 0.5*0.25/1 = 0.125: y*M = 2.5; fbgemm rint(2.5)+3 = 5, onnx rint(2.5+3) = 6
    x, w = one_by_one(20, 1)
    assert qi.conv2d(x, 0.5, 0, w, 0.25, 0, None, 1.0, 3).item() == 5
    assert qi.conv2d(x, 0.5, 0, w, 0.25, 0, None, 1.0, 3, backend="onnx").item() == 6
    torch.backends.quantized.engine = "fbgemm"
    xq = torch._make_per_tensor_quantized_tensor(x, 0.5, 0)
    wq = torch._make_per_tensor_quantized_tensor(w, 0.25, 0)
    packed = torch.ops.quantized.conv2d_prepack(wq, None, [1, 1], [0, 0], [1, 1], 1)
    assert torch.ops.quantized.conv2d(xq, packed, 1.0, 3).int_repr().item() == 5


def test_multipliers_follow_each_backends_float32_formula():
    sa, sw, so = 0.1, torch.tensor([0.3, 0.017], dtype=torch.float64), 0.7
    f = np.float32
    ats = f(sa) * sw.numpy().astype(f)
    fb = qi.requant_multipliers(sa, sw, so, backend="fbgemm")
    qn = qi.requant_multipliers(sa, sw, so, backend="qnnpack")
    on = qi.requant_multipliers(sa, sw, so, backend="onnx")
    assert fb.multiplier.numpy().tolist() == (ats / f(so)).tolist()
    assert qn.multiplier.numpy().tolist() == (ats * (f(1) / f(so))).tolist()
    assert on.multiplier.dtype == torch.float32 and on.multiplier.numpy().tolist() == (ats / f(so)).tolist()
    assert fb.per_channel and fb.bias_int32 is None


def test_bias_rules_per_backend():
    bias = torch.tensor([1.0, -2.5])
    sw = torch.tensor([0.5, 0.25], dtype=torch.float64)
    assert qi.requant_multipliers(0.5, sw, 1.0, bias, backend="fbgemm").bias_int32 is None
    # qnnpack: rint(b * f32(1/(sa*sw))): 1/0.25 = 4 -> 4; -2.5 * 8 = -20
    assert qi.requant_multipliers(0.5, sw, 1.0, bias, backend="qnnpack").bias_int32.tolist() == [4, -20]
    assert qi.requant_multipliers(0.5, sw, 1.0, bias, backend="onnx").bias_int32.tolist() == [4, -20]
    int_bias = torch.tensor([7, -3], dtype=torch.int32)
    assert qi.requant_multipliers(0.5, sw, 1.0, int_bias, backend="fbgemm").bias_int32.tolist() == [7, -3]


def test_quantize_multiplier_matches_gemmlowp_hand_values():
    q, shift, err = qi.quantize_multiplier(torch.tensor([0.375, 1.0, 0.1], dtype=torch.float64))
    assert q[:2].tolist() == [1610612736, 2**30] and shift[:2].tolist() == [-1, 1]
    assert q[2].item() == round(0.8 * 2**31) and shift[2].item() == -3  # 0.1 = 0.8 * 2^-3
    assert err[:2].tolist() == [0.0, 0.0] and abs(err[2].item()) < 2**-31


def test_q31_requantize_rounds_half_away_from_zero():
    q, shift = torch.tensor(2**30), torch.tensor(-2)  # m = 0.125
    out = q31_requantize(torch.tensor([20, -20, 12, -12]), q, shift)
    assert out.tolist() == [3, -3, 2, -2]  # 2.5 -> 3, -2.5 -> -3, 1.5 -> 2, -1.5 -> -2


def test_q31_backend_uses_the_fixed_point_form():
    x, w = one_by_one(20, 1)
    r = qi.conv2d_detailed(x, 0.5, 0, w, 0.25, 0, None, 1.0, 3, backend="q31")
    assert r.out.item() == 6 and r.acc.item() == 20  # 2.5 rounds away from zero, then + 3
    assert r.requant.q31_multiplier.item() == 2**30 and r.requant.q31_shift.item() == -2


def test_output_dtype_follows_an_int8_out_zero_point():
    x, w = one_by_one(20, -1)
    out = qi.conv2d(x, 0.5, 0, w, 0.25, 0, None, 1.0, torch.tensor(-1, dtype=torch.int8), backend="onnx")
    assert out.dtype == torch.int8 and out.item() == -4  # -2.5 - 1 = -3.5 -> rint -4


def test_requant_is_frozen():
    r = qi.requant_multipliers(0.5, 0.25, 1.0, backend="fbgemm")
    with pytest.raises(AttributeError):
        r.multiplier = torch.zeros(1)


def test_bad_inputs_are_named_in_errors():
    x, w = one_by_one(1, 1)
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        qi.conv2d(x, 1.0, 0, w, 1.0, 0, None, 1.0, 0, backend="tflite")
    with pytest.raises(TypeError, match=r"x_q has dtype torch\.int8"):
        qi.conv2d(x.to(torch.int8), 1.0, 0, w, 1.0, 0, None, 1.0, 0)
    with pytest.raises(ValueError, match="w_scale has 3 entries"):
        qi.conv2d(x, 1.0, 0, w, torch.ones(3), 0, None, 1.0, 0)
    with pytest.raises(ValueError, match="finite and positive"):
        qi.requant_multipliers(0.0, 1.0, 1.0, backend="fbgemm")


_RQ = {
    b: qi.requant_multipliers(0.037, torch.tensor([0.011, 0.5], dtype=torch.float64), 0.29,
                              torch.tensor([3.3, -70.0]), backend=b)
    for b in qi.BACKENDS
}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-(2**31) + 2**24, 2**31 - 2**24), min_size=2, max_size=40),
    st.sampled_from(qi.BACKENDS),
    st.integers(0, 255),
    st.booleans(),
)
def test_requantization_is_monotone_in_the_accumulator_and_stays_in_range(accs, backend, zo, relu):
    acc = torch.tensor(sorted(accs), dtype=torch.int32)[:, None].expand(-1, 2)  # (M, O=2)
    out = qi.requantize(acc, _RQ[backend], zo, relu=relu, channel_axis=-1).to(torch.int32)
    assert bool((out[1:] >= out[:-1]).all())
    assert int(out.min()) >= (zo if relu else 0) and int(out.max()) <= 255
    signed = qi.requantize(acc, _RQ[backend], zo - 128, out_dtype=torch.int8, channel_axis=-1)
    assert signed.dtype == torch.int8


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(qi.BACKENDS), st.booleans())
def test_engine_outputs_stay_in_the_output_dtype_range(seed, backend, relu):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (2, 4, 5, 5), generator=g, dtype=torch.uint8)
    w = torch.randint(-128, 128, (3, 4, 3, 3), generator=g, dtype=torch.int8)
    so = float(torch.rand(1, generator=g)) * 0.01 + 1e-4  # tiny: most values saturate
    zo = int(torch.randint(0, 256, (1,), generator=g))
    out = qi.conv2d(x, 0.05, 100, w, 0.02, 0, torch.randn(3, generator=g), so, zo, relu=relu, backend=backend)
    assert out.dtype == torch.uint8 and int(out.min()) >= (zo if relu else 0)


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack"])
@pytest.mark.parametrize("relu", [False, True])
def test_products_beyond_int32_saturate_at_the_bottom_like_the_kernels(engine, relu):
    # y*M >= 2^31: _mm256_cvtps_epi32 yields INT_MIN, so the output clamps low (0, or zo with ReLU)
    torch.backends.quantized.engine = engine
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (1, 4, 5, 5), generator=g, dtype=torch.uint8)
    w = torch.randint(-128, 128, (4, 4, 3, 3), generator=g, dtype=torch.int8)
    xq = torch._make_per_tensor_quantized_tensor(x, 1.0, 3)
    wq = torch._make_per_tensor_quantized_tensor(w, 1.0, 0)
    op = torch.ops.quantized.conv2d_relu if relu else torch.ops.quantized.conv2d
    for so in (1e-3, 1e-6, 1e-9):
        packed = torch.ops.quantized.conv2d_prepack(wq, None, [1, 1], [1, 1], [1, 1], 1)
        ref = op(xq, packed, so, 7).int_repr()
        out = qi.conv2d(x, 1.0, 3, w, 1.0, 0, None, so, 7, padding=1, relu=relu, backend=engine)
        assert torch.equal(out, ref), so


@pytest.mark.parametrize("backend", qi.BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32])
def test_requantize_never_modifies_its_accumulator(backend, dtype):
    acc = torch.arange(-600, 600, dtype=dtype).reshape(3, 2, 200)  # (N, O, L)
    before = acc.clone()
    qi.requantize(acc, _RQ[backend], 9, channel_axis=1)
    assert torch.equal(acc, before)


@pytest.mark.parametrize("backend", qi.BACKENDS)
def test_requantizing_in_slices_gives_the_same_codes(backend, monkeypatch):
    g = torch.Generator().manual_seed(4)
    acc = torch.randint(-(2**20), 2**20, (7, 2, 33), generator=g).float().contiguous()
    whole = qi.requantize(acc, _RQ[backend], 11, channel_axis=1)
    monkeypatch.setattr("qcal.int8.common.requant._SLICE", 40)  # one batch row per slice
    assert torch.equal(qi.requantize(acc, _RQ[backend], 11, channel_axis=1), whole)
    assert torch.equal(qi.requantize(acc, _RQ[backend], 11, channel_axis=1, consume=True), whole)


@pytest.mark.parametrize("method", ["auto", "float"])  # the native fused store, and the float engine
def test_fbgemm_per_tensor_float_bias_rounds_accumulators_above_2_24_first(method):
    # fbgemm: y = fma(b, rcp, _mm256_cvtepi32_ps(acc)). acc = 17741773 is not a float32 (spacing 2
    # above 2^24): f32(acc) = 17741772, and output scales put y * M on either side of a .5
    torch.backends.quantized.engine = "fbgemm"
    k = 1100
    x = torch.full((1, k), 127, dtype=torch.uint8)
    x[0, 0] = 126
    w = torch.full((1, k), 127, dtype=torch.int8)
    sw, b = 2.0**-20, torch.tensor([0.3 * 2.0**-20])
    assert int((x.long() * w.long()).sum()) == 17741773
    xq = torch._make_per_tensor_quantized_tensor(x, 1.0, 0)
    packed_ref = torch.ops.quantized.linear_prepack(torch._make_per_tensor_quantized_tensor(w, sw, 0), b)
    ours = qi.pack_linear(w, sw, 0, b, method=method)
    for so in [17741772.75 * sw / (c + 0.5) for c in range(100, 140)]:
        ref = torch.ops.quantized.linear(xq, packed_ref, so, 0).int_repr()
        assert torch.equal(ours(x, 1.0, 0, so, 0), ref), so
