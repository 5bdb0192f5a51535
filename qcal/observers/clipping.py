"""Clipping-range estimators read off a histogram: percentile, entropy (KL) and MSE.

Pure functions of a histogram (``edges`` (B+1,), ``counts`` (B,), e.g. a
``RunningHistogram.view()``), so one shared histogram can serve every estimator. Values are
modelled as uniform inside each bin. Arithmetic is float64 numpy; results are floats.

* ``percentile_range``: both tails at (100-p, p) for affine specs, |x| at p for symmetric
  ones; within one bin of ``torch.quantile``'s value (two once torch's rebinning has moved
  counts because the range grew).
* ``entropy_threshold``: TensorRT's calibration: the |x| threshold whose clipped, requantized
  distribution is closest (KL divergence) to the observed one.
* ``mse_range``: the range minimising the expected quantization MSE: clipped values cost
  their distance to the clip level squared, the rest step**2 / 12.
"""

from __future__ import annotations

import numpy as np
import torch

from qcal.qparams import qparams_from_range, qrange

__all__ = [
    "abs_histogram",
    "entropy_threshold",
    "expected_mse",
    "kl_divergences",
    "mse_range",
    "percentile_range",
]


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    return t.detach().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, float)


def _cdf(edges: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Fraction of the mass at or below each edge, (B+1,)."""
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    return cum / max(cum[-1], 1e-300)


def _rank_quantile(edges: np.ndarray, counts: np.ndarray, q: float) -> float:
    """The q-quantile as ``torch.quantile`` defines it (rank (n-1)q, linear between order
    statistics), read off a histogram: bin j's values are spread evenly over it, the r-th of
    its n_j at (r + 0.5) / n_j of its width. So each order statistic is placed within its
    own bin and so is any interpolation between two of them: within one bin width of the
    exact quantile (across empty stretches too)."""
    full = counts > 0
    n, left, width = counts[full], edges[:-1][full], np.diff(edges)[full]
    before = np.cumsum(n) - n  # values in earlier bins
    # one point per bin of at most one value (at its centre), else its first and last value
    many = n > 1
    pos = np.stack([np.where(many, left + 0.5 * width / n, left + 0.5 * width),
                    np.where(many, left + width - 0.5 * width / n, left + 0.5 * width)], 1)
    rank = np.stack([np.where(many, before, before + n / 2 - 0.5),
                     np.where(many, before + n - 1, before + n / 2 - 0.5)], 1)
    target = (counts.sum() - 1) * q
    return float(np.interp(target, rank.ravel(), pos.ravel()))


def _abs_rank_quantile(edges: np.ndarray, counts: np.ndarray, q: float) -> float:
    """The q-quantile of |x| under the same model as ``_rank_quantile``: bin j's values sit
    at left + (r + 0.5) / n_j * width. Each such stand-in is within one bin of its true
    value, so their order statistics are too; the k-th is found by bisection on t of the
    count of stand-ins with |x| <= t."""
    left, width, n = edges[:-1], np.diff(edges), counts

    def at_most(t: float) -> float:  # stand-ins in [-t, t]
        upto = np.clip(np.floor((t - left) / width * n + 0.5), 0, n)
        below = np.clip(np.ceil((-t - left) / width * n - 0.5), 0, n)
        return float((upto - below).sum())

    def order_stat(k: int) -> float:  # smallest t with at least k + 1 stand-ins |x| <= t
        lo, hi = 0.0, float(max(abs(edges[0]), abs(edges[-1])))
        for _ in range(200):
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                break
            lo, hi = (lo, mid) if at_most(mid) >= k + 1 else (mid, hi)
        return hi

    h = (counts.sum() - 1) * q
    k = int(np.floor(h))
    a = order_stat(k)
    return a if h == k else a + (h - k) * (order_stat(k + 1) - a)


def _abs_cdf(edges: np.ndarray, counts: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Fraction of the mass with |x| <= t, for t >= 0: F(t) - F(-t)."""
    cdf = _cdf(edges, counts)
    return np.interp(t, edges, cdf) - np.interp(-t, edges, cdf)


def abs_histogram(
    edges: torch.Tensor, counts: torch.Tensor, bins: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """The histogram of |x| over [0, max|x|] in ``bins`` bins, folded from a signed one.

    For non-negative data it is the one-sided histogram, re-binned to start at 0.
    Returns (edges (bins+1,), counts (bins,)) as float64 arrays (counts sum to the total).
    """
    e, c = _np(edges), _np(counts)
    t = np.linspace(0.0, max(abs(e[0]), abs(e[-1])), bins + 1)
    return t, np.diff(_abs_cdf(e, c, t)) * c.sum()


def percentile_range(
    edges: torch.Tensor, counts: torch.Tensor, percentile: float = 99.99, *, symmetric: bool = False
) -> tuple[float, float]:
    """(lo, hi) clipping both tails at (100 - p, p) percent, or (-t, t) with t the p-th
    percentile of |x| when ``symmetric``.

    Example: 10000 values uniform on [0, 1), p = 99 -> about (0.01, 0.99).
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    e, c = _np(edges), _np(counts)
    q = percentile / 100.0
    if symmetric:
        t = _abs_rank_quantile(e, c, q)
        return -t, t
    return _rank_quantile(e, c, 1.0 - q), _rank_quantile(e, c, q)


def kl_divergences(abs_counts: np.ndarray, levels: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """TensorRT's KL(P || Q) for every cut ``i`` (bins kept) from ``levels`` to B.

    P: the first i bins, the clipped tail's mass added to bin i-1. Q: the first i bins merged
    into ``levels`` groups (i // levels bins each, the last group takes the rest), each
    group's mass spread evenly over its non-empty bins of P. Both normalised.

    Returns:
        (cuts (N,) int, kl (N,) float64); the threshold of cut i is edges[i].
    """
    h = np.asarray(abs_counts, dtype=np.float64)
    n_bins, total = h.size, float(h.sum())
    levels = min(levels, n_bins)
    # Prefix sums make each cut O(levels): KL = sum p log p / P - log P - sum p log q / P + log Q.
    with np.errstate(divide="ignore", invalid="ignore"):
        xlogx = np.where(h > 0, h * np.log(h), 0.0)
    mass_upto = np.concatenate([[0.0], np.cumsum(h)])  # mass_upto[i] = mass of bins < i
    plogp_upto = np.concatenate([[0.0], np.cumsum(xlogx)])
    nonzero_upto = np.concatenate([[0], np.cumsum(h > 0)])
    cuts = np.arange(levels, n_bins + 1)
    i = cuts[:, None]  # (N, 1)
    g = np.arange(levels)[None, :]  # (1, L)
    width = i // levels
    g_start, g_stop = g * width, np.where(g == levels - 1, i, (g + 1) * width)  # (N, L)
    mass = mass_upto[g_stop] - mass_upto[g_start]  # Q's mass per group (clipped bins only)
    n_nonzero = (nonzero_upto[g_stop] - nonzero_upto[g_start]).astype(np.float64)
    tail = total - mass_upto[cuts]  # (N,) the clipped mass, added to P's last bin
    last = h[cuts - 1] + tail
    n_nonzero[:, -1] += (h[cuts - 1] == 0) & (tail > 0)  # the last bin became non-empty
    p_mass = mass.copy()
    p_mass[:, -1] += tail  # P's mass per group
    with np.errstate(divide="ignore", invalid="ignore"):
        q_level = np.where(mass > 0, mass / np.maximum(n_nonzero, 1), 1e-12 * total)
        sum_plogq = np.where(p_mass > 0, p_mass * np.log(q_level), 0.0).sum(1)
        plogp = plogp_upto[cuts - 1] + np.where(last > 0, last * np.log(last), 0.0)
        q_total = np.maximum(mass_upto[cuts], 1e-300)
        kl = (plogp - sum_plogq) / total - np.log(total) + np.log(q_total)
    return cuts, kl


def entropy_threshold(
    edges: torch.Tensor, counts: torch.Tensor, levels: int = 128, *, bins: int = 2048
) -> float:
    """The |x| clipping threshold of minimal KL divergence (TensorRT's entropy calibration).

    Args:
        edges, counts: a (signed) histogram; folded to |x| over ``bins`` bins.
        levels: quantized levels available to |x| (128 for 8-bit symmetric; 256 for
            non-negative data on quint8; halved by reduce_range).
    """
    abs_edges, abs_counts = abs_histogram(edges, counts, bins=bins)
    if abs_counts.sum() <= 0 or abs_edges[-1] == 0.0:
        return float(abs_edges[-1])
    cuts, kl = kl_divergences(abs_counts, levels)
    # A cut at or below the smallest |x| would clip every value (data away from 0): skip.
    first = int(np.argmax(abs_counts > 0))
    kl = np.where(cuts > first, kl, np.inf)
    return float(abs_edges[cuts[int(np.argmin(kl))]])


def expected_mse(
    edges: torch.Tensor,
    counts: torch.Tensor,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    dtype: str = "quint8",
    symmetric: bool = False,
    reduce_range: bool = False,
    quant_min: int | None = None,
    quant_max: int | None = None,
) -> np.ndarray:
    """Expected squared quantization error per value for each candidate range (lo[k], hi[k]).

    Uses the exact qparams the spec would get (``qparams_from_range``); values (bin centres)
    beyond the representable levels cost their squared distance to the end level, values
    inside cost step**2 / 12 (rounding error uniform over a step); ``quant_min``/``quant_max``
    replace the dtype's range (``qrange``). Returns (K,) float64.
    """
    e, c = _np(edges), _np(counts)
    centers = (e[:-1] + e[1:]) / 2
    scale, zp = qparams_from_range(
        torch.as_tensor(lo, dtype=torch.float32),
        torch.as_tensor(hi, dtype=torch.float32),
        dtype=dtype, symmetric=symmetric, reduce_range=reduce_range, quant_min=quant_min, quant_max=quant_max,
    )
    qmin, qmax = qrange(dtype, reduce_range, quant_min, quant_max)
    s, z = scale.double().numpy()[:, None], zp.double().numpy()[:, None]
    top, bottom = (qmax - z) * s, (qmin - z) * s  # (K, 1) the end levels
    over = np.clip(centers[None, :] - top, 0.0, None)
    under = np.clip(bottom - centers[None, :], 0.0, None)
    err = np.where((over > 0) | (under > 0), over**2 + under**2, s**2 / 12)
    return (err * c[None, :]).sum(1) / max(c.sum(), 1e-300)


_SHRINK = 2.0 ** (-np.arange(0, 161) / 16)  # 1 down to 1/1024 in steps of 2**(1/16)


def mse_range(
    edges: torch.Tensor,
    counts: torch.Tensor,
    *,
    dtype: str = "quint8",
    symmetric: bool = False,
    reduce_range: bool = False,
    quant_min: int | None = None,
    quant_max: int | None = None,
) -> tuple[float, float]:
    """The (lo, hi) of least expected quantization MSE (``expected_mse``).

    Candidates shrink the observed range widened to include 0: symmetric t = max|x| * f,
    affine lo = min(min, 0) * f_lo, hi = max(max, 0) * f_hi (coordinate search over the two
    factors), f from 1 down to 1/1024 in steps of 2**(1/16). f = 1 (the min/max range) is
    always a candidate. The result is clamped to the observed [min, max] (same qparams).
    """
    e = _np(edges)
    lo0, hi0 = min(float(e[0]), 0.0), max(float(e[-1]), 0.0)  # the range qparams see
    kw = {"dtype": dtype, "symmetric": symmetric, "reduce_range": reduce_range, "quant_min": quant_min,
          "quant_max": quant_max}
    if symmetric:
        t = max(abs(lo0), abs(hi0)) * _SHRINK
        best = float(t[int(np.argmin(expected_mse(edges, counts, -t, t, **kw)))])
        return -best, best
    lo, hi = lo0, hi0
    for _ in range(3):  # coordinate descent; converges in one or two rounds
        los = lo0 * _SHRINK
        lo = float(los[int(np.argmin(expected_mse(edges, counts, los, np.full_like(los, hi), **kw)))])
        his = hi0 * _SHRINK
        hi = float(his[int(np.argmin(expected_mse(edges, counts, np.full_like(his, lo), his, **kw)))])
    return max(lo, float(e[0])), min(hi, float(e[-1]))
