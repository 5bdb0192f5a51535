"""Range estimators ("observers"): statistics of the tensors seen -> (scale, zero_point).

``make_observer(spec)`` returns an ``Observer`` for a ``QSpec``. Each observer is a thin
state holder: ``update(x)`` accumulates bounded statistics (min/max, a ``RunningHistogram``
or, for per-channel weights seen once, the channel values), ``clip_range()`` turns them into
the (min, max) the estimator chose, and ``qparams()`` applies ``qparams_from_range``.

* minmax, moving_average: identical to torch's MinMaxObserver, MovingAverageMinMaxObserver
  (averaging constant 0.01, the first batch sets min/max) and their per-channel versions.
* histogram: identical to torch's HistogramObserver (per tensor only).
* percentile, entropy, mse: read a ``RunningHistogram`` per tensor, or the values per
  channel (weights: small, seen once).

``make_observers(specs)`` builds many at once, the per-tensor histogram-based ones sharing a
single ``RunningHistogram`` (one histogram pass per batch however many estimators read it);
``range_from_histogram(spec, hist)`` evaluates any of them on a histogram you hold.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from qcal.observers.channel_clipping import (
    channel_entropy_range,
    channel_mse_range,
    channel_percentile_range,
)
from qcal.observers.histogram import RunningHistogram, check_finite
from qcal.observers.histogram_ranges import (
    levels_for,
    qparams_from_histogram,
    range_from_histogram,
    range_kwargs,
)
from qcal.qparams import EPS, qparams_from_range
from qcal.schemes import QSpec

__all__ = [
    "Observer",
    "RunningHistogram",
    "make_observer",
    "make_observers",
    "qparams_from_histogram",
    "range_from_histogram",
]

Range = tuple[torch.Tensor, torch.Tensor]


def _unseen() -> Range:
    """torch's state before any update: min +inf, max -inf."""
    return torch.tensor([float("inf")]), torch.tensor([float("-inf")])


# Options each observer accepts (name -> default).
# Every observer takes "eps", torch's smallest scale (XNNPACKQuantizer's presets: 2**-12).
_OPTIONS: dict[str, dict[str, Any]] = {name: {**options, "eps": EPS} for name, options in {
    "minmax": {},
    "moving_average": {"averaging_constant": 0.01},
    "histogram": {"bins": 2048},
    "percentile": {"percentile": 99.99, "bins": 2048},
    "entropy": {"bins": 2048},
    "mse": {"bins": 2048},
}.items()}


def _check_float(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"observers take float tensors, got {what}")


class Observer:
    """Base class: input checks, per-channel layout, and qparams from ``clip_range``.

    Attributes:
        spec: the QSpec this observer estimates a range for.
    """

    def __init__(self, spec: QSpec) -> None:
        self.spec = spec
        self._warned_zero = False
        self._channels: int | None = None

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as float32 per tensor (any shape: no copy), (C, N) per channel."""
        x = x.detach().to(torch.float32)
        if not self.spec.per_channel:
            return x
        axis = self.spec.ch_axis
        if not -x.dim() <= axis < x.dim() or x.dim() == 0:
            raise ValueError(f"ch_axis {axis} is out of range for a tensor of shape {tuple(x.shape)}")
        y = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        if self._channels is not None and y.shape[0] != self._channels:
            raise ValueError(f"this observer saw {self._channels} channels before, now {y.shape[0]} "
                             f"(shape {tuple(x.shape)}, ch_axis {axis})")
        self._channels = y.shape[0]
        return y

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Accumulate the statistics of ``x`` (float tensor; channels along spec.ch_axis).

        Raises:
            TypeError: for a non-tensor or non-float tensor.
            ValueError: for NaN/Inf values (the message counts them) or a bad channel axis.
        """
        _check_float(x)
        if x.numel() == 0:
            return
        self._update(self._layout(x))

    def _update(self, y: torch.Tensor) -> None:
        raise NotImplementedError

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """``update`` for a finite float32 ``x`` whose ``aminmax`` the caller already has
        (one pass over the data serves every observer of an observation point)."""
        self.update(x)

    def clip_range(self) -> Range:
        """(lo, hi): float32 1-D tensors, the range chosen before widening to include 0."""
        raise NotImplementedError

    def histogram(self) -> Range | None:
        """(bin_edges (B+1,), counts (B,)) of the values seen, or None."""
        return None

    @torch.no_grad()
    def qparams(self) -> Range:
        """(scale float32 (C,), zero_point int64 (C,)); (1.0, 0) if nothing was seen."""
        lo, hi = self.clip_range()
        spec = self.spec
        if lo.numel() == 1 and lo.item() == float("inf"):
            return torch.tensor([1.0]), torch.tensor([0])  # never observed: torch's default
        zero = (torch.min(lo, torch.zeros_like(lo)) == 0) & (torch.max(hi, torch.zeros_like(hi)) == 0)
        if bool(zero.any()) and not self._warned_zero:
            self._warned_zero = True
            warnings.warn(f"{spec.observer} observer saw only zeros in {int(zero.sum())} of "
                          f"{zero.numel()} channel(s): their scale is eps = {EPS:.3g}, as in torch",
                          stacklevel=2)
        scale, zp = qparams_from_range(lo, hi, **range_kwargs(spec), eps=spec.option("eps"))
        if not bool(torch.isfinite(scale).all()):
            raise ValueError(f"range ({lo.min().item()}, {hi.max().item()}) is too wide for a "
                             "float32 scale; inputs must span less than 3.4e38")
        return scale, zp


