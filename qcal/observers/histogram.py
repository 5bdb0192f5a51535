"""A growing histogram of everything an observer has seen, rescaled exactly as torch's.

``RunningHistogram`` is the shared statistic of the histogram-based range estimators
(histogram, percentile, entropy, mse): 2048 equal bins over the running [min, max]. When a
batch widens the range, the old counts are spread onto the new bins the way
``torch.ao.quantization.HistogramObserver`` does it (each old bin cut into 16 sub-bins whose
mid-points are re-bucketed), so a histogram observer built on it reproduces torch's scale
and zero point to the bit. Memory is bounded: the activations themselves are never kept.
"""

from __future__ import annotations

import weakref

import torch

from qcal.int8.native import histc  # torch.histc's bins, bit for bit, without its slow loop

__all__ = ["RunningHistogram", "check_finite"]


def check_finite(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Raise ValueError naming how many NaN/Inf values ``x`` holds, given its aminmax.

    ``torch.aminmax`` propagates NaN and shows Inf, so finite extremes prove a finite tensor
    without a pass over the data.
    """
    if bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all()):
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    raise ValueError(
        f"observer input holds {n_nan} NaN and {n_inf} Inf values (of {x.numel()}); "
        "only finite float values can be calibrated"
    )


class RunningHistogram:
    """2048-bin histogram over the running [min, max] of every value seen.

    Identical to the ``histogram``/``min_val``/``max_val`` buffers of torch's
    ``HistogramObserver`` fed the same batches (same ``torch.histc`` binning, same
    upsample-and-rebucket when the range grows).

    Args:
        bins: number of equal-width bins (torch's default 2048).
        upsample_rate: sub-bins per old bin when the range grows (torch: 16).

    Example:
        >>> h = RunningHistogram(bins=4)
        >>> h.update(torch.tensor([0.0, 1.0, 1.0, 4.0]))
        >>> h.counts.tolist(), h.edges().tolist()
        ([1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 2.0, 3.0, 4.0])
    """

    def __init__(self, bins: int = 2048, upsample_rate: int = 16) -> None:
        if bins < 1 or upsample_rate < 1:
            raise ValueError(f"bins and upsample_rate must be >= 1, got {bins}, {upsample_rate}")
        self.bins = int(bins)
        self.upsample_rate = int(upsample_rate)
        self.counts = torch.zeros(self.bins)  # (bins,) float32, as torch keeps them
        self.min_val = torch.tensor(float("inf"))  # 0-dim float32
        self.max_val = torch.tensor(float("-inf"))
        self.updates = 0  # non-empty batches counted so far
        self._last: tuple[weakref.ref, int] | None = None  # (tensor, its _version) last counted

    def __getstate__(self) -> dict:
        # the weak reference to the last batch cannot be pickled, nor mean anything elsewhere
        return {**self.__dict__, "_last": None}

    @property
    def empty(self) -> bool:
        """True until a non-empty batch has been seen."""
        return bool(self.min_val == float("inf"))

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_min: torch.Tensor | None = None,
               x_max: torch.Tensor | None = None) -> None:
        """Add the values of ``x`` (any shape; float) to the histogram; ``x_min``/``x_max``
        (0-dim float32, ``torch.aminmax(x)``) when the caller already has them.

        Raises:
            ValueError: if ``x`` holds NaN or Inf (the message counts them).
        """
        x = x.detach().to(torch.float32)
        if x.numel() == 0:
            return
        if x_min is None or x_max is None:
            x_min, x_max = torch.aminmax(x)
        check_finite(x, x_min, x_max)
        self.updates += 1
        flat = x.reshape(-1)
        if self.empty:
            self.min_val, self.max_val = x_min, x_max
            self.counts = histc(flat, self.bins, x_min.item(), x_max.item())
            return
        new_min = torch.min(self.min_val, x_min)
        new_max = torch.max(self.max_val, x_max)
        fresh = histc(flat, self.bins, new_min.item(), new_max.item())
        if new_min == self.min_val and new_max == self.max_val:
            self.counts = self.counts + fresh
            return
        self.counts = fresh + self._rebinned(new_min, new_max)
        self.min_val, self.max_val = new_min, new_max

    def update_once(self, x: torch.Tensor, x_min: torch.Tensor | None = None,
                    x_max: torch.Tensor | None = None) -> None:
        """``update``, unless this very tensor (same object, not modified since) was the last
        one counted: several observers sharing this histogram can each pass the batch on.
        Only a weak reference is kept, so the batch is never held alive."""
        if self._last is not None:
            ref, version = self._last
            if ref() is x and x._version == version:
                return
        self.update(x, x_min, x_max)
        self._last = (weakref.ref(x), x._version)

    def _rebinned(self, new_min: torch.Tensor, new_max: torch.Tensor) -> torch.Tensor:
        """The old counts moved onto bins over [new_min, new_max] (torch's _combine_histograms)."""
        old_min, old_max = self.min_val, self.max_val
        if old_min == old_max:
            # A single value seen so far: all its mass goes to that value's new bin.
            one = torch.histc(old_min, self.bins, min=new_min.item(), max=new_max.item())
            return one * torch.sum(self.counts)
        n_fine = self.bins * self.upsample_rate
        fine = self.counts.repeat_interleave(self.upsample_rate) / self.upsample_rate
        fine_width = (old_max - old_min) / n_fine
        mids = torch.linspace(old_min, old_max, n_fine + 1)[:-1] + 0.5 * fine_width
        bounds = torch.linspace(new_min, new_max, self.bins + 1)
        bucket = torch.bucketize(mids, bounds, right=True) - 1
        bucket = bucket.clamp_(0, self.bins - 1)  # mid-points rounded past either end
        return torch.bincount(bucket, weights=fine, minlength=self.bins)

    def edges(self) -> torch.Tensor:
        """Bin edges, float32 (bins + 1,). A single value v seen is binned over [v-1, v+1] as
        ``torch.histc`` does; an empty histogram has edges over [0, 1]."""
        if self.empty:
            return torch.linspace(0.0, 1.0, self.bins + 1)
        lo, hi = self.min_val.item(), self.max_val.item()
        if lo == hi:
            lo, hi = lo - 1.0, hi + 1.0
        return torch.linspace(lo, hi, self.bins + 1)

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(edges float32 (bins + 1,), counts float32 (bins,)), copies safe to keep."""
        return self.edges(), self.counts.clone()
