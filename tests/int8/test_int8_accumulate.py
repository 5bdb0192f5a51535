"""The fast accumulators are exact: tests built at and beyond the float32 bound."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qcal.int8.common.accumulate import (
    F32_EXACT,
    PAIR_LIMIT,
    Accumulator,
    chunk_plan,
    onednn_exact,
)

METHODS = ["float"] + (["onednn"] if onednn_exact() else [])


def int64_linear(x, za, w, zw):
    return (x.to(torch.int64) - za) @ (w.to(torch.int64) - zw).T


def int64_conv(x, za, w, zw, geometry):
    stride, padding, dilation, groups = geometry
    xc = F.pad(x.double() - za, (padding[1], padding[1], padding[0], padding[0]))  # exact small ints
    out = F.conv2d(xc, w.double() - zw, None, stride, 0, dilation, groups)  # float64: exact below 2^53
    return out.to(torch.int64)


def odd_extreme_linear(k: int):
    # every product is 255 * -127 = -32385 (odd): float32 sums above 2^24 must round
    x = torch.full((3, k), 255, dtype=torch.uint8)
    w = torch.full((2, k), -127, dtype=torch.int8)
    w[1, ::2] = 127  # mixed signs: partial sums rise and fall
    return x, w


@pytest.mark.parametrize("method", METHODS)
def test_linear_exact_at_the_float32_bound(method):
    k = F32_EXACT // (255 * 127)  # 518: bound 16,775,130 <= 2^24, one chunk
    x, w = odd_extreme_linear(k)
    acc = Accumulator(w, torch.zeros(2, dtype=torch.int64), None, method)
    assert acc.bound(255) <= F32_EXACT and chunk_plan(acc.col_sums, 255) == ((0, k),)
    out, _ = acc(x, 0)
    assert torch.equal(out.to(torch.int64), int64_linear(x, 0, w, 0))


@pytest.mark.parametrize("method", METHODS)
def test_linear_beyond_the_bound_is_chunked_and_still_exact(method):
    k = 1201  # odd total above 2^24: not a float32 value
    x, w = odd_extreme_linear(k)
    naive = (x.float() @ w.float().T).to(torch.int64)
    assert not torch.equal(naive, int64_linear(x, 0, w, 0))  # plain float32 really rounds here
    acc = Accumulator(w, torch.zeros(2, dtype=torch.int64), None, method)
    assert len(chunk_plan(acc.col_sums, 255)) == 3
    out, _ = acc(x, 0)
    assert out.dtype == torch.int32 and torch.equal(out.to(torch.int64), int64_linear(x, 0, w, 0))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("channels", [57, 58, 200])  # 57*9*255*127 <= 2^24 < 58*9*255*127
def test_conv_exact_at_and_beyond_the_bound(method, channels):
    x = torch.full((2, channels, 6, 6), 255, dtype=torch.uint8)
    x[1, :, ::2] = 0  # za = 0 there: mixed window contents
    w = torch.full((4, channels, 3, 3), -127, dtype=torch.int8)
    w[1::2, :, 1] = 127
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    acc = Accumulator(w, torch.zeros(4, dtype=torch.int64), geometry, method)
    out, _ = acc(x, 0)
    assert torch.equal(out.to(torch.int64), int64_conv(x, 0, w, 0, geometry))


def test_grouped_chunks_gather_the_same_channels_of_every_group():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 256, 5, 5), generator=g, dtype=torch.uint8)
    w = torch.randint(-128, 128, (8, 128, 3, 3), generator=g, dtype=torch.int8)
    zw = torch.randint(-5, 5, (8,), generator=g)
    geometry = ((2, 1), (1, 2), (1, 2), 2)
    acc = Accumulator(w, zw, geometry, "float")
    assert len(acc._plan(255)) > 1
    out, _ = acc(x, 3)
    assert torch.equal(out.to(torch.int64), int64_conv(x, 3, w, zw[:, None, None, None], geometry))


def test_nonzero_weight_zero_points_never_take_the_plain_onednn_path():
    w = torch.ones(2, 4, dtype=torch.int8)
    assert not Accumulator(w, torch.tensor([0, 1]), None, "auto").use_onednn
    with pytest.raises(ValueError, match="onednn"):
        Accumulator(w, torch.tensor([0, 1]), None, "onednn")


@pytest.mark.skipif(not onednn_exact(), reason="oneDNN int8 path not exact on this CPU")
@pytest.mark.parametrize("groups", [1, 4])
def test_nonzero_weight_zero_points_are_onednn_minus_zw_times_the_window_sum(groups):
    g = torch.Generator().manual_seed(groups)
    x = torch.randint(0, 256, (2, 8, 9, 9), generator=g, dtype=torch.uint8)
    w = torch.randint(-128, 128, (8, 8 // groups, 3, 3), generator=g, dtype=torch.int8)
    zw = torch.randint(-128, 128, (8,), generator=g)
    geometry = ((2, 2), (1, 1), (1, 1), groups)  # pads hold za: their window terms vanish
    acc = Accumulator(w, zw, geometry, "auto")
    assert acc.onednn_zw and not acc.use_onednn
    out, _ = acc(x, 77)
    assert torch.equal(out.to(torch.int64), int64_conv(x, 77, w, zw.reshape(-1, 1, 1, 1), geometry))


@pytest.mark.skipif(not onednn_exact(), reason="oneDNN int8 path not exact on this CPU")
def test_zero_point_correction_beyond_float32_is_done_in_int32():
    # oneDNN's part stays small (random signs) but zw * window sum = 127 * 255 * 600 > 2^24
    g = torch.Generator().manual_seed(5)
    x = torch.full((4, 600), 255, dtype=torch.uint8)
    w = torch.randint(-128, 128, (3, 600), generator=g, dtype=torch.int8)
    zw = torch.tensor([127, -128, 3])
    out, _ = Accumulator(w, zw, None, "auto")(x, 0)
    assert out.dtype == torch.int32
    assert torch.equal(out.to(torch.int64), int64_linear(x, 0, w, zw.reshape(-1, 1)))


@pytest.mark.skipif(not onednn_exact(), reason="oneDNN int8 path not exact on this CPU")
def test_onednn_takes_one_pass_when_the_result_shows_it_is_exact():
    # static bound 255*127*4000 >> 2^24, but random signs keep |acc| far below 2^24
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (16, 4000), generator=g, dtype=torch.uint8)
    w = torch.randint(-127, 128, (8, 4000), generator=g, dtype=torch.int8)
    acc = Accumulator(w, torch.zeros(8, dtype=torch.int64), None, "onednn")
    out, bound = acc(x, 128)
    assert out.dtype == torch.float32 and bound < F32_EXACT < acc.bound(128)
    assert torch.equal(out.to(torch.int64), int64_linear(x, 128, w, 0))
    bias = torch.randn(8, generator=g) * 100
    y, _ = acc.with_bias(x, 128, bias)
    assert torch.equal(y, out + bias)  # f32(acc + b): one rounding of the exact sum


@pytest.mark.skip(reason="oneDNN below the pair bound is disabled (accumulate._PAIRS_PATH_ENABLED)")
@pytest.mark.parametrize("zw_max", [0, 5])
@pytest.mark.parametrize("groups", [1, 4])
def test_onednn_where_no_pair_saturates_and_float_beyond(zw_max, groups):
    g = torch.Generator().manual_seed(zw_max + groups)
    w = torch.randint(-128, 128, (8, 16 // groups, 3, 3), generator=g, dtype=torch.int8)
    zw = torch.randint(-zw_max, zw_max + 1, (8,), generator=g)
    geometry = ((1, 2), (1, 1), (1, 1), groups)
    acc = Accumulator(w, zw, geometry, "auto")
    assert 2 * 127 * acc.pair_max <= PAIR_LIMIT < 2 * 128 * acc.pair_max
    for hi, za in ((127, 100), (127, 0), (255, 3)):
        x = torch.randint(0, hi + 1, (3, 16, 9, 7), generator=g, dtype=torch.uint8)
        x[0, 0, 0, 0] = hi
        assert acc.onednn_here(hi, za) == (hi <= 127 or acc.use_onednn or acc.onednn_zw)
        out, _ = acc(x, za)
        assert torch.equal(out.to(torch.int64), int64_conv(x, za, w, zw.reshape(-1, 1, 1, 1), geometry))
    # a zero point above 127 pads with it: that can saturate too, so not oneDNN without VNNI
    assert acc.onednn_here(100, 200) == (acc.use_onednn or acc.onednn_zw)