class MinMaxObserver(Observer):
    """Running min/max (minmax) or their moving average (moving_average), as torch's."""

    def __init__(self, spec: QSpec) -> None:
        super().__init__(spec)
        self.averaging = float(spec.option("averaging_constant", 0.01))
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None
        self.moving = spec.observer == "moving_average"

    def _update(self, y: torch.Tensor) -> None:
        lo, hi = torch.aminmax(y, dim=1) if self.spec.per_channel else torch.aminmax(y)
        check_finite(y, lo, hi)
        self._absorb(lo, hi)

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.spec.per_channel:
            self.update(x)
        else:
            self._absorb(lo, hi)

    def _absorb(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        elif self.moving:
            # torch's float32 update: v + c * (v_batch - v)
            self.min_val = self.min_val + self.averaging * (lo - self.min_val)
            self.max_val = self.max_val + self.averaging * (hi - self.max_val)
        else:
            self.min_val, self.max_val = torch.min(lo, self.min_val), torch.max(hi, self.max_val)

    def clip_range(self) -> Range:
        if self.min_val is None:
            return _unseen()
        return self.min_val.reshape(-1).clone(), self.max_val.reshape(-1).clone()


class HistogramRangeObserver(Observer):
    """Per-tensor observers reading a ``RunningHistogram``: histogram (torch's L2 search),
    percentile, entropy and mse."""

    def __init__(self, spec: QSpec, shared: RunningHistogram | None = None) -> None:
        super().__init__(spec)
        self.shared = shared is not None
        self.hist = shared if shared is not None else RunningHistogram(int(spec.option("bins", 2048)))
        self._cache: tuple[int, Range] | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        if not self.shared:
            return super().update(x)
        _check_float(x)
        self.hist.update_once(x)  # the first observer of the group to see x counts it

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.shared:
            self.hist.update_once(x, lo, hi)
        else:
            self.hist.update(x, lo, hi)

    def _update(self, y: torch.Tensor) -> None:
        self.hist.update(y)

    def clip_range(self) -> Range:
        if self._cache is None or self._cache[0] != self.hist.updates:
            self._cache = (self.hist.updates, range_from_histogram(self.spec, self.hist))
        lo, hi = self._cache[1]
        return lo.clone(), hi.clone()

    def histogram(self) -> Range | None:
        return None if self.hist.empty else self.hist.view()


class ChannelValuesObserver(Observer):
    """Per-channel percentile / entropy / mse, exact on the stored channel values (weights
    are small and seen once)."""

    def __init__(self, spec: QSpec) -> None:
        super().__init__(spec)
        self.values: list[torch.Tensor] = []

    def _update(self, y: torch.Tensor) -> None:
        check_finite(y, *torch.aminmax(y))
        self.values.append(y.clone())

    def clip_range(self) -> Range:
        if not self.values:
            return _unseen()
        y, spec = torch.cat(self.values, dim=1), self.spec
        if spec.observer == "percentile":
            return channel_percentile_range(y, float(spec.option("percentile", 99.99)),
                                            symmetric=spec.symmetric)
        if spec.observer == "mse":
            return channel_mse_range(y, **range_kwargs(spec))
        nonneg = bool(y.min() >= 0)
        return channel_entropy_range(y, levels_for(spec, nonneg), symmetric=spec.symmetric)


def _observer_class(spec: QSpec) -> type[Observer]:
    if spec.observer in ("minmax", "moving_average"):
        return MinMaxObserver
    if spec.per_channel:
        if spec.observer == "histogram":
            raise ValueError("the histogram observer exists per tensor only (as in torch); use "
                             "minmax, moving_average, percentile, entropy or mse per channel")
        return ChannelValuesObserver
    return HistogramRangeObserver


def make_observer(spec: QSpec) -> Observer:
    """A fresh observer for ``spec``.

    Example:
        >>> obs = make_observer(QSpec("quint8", "per_tensor_affine", "minmax"))
        >>> obs.update(torch.tensor([-1.0, 3.0]))
        >>> obs.qparams()  # scale 4/255, zero point 64
        (tensor([0.0157]), tensor([64]))

    Raises:
        TypeError: if ``spec`` is not a QSpec.
        ValueError: for options the observer does not take, a symmetric quint8 spec with
            reduce_range (torch refuses it: zero point 128 lies outside 0..127), or a
            per-channel histogram.
    """
    if not isinstance(spec, QSpec):
        raise TypeError(f"make_observer takes a qcal.QSpec, got {type(spec).__name__}")
    allowed = _OPTIONS[spec.observer]
    unknown = [k for k, _ in spec.options if k not in allowed]
    if unknown:
        raise ValueError(f"observer {spec.observer!r} takes no option(s) {unknown}; "
                         f"accepted: {sorted(allowed) or 'none'}")
    if spec.symmetric and spec.dtype == "quint8" and spec.reduce_range:
        raise ValueError("symmetric quint8 with reduce_range is refused (as torch does): its "
                         "zero point 128 lies outside 0..127; use qint8 or reduce_range=False")
    return _observer_class(spec)(spec)


def make_observers(specs: list[QSpec]) -> dict[QSpec, Observer]:
    """One observer per distinct spec; the per-tensor histogram-based ones (histogram,
    percentile, entropy, mse with the same ``bins``) share one ``RunningHistogram``.

    Feed every observer the same batch (``for o in obs.values(): o.update(x)``): the shared
    histogram counts it once, so N estimators cost one histogram pass instead of N. Each
    still gives exactly what ``make_observer(spec)`` fed the same batches would.
    """
    observers: dict[QSpec, Observer] = {}
    shared: dict[int, RunningHistogram] = {}
    for spec in dict.fromkeys(specs):
        observer = make_observer(spec)
        if isinstance(observer, HistogramRangeObserver):
            bins = observer.hist.bins
            observer = HistogramRangeObserver(spec, shared.setdefault(bins, RunningHistogram(bins)))
        observers[spec] = observer
    return observers
