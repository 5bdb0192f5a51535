"""The localised pair-saturation emulation (``pair_sites.py``) against a brute force over every
pair of every output pixel and channel, at random and where every pair saturates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qcal.int8 as qi
from qcal.int8.common.pair_sites import pair_plan
from qcal.int8.common.saturation import pair_saturation_conv, pair_saturation_linear


def _brute_pairs(a: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """a (M, K) raw codes, w (O, K): ``sum_p sat16(s_p) - s_p`` (M, O) in int64, and the count."""
    if a.shape[1] % 2:
        a, w = F.pad(a, (0, 1)), F.pad(w, (0, 1))
    prod = a.long()[:, None, :] * w.long()[None, :, :]  # (M, O, K)
    s = prod[..., 0::2] + prod[..., 1::2]
    d = s.clamp(-32768, 32767) - s
    return d.sum(-1), int((d != 0).sum())


def _brute_conv(x, za, w, geometry):
    """Every output pixel's im2col column in (kh, kw, c) order, per group."""
    (sh, sw), (ph, pw), (dh, dw), groups = geometry
    o, cg, kh, kw = w.shape
    n = x.shape[0]
    xp = F.pad(x.long(), (pw, pw, ph, ph), value=za)
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out, count = torch.zeros(n, o, ho, wo, dtype=torch.long), 0
    og = o // groups
    for g in range(groups):
        wg = w[g * og:(g + 1) * og].permute(0, 2, 3, 1).reshape(og, -1)  # (kh, kw, c)
        for i in range(ho):
            for j in range(wo):
                win = xp[:, g * cg:(g + 1) * cg, i * sh: i * sh + dh * (kh - 1) + 1: dh,
                         j * sw: j * sw + dw * (kw - 1) + 1: dw]  # (N, cg, kh, kw)
                d, k = _brute_pairs(win.permute(0, 2, 3, 1).reshape(n, -1), wg)
                out[:, g * og:(g + 1) * og, i, j] = d
                count += k
    return out, count


def _weights(draw_extreme: bool, shape, gen):
    if draw_extreme:  # each output channel all +127 or all -128: with codes at 255 every pair saturates
        sign = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=gen) < 0.5
        return torch.where(sign, 127, -128).to(torch.int8).expand(shape).contiguous()
    return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1), groups=st.sampled_from([1, 2, 3]), cg=st.integers(1, 5),
    og=st.integers(1, 3), kernel=st.sampled_from([(1, 1), (3, 3), (2, 3), (1, 2)]),
    stride=st.integers(1, 2), pad=st.integers(0, 1), dilation=st.integers(1, 2),
    low=st.sampled_from([0, 120, 200, 255]), extreme=st.booleans(), za=st.integers(0, 255),
)
def test_conv_sites_equal_the_full_emulation(seed, groups, cg, og, kernel, stride, pad, dilation, low, extreme,
                                             za):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(low, 256, (2, groups * cg, 6, 5), generator=gen, dtype=torch.uint8)
    w = _weights(extreme, (groups * og, cg, *kernel), gen)
    geometry = ((stride, stride), (pad, pad), (dilation, dilation), groups)
    ref, ref_count = _brute_conv(x, za, w, geometry)
    delta, count = pair_saturation_conv(x, za, w, geometry, pair_plan(w, geometry))
    assert count == ref_count
    assert torch.equal(delta.long(), ref)
    if low == 255 and extreme and pad == 0:  # the extreme: every pair of every pixel saturates
        assert count == ref.numel() * (cg * kernel[0] * kernel[1] // 2)  # an odd last pairs with 0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 40), o=st.integers(1, 6),
       low=st.sampled_from([0, 128, 255]), extreme=st.booleans())
def test_linear_sites_equal_the_full_emulation(seed, k, o, low, extreme):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(low, 256, (3, 4, k), generator=gen, dtype=torch.uint8)
    w = _weights(extreme, (o, k), gen)
    ref, ref_count = _brute_pairs(x.reshape(-1, k), w)
    delta, count = pair_saturation_linear(x, w, pair_plan(w))
    assert count == ref_count
    assert torch.equal(delta.long(), ref.reshape(3, 4, o))


def test_sparse_outliers_are_found_and_matched_by_the_real_kernel():
    # codes mostly small with a few 255s, the histogram observer's case: only the outliers'
    # windows saturate, and torch's fbgemm kernel agrees with the localised emulation
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 60, (2, 16, 12, 12), generator=gen, dtype=torch.uint8)
    x[0, 2:4, 5, 7] = 255
    x[1, 8:10, 0, 0] = 250
    w = _weights(True, (8, 16, 3, 3), gen)
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    ref, ref_count = _brute_conv(x, 3, w, geometry)
    delta, count = pair_saturation_conv(x, 3, w, geometry)
    assert count == ref_count > 0 and torch.equal(delta.long(), ref)
    exact = qi.conv2d_detailed(x, 1.0, 3, w, 1.0, 0, None, 1000.0, 0, padding=1, saturate=False)
    so = float(exact.acc.abs().max()) / 100
    ours = qi.conv2d(x, 1.0, 3, w, 1.0, 0, None, so, 0, padding=1)
    torch.backends.quantized.engine = "fbgemm"
    xq = torch._make_per_tensor_quantized_tensor(x, 1.0, 3)
    wq = torch._make_per_tensor_quantized_tensor(w, 1.0, 0)
    packed = torch.ops.quantized.conv2d_prepack(wq, None, [1, 1], [1, 1], [1, 1], 1)
    assert torch.equal(ours, torch.ops.quantized.conv2d(xq, packed, so, 0).int_repr())
