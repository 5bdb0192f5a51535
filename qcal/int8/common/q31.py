"""gemmlowp / TFLite fixed-point requantization: a real multiplier as (q, shift).

Many runtimes (TFLite, CMSIS-NN, gemmlowp, old QNNPACK) never multiply by a float: they
write ``m = q * 2^(shift - 31)`` with ``q`` in [2^30, 2^31) and requantize with integer
ops only (``SaturatingRoundingDoublingHighMul`` then ``RoundingDivideByPOT``), which round
half away from zero. qcal shows this form for every backend and runs it as ``backend="q31"``.
"""

from __future__ import annotations

import torch

__all__ = ["q31_requantize", "quantize_multiplier"]


@torch.no_grad()
def quantize_multiplier(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gemmlowp/TFLite ``QuantizeMultiplier``: ``m ~= q * 2^(shift - 31)``, q in [2^30, 2^31).

    Example: m = 0.375 = 0.75 * 2^-1 -> q = round(0.75 * 2^31) = 1610612736, shift = -1.

    Args:
        m: float64 (or float32) tensor of non-negative multipliers.
    Returns:
        (q int64, shift int64, relative error float64), each shaped like ``m``.
    """
    m = m.to(torch.float64)
    mant, exp = torch.frexp(m)  # m = mant * 2^exp, mant in [0.5, 1)
    q = torch.round(mant * 2.0**31).to(torch.int64)
    carry = q == 2**31  # the mantissa rounded up to 1.0
    q = torch.where(carry, q // 2, q)
    shift = exp.to(torch.int64) + carry.to(torch.int64)
    q = torch.where(m == 0, torch.zeros_like(q), q)
    shift = torch.where(m == 0, torch.zeros_like(shift), shift)
    approx = q.to(torch.float64) * torch.pow(2.0, (shift - 31).to(torch.float64))
    err = torch.where(m == 0, torch.zeros_like(m), (approx - m) / torch.where(m == 0, 1.0, m))
    return q, shift, err


@torch.no_grad()
def q31_requantize(x: torch.Tensor, q: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """TFLite ``MultiplyByQuantizedMultiplier(x, q, shift)`` on int64 tensors (broadcasting).

    ``SaturatingRoundingDoublingHighMul``: ``(x*q + nudge) / 2^31`` truncated, nudge
    ``2^30`` (or ``1 - 2^30`` for negative products); then ``RoundingDivideByPOT``: an
    arithmetic shift right that rounds half away from zero. Example: x=20, q=2^30,
    shift=-2 (m=0.125): high-mul gives 10, 10/4 = 2.5 rounds away from zero to 3.
    """
    x = x.to(torch.int64) << shift.clamp(min=0)
    ab = x * q
    nudge = torch.where(ab >= 0, 2**30, 1 - 2**30)
    high = torch.div(ab + nudge, 2**31, rounding_mode="trunc")
    right = (-shift).clamp(min=0)
    mask = (torch.ones_like(right) << right) - 1
    rem = high & mask
    threshold = (mask >> 1) + (high < 0).to(torch.int64)
    return (high >> right) + (rem > threshold).to(torch.int64)
