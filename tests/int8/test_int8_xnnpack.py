"""The xnnpack flavour's arithmetic against integer brute force (the delegate itself: tests/export/test_pt2e.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcal.int8 as qi
from qcal.int8.backends.xnnpack import check_xnnpack_weights, xnnpack_add


@settings(max_examples=60, deadline=None)
@given(st.floats(0.002, 0.5), st.floats(0.002, 0.5), st.floats(0.004, 0.5),
       st.integers(-128, 127), st.integers(-128, 127), st.integers(-128, 127), st.booleans())
def test_add_is_the_fixed_point_sum_rounded_half_up(sa, sb, so, za, zb, zo, relu):
    f = torch.tensor([sa, sb, so], dtype=torch.float32)
    ra, rb = float(f[0] / f[2]), float(f[1] / f[2])
    if not all(2.0**-10 <= r < 2.0**8 for r in (ra, rb)):
        return
    codes = torch.arange(-128, 128)
    a, b = codes.repeat_interleave(256), codes.repeat(256)
    lo = max(zo, -128) if relu else -128
    out = xnnpack_add(a, za, f[0], b, zb, f[1], f[2], zo, relu, lo, 127)
    shift = 20 - (math.frexp(max(ra, rb))[1] - 1)
    ma, mb = round(ra * 2**shift), round(rb * 2**shift)  # Python's round: half to even, like lrintf
    exact = ma * (a - za) + mb * (b - zb)
    want = (torch.floor((exact.double() + 2 ** (shift - 1)) / 2**shift).long() + zo).clamp(lo, 127)
    assert torch.equal(out, want)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.booleans(), st.booleans())
def test_conv_is_the_exact_sum_scaled_in_float32_and_rounded_half_to_even(seed, per_channel, relu):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (1, 3, 5, 5), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (4, 3, 3, 3), generator=g, dtype=torch.int8)
    sw = (torch.rand(4, generator=g) * 0.05 + 1e-3) if per_channel else 0.02
    bias = torch.randn(4, generator=g) * 3
    sa, za, so, zo = 0.03, int(torch.randint(-128, 128, (1,), generator=g)), 0.05, -5
    out = qi.conv2d(x, sa, za, w, sw, 0, bias, so, torch.tensor(zo, dtype=torch.int8), relu=relu, backend="xnnpack")
    acc = torch.nn.functional.conv2d((x.long() - za).double(), w.double()).long()
    sw_t = torch.as_tensor(sw, dtype=torch.float32).reshape(-1).expand(4)
    sa_t = torch.tensor(sa, dtype=torch.float32)
    inv = (1.0 / (sw_t * sa_t)) if per_channel else torch.tensor(1.0 / (float(sw_t[0]) * float(sa_t)), dtype=torch.float32)
    bq = torch.round(bias * inv).long()
    m = (sw_t * sa_t) / torch.tensor(so, dtype=torch.float32)
    y = (acc + bq.view(1, -1, 1, 1)).float() * m.view(1, -1, 1, 1)
    want = (torch.round(y) + zo).clamp(max(zo, -128) if relu else -128, 127).to(torch.int8)
    assert torch.equal(out, want)


def test_refusals_name_the_setting():
    x = torch.zeros(1, 1, 3, 3, dtype=torch.int8)
    w = torch.ones(1, 1, 1, 1, dtype=torch.int8)
    with pytest.raises(ValueError, match="below 256"):
        qi.conv2d(x, 1.0, 0, w, 1.0, 0, None, 1e-3, torch.tensor(0, dtype=torch.int8), backend="xnnpack")
    with pytest.raises(ValueError, match="no weight zero point"):
        check_xnnpack_weights(w, torch.tensor([3]))
