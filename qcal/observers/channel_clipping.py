"""Per-channel clipping ranges computed exactly from the channel values (weights).

Weights are small and seen once, so the per-channel percentile, entropy and MSE estimators
keep them and work on the values themselves instead of a histogram.
All functions take ``y`` (C, N) float32 (one row per channel) and return (lo, hi), float32
(C,) tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qcal.observers.clipping import entropy_threshold
from qcal.qparams import qparams_from_range, qrange

__all__ = ["channel_entropy_range", "channel_mse_range", "channel_percentile_range"]


@torch.no_grad()
def channel_percentile_range(
    y: torch.Tensor, percentile: float = 99.99, *, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's (100-p, p) percentiles, or +-(p-th percentile of |x|) if symmetric.

    Exact (``torch.quantile``, linear interpolation between order statistics).
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    q = percentile / 100.0
    y = y.double()
    if symmetric:
        t = torch.quantile(y.abs(), q, dim=1)
        return (-t).float(), t.float()
    lo, hi = torch.quantile(y, torch.tensor([1.0 - q, q], dtype=torch.float64), dim=1)
    return lo.float(), hi.float()


def _quant_mse(y: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, **kw: Any) -> torch.Tensor:
    """Mean squared quantize-dequantize error of each channel under range (lo, hi), (C,);
    ``kw``: ``qparams_from_range``'s dtype, symmetric, reduce_range, quant_min, quant_max."""
    scale, zp = qparams_from_range(lo, hi, **kw)
    qmin, qmax = qrange(kw["dtype"], kw["reduce_range"], kw["quant_min"], kw["quant_max"])
    s, z = scale[:, None], zp[:, None].float()
    q = torch.clamp(torch.round(y / s) + z, qmin, qmax)  # (C, N)
    return ((q - z) * s - y).double().pow(2).mean(1)


_SHRINK = torch.tensor(2.0 ** (-np.arange(0, 81) / 16), dtype=torch.float32)  # 1 .. 1/32


@torch.no_grad()
def channel_mse_range(
    y: torch.Tensor, *, dtype: str = "qint8", symmetric: bool = True, reduce_range: bool = False,
    quant_min: int | None = None, quant_max: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's range of least actual quantization MSE (codes in ``qrange(dtype,
    reduce_range, quant_min, quant_max)``).

    Candidates shrink each channel's min/max by factors f from 1 (min/max, always a
    candidate) down to 1/32 in steps of 2**(1/16); affine specs search lo and hi factors by
    coordinate descent.
    """
    kw = {"dtype": dtype, "symmetric": symmetric, "reduce_range": reduce_range, "quant_min": quant_min,
          "quant_max": quant_max}
    data_lo, data_hi = lo0, hi0 = torch.aminmax(y, dim=1)
    # Shrink the range as qparams see it (widened to include 0), so lo <= 0 <= hi stays true.
    lo0, hi0 = torch.clamp(lo0, max=0.0), torch.clamp(hi0, min=0.0)
    if symmetric:
        hi0 = torch.max(-lo0, hi0)
        lo0 = -hi0

    def best_factor(shrink_lo: bool, shrink_hi: bool, lo: torch.Tensor, hi: torch.Tensor):
        """(C,) the factor of least error when shrinking the chosen end(s) of (lo, hi)."""
        errs = torch.stack([
            _quant_mse(y, lo * f if shrink_lo else lo, hi * f if shrink_hi else hi, **kw)
            for f in _SHRINK
        ])  # (F, C)
        return _SHRINK[errs.argmin(0)]

    if symmetric:
        f = best_factor(True, True, lo0, hi0)
        return lo0 * f, hi0 * f
    lo, hi = lo0.clone(), hi0.clone()
    for _ in range(2):  # coordinate descent over the two factors
        lo = lo0 * best_factor(True, False, lo0, hi)
        hi = hi0 * best_factor(False, True, lo, hi0)
    return torch.max(lo, data_lo), torch.min(hi, data_hi)  # same qparams, within the data


@torch.no_grad()
def channel_entropy_range(
    y: torch.Tensor, levels: int = 128, *, symmetric: bool = True, bins: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's KL-optimal |x| threshold (``clipping.entropy_threshold``).

    A channel of weights holds few values, so its histogram has ``bins`` (512) bins.
    """
    lo0, hi0 = torch.aminmax(y, dim=1)
    t = torch.empty(y.shape[0])
    for c in range(y.shape[0]):
        a, b = lo0[c].item(), hi0[c].item()
        if a == b:
            t[c] = max(abs(a), abs(b))
            continue
        counts = torch.histc(y[c], bins, min=a, max=b)
        edges = torch.linspace(a, b, bins + 1)
        t[c] = entropy_threshold(edges, counts, levels, bins=bins)
    if symmetric:
        return -t, t
    return torch.max(lo0, -t), torch.min(hi0, t)
