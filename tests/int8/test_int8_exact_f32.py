"""``fma_f32``: one float32 rounding of ``acc + b*rcp``, checked against exact rationals, at
random and at the near-halfway sums where rounding in float64 first would round twice."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcal.int8.common.exact_f32 import fma_f32


def _round_f32(exact: Fraction) -> np.float32:
    """The float32 nearest ``exact``, ties to even."""
    r = np.float32(float(exact))
    best = None
    for c in (np.nextafter(r, np.float32(-np.inf)), r, np.nextafter(r, np.float32(np.inf))):
        key = (abs(Fraction(float(c)) - exact), int(np.array(c).view(np.int32)) & 1)
        if best is None or key < best[0]:
            best = (key, c)
    return best[1]


@settings(max_examples=80, deadline=None)
@given(j=st.lists(st.integers(2**23, 2**24 - 1), min_size=1, max_size=12), k=st.integers(12, 23),
       sign=st.sampled_from([-1, 1]), noise=st.floats(-1e4, 1e4, width=32))
def test_fma_rounds_once_even_where_float64_rounds_onto_a_halfway_point(j, k, sign, noise):
    # |acc| = 8j in [2^26, 2^27): float32 steps by 8 there. b*rcp = 4(1 + 2^-k)(1 - 2^-k) =
    # 4 - 2^(2-2k), just below half a step, by less than float64 resolves next to 2^26: float64
    # rounds acc + b*rcp onto the halfway point, and float32 would then round to even
    b = torch.tensor([sign * 4 * (1 + 2.0**-k), noise], dtype=torch.float32)
    rcp = torch.tensor([1 - 2.0**-k], dtype=torch.float32)
    acc = [sign * 8 * v for v in j]
    got = fma_f32(torch.tensor(acc, dtype=torch.float64)[:, None], b, rcp)  # (K, 1) against (2,)
    for i, av in enumerate(acc):
        for c in range(2):
            exact = Fraction(av) + Fraction(float(b[c])) * Fraction(float(rcp[0]))
            assert float(got[i, c]) == float(_round_f32(exact)), (av, float(b[c]))
