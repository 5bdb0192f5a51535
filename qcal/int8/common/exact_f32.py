"""float32 arithmetic on exact integer accumulators, rounded once where a backend rounds once.

A backend's ``f32(acc + b)`` or ``fma(b, r, acc)`` is one rounding of an exact sum; computing
it as two float32 operations would round twice. These helpers give the single rounding, fast
when the sum fits float32 exactly. Used by ``requant.py`` and by the step-by-step replay in
``qcal.reporting.requant_steps`` (so the replay rounds exactly as the engine).
"""

from __future__ import annotations

import torch

__all__ = ["F32_EXACT", "fma_f32", "sum_f32"]

F32_EXACT = 2**24  # integers up to this magnitude are exact in float32


def fma_f32(acc: torch.Tensor, b: torch.Tensor, rcp: torch.Tensor) -> torch.Tensor:
    """float32 ``fma(b, rcp, acc)`` for integer-valued ``acc``: one rounding of the exact sum.

    ``b*rcp`` is exact in float64; ``acc + b*rcp`` in float64 may round, and only when that
    rounded sum sits exactly halfway between two float32 values can rounding twice differ
    from rounding once; there the sign of the exact remainder decides.
    """
    p = b.double() * rcp.double()
    s = acc.double() + p
    r = s.float()
    tie = (s.view(torch.int64) & 0x1FFFFFFF) == 0x10000000  # halfway between two float32
    if not bool(tie.any()):
        return r
    at = tie.nonzero(as_tuple=True)  # ties are rare: fix those elements only
    st, a64, pt, rt = s[at], acc.expand_as(s)[at].double(), p.expand_as(s)[at], r[at]
    bb = st - a64
    err = (a64 - (st - bb)) + (pt - bb)  # TwoSum: acc + p == s + err exactly
    inf = torch.full_like(rt, float("inf"))
    below = torch.where(rt.double() > st, torch.nextafter(rt, -inf), rt)
    above = torch.where(rt.double() < st, torch.nextafter(rt, inf), rt)
    fixed = torch.where(err > 0, above, below)
    r[at] = torch.where(err != 0, fixed, rt)
    return r


def sum_f32(acc: torch.Tensor, b: torch.Tensor, bound: float) -> torch.Tensor:
    """f32(acc + b) for integer acc and int32 b, exact before the one rounding."""
    if acc.is_floating_point() and bound + float(b.abs().max()) <= F32_EXACT:
        return acc + b.float()
    return (acc.double() + b.double()).float()
