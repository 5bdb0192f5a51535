"""torch's HistogramObserver range search (L2 norm minimisation), vectorised, same bits.

torch's ``_non_linear_param_search`` (from caffe2's NormMinimization) walks two quantiles
inward in steps of 1e-5 of the total count: each step moves whichever end (start bin or end
bin) would travel further, and evaluates the L2 quantization error of the new [start, end]
bin range, stopping at the first step whose error exceeds the previous one. The walk's path
does not depend on the errors, only its stopping point does; so here the path is generated
with bisections on the cumulative histogram (the long stretches where nothing moves are
skipped in one jump) and the errors of many steps are evaluated as one (steps, bins) batch,
with the same float32 operations as torch, so the chosen range is identical.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["l2_range_search", "quantization_l2_errors"]

_STEP = 1e-5
_N_STEPS = 100_010  # alpha + (1 - beta) reaches 1 after ~1e5 steps of 1e-5
# alpha and beta exactly as torch's Python loop accumulates them (sequential float64 adds).
_ALPHA = np.add.accumulate(np.r_[0.0, np.full(_N_STEPS, _STEP)])
_BETA = np.subtract.accumulate(np.r_[1.0, np.full(_N_STEPS, _STEP)])


def quantization_l2_errors(
    counts: torch.Tensor,
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    starts: np.ndarray,
    ends: np.ndarray,
    dst_nbins: int = 256,
) -> np.ndarray:
    """torch's ``_compute_quantization_error`` for many (start_bin, end_bin) pairs at once.

    The L2 error of quantizing the histogram onto ``dst_nbins`` levels spread over bins
    start..end (values outside are clamped to the end levels), with values uniform in each
    bin. float32 element operations as torch's, so each entry equals torch's to the bit.

    Args:
        counts: (B,) float32 histogram over [min_val, max_val].
        starts, ends: (K,) integer bin indices.
    Returns:
        (K,) float64 array of errors (torch's ``norm.sum().item()``).
    """
    bins = counts.numel()
    bin_width = (max_val.item() - min_val.item()) / bins
    dst_width = bin_width * (ends - starts + 1).astype(np.float64) / dst_nbins  # (K,) float64
    out = np.zeros(len(starts))
    live = dst_width != 0.0  # torch returns 0.0 when the destination bins have no width
    if not live.any():
        return out
    w = torch.from_numpy(dst_width[live].astype(np.float32))[:, None]  # (K, 1) f32(dst_width)
    half = torch.from_numpy((dst_width[live] / 2).astype(np.float32))[:, None]
    s = torch.from_numpy(starts[live].astype(np.int64))[:, None]
    src_begin = (torch.arange(bins) - s) * bin_width  # (K, B)
    src_end = src_begin + bin_width
    dst_of_begin = torch.clamp(torch.div(src_begin, w, rounding_mode="floor"), 0, dst_nbins - 1)
    dst_of_begin_center = (dst_of_begin + 0.5) * w
    dst_of_end = torch.clamp(torch.div(src_end, w, rounding_mode="floor"), 0, dst_nbins - 1)
    density = counts / bin_width  # (B,)

    def cube_diff(end: torch.Tensor, begin: torch.Tensor) -> torch.Tensor:
        return (end * end * end - begin * begin * begin) / 3

    norm = density * cube_diff(half, src_begin - dst_of_begin_center)
    norm = norm + (dst_of_end - dst_of_begin - 1) * (density * cube_diff(half, -half))
    dst_of_end_center = dst_of_end * w + half
    norm = norm + density * cube_diff(src_end - dst_of_end_center, -half)
    out[live] = norm.sum(dim=1).double().numpy()
    return out


def _walk(csum: list[float], total: float, bins: int) -> Iterator[tuple[int, int]]:
    """The (start_bin, end_bin) candidates of torch's loop, assuming each is accepted."""

    def threshold(q: float) -> float:
        return float(np.float32(q * total))  # torch compares float32 cSum with f32(q * total)

    neg_thr_b: np.ndarray | None = None  # built on the first motionless stretch only
    i = j = 0
    start, end = 0, bins - 1
    while _ALPHA[i] < _BETA[j]:
        # lft: first bin >= start whose cumulative count reaches alpha' * total (capped at end);
        # r: last bin <= end whose cumulative count stays within beta' * total (>= start).
        lft = min(end, max(start, bisect.bisect_left(csum, threshold(_ALPHA[i + 1]))))
        r = max(start, min(end, bisect.bisect_right(csum, threshold(_BETA[j + 1])) - 1))
        if lft - start > end - r:
            i += 1
            yield lft, end
            start = lft
        elif r != end:
            j += 1
            yield start, r
            end = r
        else:
            # Nothing moves (lft == start, r == end): torch loops with `continue`, stepping
            # beta only, until r would move or the quantiles meet. Jump there at once.
            j += 1
            if end == start:
                return
            if neg_thr_b is None:
                neg_thr_b = -(_BETA * total).astype(np.float32)  # non-decreasing
            # first m with f32(beta_m * total) < csum[end]: the step on which r moves
            first_move = int(np.searchsorted(neg_thr_b, -np.float32(csum[end]), side="right"))
            # The while condition ends the walk if the quantiles meet before then.
            j = min(max(j, first_move - 1), _N_STEPS - 1)


@torch.no_grad()
def l2_range_search(
    counts: torch.Tensor, min_val: torch.Tensor, max_val: torch.Tensor, dst_nbins: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (min, max) torch's HistogramObserver picks for this histogram, bit for bit.

    Args:
        counts: (B,) float32 histogram over [min_val, max_val] (0-dim float32 tensors).
        dst_nbins: quantized levels the error is measured for; torch uses 2**8 = 256 for both
            8-bit dtypes, even with reduce_range.
    Returns:
        (new_min, new_max), 0-dim float32 tensors: min + bin_width * start and
        min + bin_width * (end + 1).
    """
    bins = counts.numel()
    bin_width = (max_val - min_val) / bins
    total = torch.sum(counts).item()
    csum = torch.cumsum(counts, dim=0).tolist()
    walk = _walk(csum, total, bins)
    best = (0, bins - 1)
    prev_norm = float("inf")
    # Chunks of at most 15 steps keep each (steps, bins) op under torch's parallel grain
    # (32768 elements): serial kernels, immune to busy cores.
    chunk = 4
    done = False
    while not done:
        batch = [c for _, c in zip(range(chunk), walk, strict=False)]
        done = len(batch) < chunk
        if not batch:
            break
        cand = np.array(batch, dtype=np.int64)
        norms = quantization_l2_errors(counts, min_val, max_val, cand[:, 0], cand[:, 1], dst_nbins)
        for (start, end), norm in zip(batch, norms.tolist(), strict=True):
            if norm > prev_norm:  # torch stops at the first step that makes the error worse
                done = True
                break
            prev_norm, best = norm, (start, end)
        chunk = min(chunk * 2, max(1, 32767 // bins))
    start, end = best
    return min_val + bin_width * start, min_val + bin_width * (end + 1)
