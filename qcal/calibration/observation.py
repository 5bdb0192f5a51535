"""What calibration records at each observation point, for every scheme at once.

An ``ObservationPoint`` holds one observer per distinct activation ``QSpec`` (the four
generic presets share one spec, hence one observer), the running min/max, and a display
histogram of the values (collected for every scheme, minmax ones included).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from qcal.int8.native import histc
from qcal.observers.histogram import check_finite
from qcal.observers.observers import make_observers
from qcal.schemes import QSpec

__all__ = ["ObservationPoint", "ValueHistogram"]


class ValueHistogram:
    """Counts of values in fixed-width bins over [-R, R], R a power of two.

    When a value falls outside, R doubles and neighbouring bins merge pairwise, so counts
    never need the data again. ``bins`` (even) fixes the resolution: data within [0, max]
    always spans at least a quarter of them. Tensors of up to ``sample`` values are counted
    exactly; larger ones through an evenly strided subsample whose counts are scaled up to
    the tensor's size (the histogram is for display; the observers see every value).
    """

    def __init__(self, bins: int = 512, sample: int = 2**18) -> None:
        self.bins = bins
        self.sample = sample
        self.half: float | None = None
        self.counts = torch.zeros(bins, dtype=torch.float64)

    def update(self, x: torch.Tensor, lo: float | None = None, hi: float | None = None) -> None:
        """Count ``x``; ``lo``/``hi`` are its min and max when the caller already has them."""
        x = x.detach().reshape(-1)
        n = x.numel()
        if n == 0:
            return
        if lo is None or hi is None:
            lo, hi = (float(v) for v in torch.aminmax(x))
        need = max(-lo, hi, 2.0**-30)
        if self.half is None:
            self.half = 2.0 ** math.ceil(math.log2(need))
        while need > self.half:
            merged = self.counts.view(-1, 2).sum(1)  # (B,) -> (B/2,): each pair of bins becomes one
            self.counts = torch.zeros_like(self.counts)
            self.counts[self.bins // 4: 3 * self.bins // 4] = merged
            self.half *= 2
        step = -(-n // self.sample)  # ceil: at most ``sample`` values go to histc
        counted = histc(x.float().contiguous(), self.bins, -self.half, self.half, step=step).double()
        self.counts += counted * (n / -(-n // step)) if step > 1 else counted

    def trimmed(self, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(edges (K+1,), counts (K,)) of the bins covering [lo, hi]."""
        if self.half is None:
            return torch.zeros(1, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        width = 2 * self.half / self.bins
        first = max(math.floor((lo + self.half) / width), 0)
        last = min(math.ceil((hi + self.half) / width), self.bins)
        last = max(last, first + 1)
        edges = -self.half + width * torch.arange(first, last + 1, dtype=torch.float64)
        return edges, self.counts[first:last].clone()


class ObservationPoint:
    """One observed tensor: an observer per activation spec, min/max, a display histogram."""

    def __init__(self, label: str, specs: Iterable[QSpec]) -> None:
        self.label = label
        # histogram-based specs (fbgemm_default's and qnnpack_default's) share one histogram
        self.observers = make_observers(list(specs))
        self.min = math.inf
        self.max = -math.inf
        self.histogram = ValueHistogram()
        self.updates = 0

    def update(self, x: torch.Tensor) -> None:
        """Feed one tensor to every observer (in order: the histogram observer is order-dependent)."""
        x = x.detach()
        if not x.is_floating_point() or x.numel() == 0:
            return
        x = x.to(torch.float32)
        lo_t, hi_t = torch.aminmax(x)  # one pass over the data serves every observer
        check_finite(x, lo_t, hi_t)
        for obs in self.observers.values():
            obs._observe(x, lo_t, hi_t)
        lo, hi = float(lo_t), float(hi_t)
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.histogram.update(x, lo, hi)
        self.updates += 1
