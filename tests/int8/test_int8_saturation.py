"""FBGEMM's int16 pair saturation: hand-worked pairs, order, padding, and the real kernel."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcal.int8 as qi
from qcal.int8.common.saturation import (
    fbgemm_conv_path,
    pair_saturation_conv,
    pair_saturation_linear,
)


def test_one_linear_pair_saturates_to_int16_max():
    # 255*127 + 255*127 = 64770 -> 32767: the accumulator loses 32003
    x = torch.tensor([[255, 255]], dtype=torch.uint8)
    w = torch.tensor([[127, 127]], dtype=torch.int8)
    r = qi.linear_detailed(x, 1.0, 0, w, 1.0, 0, None, 2.0**20, 0, saturate=True)
    assert r.acc.item() == 32767 and r.saturated_pairs == 1
    assert qi.linear_detailed(x, 1.0, 0, w, 1.0, 0, None, 2.0**20, 0, saturate=False).acc.item() == 64770


def test_saturation_acts_on_raw_codes_before_zero_point_corrections():
    # raw pair 64770 -> 32767; then - za * sum(w) = -10 * 254: acc = 32767 - 2540 = 30227
    x = torch.tensor([[255, 255]], dtype=torch.uint8)
    w = torch.tensor([[127, 127]], dtype=torch.int8)
    r = qi.linear_detailed(x, 1.0, 10, w, 1.0, 0, None, 2.0**20, 0, saturate=True)
    assert r.acc.item() == 30227


def test_odd_length_leaves_the_last_product_unpaired():
    x = torch.tensor([[255, 255, 255]], dtype=torch.uint8)
    w = torch.tensor([[127, 127, 127]], dtype=torch.int8)
    delta, count = pair_saturation_linear(x, w)
    assert count == 1 and delta.item() == 32767 - 64770  # pairs (0,1) and (2, pad)


def test_conv_pairs_run_in_im2col_kh_kw_c_order():
    # C=2, kernel 1x2: order (tap0 c0, tap0 c1, tap1 c0, tap1 c1). Channel 0 is large and
    # channel 1 small, so pairs (c0, c1) of one tap never saturate; pairs along kw would.
    x = torch.zeros(1, 2, 1, 2, dtype=torch.uint8)
    x[0, 0] = 255
    w = torch.zeros(1, 2, 1, 2, dtype=torch.int8)
    w[0, 0] = 127
    geometry = ((1, 1), (0, 0), (1, 1), 1)
    delta, count = pair_saturation_conv(x, 0, w, geometry)
    assert count == 0 and delta.abs().sum() == 0
    # channel order within a tap: with C=2 both large, each tap's pair saturates
    x[0, 1], w[0, 1] = 255, 127
    delta, count = pair_saturation_conv(x, 0, w, geometry)
    assert count == 2 and delta.item() == 2 * (32767 - 64770)


def test_padding_holds_the_activation_zero_point_and_can_saturate():
    # 1x1 input, 3x1 kernel, padding 1: taps (pad, x, pad) pair as (pad, x), (pad, -)
    x = torch.tensor([[[[0]]]], dtype=torch.uint8)
    w = torch.full((1, 1, 3, 1), 127, dtype=torch.int8)
    delta, count = pair_saturation_conv(x, 255, w, ((1, 1), (1, 0), (1, 1), 1))
    assert count == 0  # pad*127 + 0*127 = 32385 fits int16
    x[...] = 200
    delta, count = pair_saturation_conv(x, 255, w, ((1, 1), (1, 0), (1, 1), 1))
    assert count == 1 and delta.item() == 32767 - (255 * 127 + 200 * 127)


def test_fbgemm_conv_families_follow_fbgemms_conv_fast_path():
    g1 = ((1, 1), (1, 1), (1, 1), 16)
    assert fbgemm_conv_path(16, (16, 1, 3, 3), g1, "avx2") == "depthwise"
    assert fbgemm_conv_path(16, (32, 1, 3, 3), g1, "avx2") == "depthwise"  # channel multiplier 2
    assert fbgemm_conv_path(16, (16, 1, 5, 5), ((2, 2), (2, 2), (1, 1), 16), "avx2") == "depthwise"
    assert fbgemm_conv_path(16, (16, 1, 7, 7), ((1, 1), (3, 3), (1, 1), 16), "avx2") == "depthwise"
    assert fbgemm_conv_path(16, (16, 1, 3, 3), ((1, 1), (0, 0), (1, 1), 16), "avx2") == "im2col"  # pad 0
    assert fbgemm_conv_path(12, (12, 1, 3, 3), ((1, 1), (1, 1), (1, 1), 12), "avx2") == "im2col"  # 12 % 8
    assert fbgemm_conv_path(16, (16, 1, 3, 3), ((3, 3), (1, 1), (1, 1), 16), "avx2") == "im2col"  # stride 3
    assert fbgemm_conv_path(16, (16, 2, 3, 3), ((1, 1), (1, 1), (1, 1), 8), "avx2") == "groupwise"
    assert fbgemm_conv_path(16, (16, 16, 1, 1), ((1, 1), (0, 0), (1, 1), 1), "avx2") == "pointwise"
    assert fbgemm_conv_path(16, (16, 16, 1, 1), ((2, 2), (0, 0), (1, 1), 1), "avx2") == "im2col"


def test_groupwise_needs_a_register_full_of_groups():
    # numOfGroupsTogether: 2 channels per group fill 32 bytes with 4 groups, 64 bytes with 8
    geometry = ((1, 1), (1, 1), (1, 1), 4)
    assert fbgemm_conv_path(8, (8, 2, 3, 3), geometry, "avx2") == "groupwise"
    assert fbgemm_conv_path(8, (8, 2, 3, 3), geometry, "avx512") == "im2col"
    assert fbgemm_conv_path(16, (16, 2, 3, 3), ((1, 1), (1, 1), (1, 1), 8), "avx512_vnni") == "groupwise"


def test_saturate_option_defaults_to_the_assumed_cpu():
    # im2col is a GEMM-family kernel: it follows the GEMM set (FBGEMM_ENABLE_INSTRUCTIONS may lower it)
    assert qi.fbgemm_saturates("im2col", None) == (not qi.assumed_cpu().gemm_isa.startswith("avx512_vnni"))
    assert qi.fbgemm_saturates("depthwise", None) is True
    assert qi.fbgemm_saturates("gemm", True) is True and qi.fbgemm_saturates("depthwise", False) is False


def _torch_conv(x, za, w, geometry, so, zo):
    torch.backends.quantized.engine = "fbgemm"
    stride, padding, dilation, groups = geometry
    xq = torch._make_per_tensor_quantized_tensor(x, 1.0, za)
    wq = torch._make_per_tensor_quantized_tensor(w, 1.0, 0)
    packed = torch.ops.quantized.conv2d_prepack(wq, None, list(stride), list(padding), list(dilation), groups)
    return torch.ops.quantized.conv2d(xq, packed, so, zo).int_repr()


@pytest.mark.parametrize(
    ("c", "o", "k", "stride"), [(16, 16, 3, 1), (32, 32, 3, 2), (16, 32, 3, 1), (8, 8, 5, 1)]
)
def test_full_range_depthwise_matches_the_real_saturating_kernel(cpu_set, c, o, k, stride):
    # FBGEMM's depthwise kernel is AVX2 code on every instruction set: it saturates on each
    g = torch.Generator().manual_seed(c + o + k)
    x = torch.randint(150, 256, (2, c, 9, 9), generator=g, dtype=torch.uint8)
    w = torch.randint(-128, 128, (o, 1, k, k), generator=g, dtype=torch.int8)
    geometry = ((stride, stride), (k // 2, k // 2), (1, 1), c)
    exact = qi.conv2d_detailed(x, 1.0, 7, w, 1.0, 0, None, 500.0, 128, stride=stride, padding=k // 2,
                               groups=c, saturate=False)
    so = float(exact.acc.abs().max()) / 100  # fine enough that saturation errors show
    ref = _torch_conv(x, 7, w, geometry, so, 128)
    ours = qi.conv2d_detailed(x, 1.0, 7, w, 1.0, 0, None, so, 128, stride=stride, padding=k // 2, groups=c)
    assert ours.saturated_pairs > 0
    assert torch.equal(ours.out, ref)
    plain = qi.conv2d(x, 1.0, 7, w, 1.0, 0, None, so, 128, stride=stride, padding=k // 2, groups=c, saturate=False)
    assert not torch.equal(plain, ref)  # the emulation is what makes it match


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_activations_up_to_127_never_saturate(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 128, (3, 8, 5, 5), generator=g, dtype=torch.uint8)
    w = torch.randint(-128, 128, (8, 1, 3, 3), generator=g, dtype=torch.int8)
    w[0, 0, 0, :2] = -128  # the extreme pair: 127*-128*2 = -32512 still fits
    x[:, 0] = 127
    delta, count = pair_saturation_conv(x, 0, w, ((1, 1), (1, 1), (1, 1), 8))
    assert count == 0 and int(delta.abs().sum()) == 0


def test_padding_with_a_large_zero_point_saturates_even_for_small_activations():
    # activations 100 fit, but the pads hold za = 255: (pad, x) pairs saturate
    x = torch.full((1, 16, 4, 4), 100, dtype=torch.uint8)
    w = torch.full((16, 1, 3, 3), 127, dtype=torch.int8)
    r = qi.conv2d_detailed(x, 1.0, 255, w, 1.0, 0, None, 100.0, 128, padding=1, groups=16, saturate=True)
    assert r.saturated_pairs > 0
    torch.backends.quantized.engine = "fbgemm"
    ref = _torch_conv(x, 255, w, ((1, 1), (1, 1), (1, 1), 16), 100.0, 128)
    assert torch.equal(r.out, ref)  # the real depthwise kernel saturates on these pads too
