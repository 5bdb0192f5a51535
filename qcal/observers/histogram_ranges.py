"""A spec's clipping range read off a (possibly shared) ``RunningHistogram``.

One histogram of an activation can serve every per-tensor histogram-based estimator:
torch's L2 search ("histogram"), "percentile", "entropy" and "mse" (and "minmax": its ends).
"""

from __future__ import annotations

from typing import Any

import torch

from qcal.observers.clipping import entropy_threshold, mse_range, percentile_range
from qcal.observers.histogram import RunningHistogram
from qcal.observers.l2search import l2_range_search
from qcal.qparams import qparams_from_range
from qcal.schemes import QSpec

__all__ = ["levels_for", "qparams_from_histogram", "range_from_histogram", "range_kwargs"]

Range = tuple[torch.Tensor, torch.Tensor]


def range_kwargs(spec: QSpec) -> dict[str, Any]:
    """The spec's code range as the keyword arguments of ``qparams_from_range`` (dtype,
    symmetric, reduce_range, quant_min, quant_max), which the MSE estimators take too."""
    return {"dtype": spec.dtype, "symmetric": spec.symmetric, "reduce_range": spec.reduce_range,
            "quant_min": spec.quant_min, "quant_max": spec.quant_max}


def levels_for(spec: QSpec, nonnegative: bool) -> int:
    """Quantized levels available to |x|: all of them for non-negative affine data, else half."""
    qmin, qmax = spec.code_range()
    n = qmax - qmin + 1
    return n if nonnegative and not spec.symmetric else n // 2


def _l2_search(spec: QSpec, hist: RunningHistogram) -> Range:
    return l2_range_search(hist.counts, hist.min_val, hist.max_val, dst_nbins=256)


def _percentile(spec: QSpec, hist: RunningHistogram) -> tuple[float, float]:
    p = float(spec.option("percentile", 99.99))
    return percentile_range(hist.edges(), hist.counts, p, symmetric=spec.symmetric)


def _entropy(spec: QSpec, hist: RunningHistogram) -> tuple[float, float]:
    lo, hi = hist.min_val.item(), hist.max_val.item()
    t = entropy_threshold(hist.edges(), hist.counts, levels_for(spec, lo >= 0), bins=hist.bins)
    return (-t, t) if spec.symmetric else (max(lo, -t), min(hi, t))


def _mse(spec: QSpec, hist: RunningHistogram) -> tuple[float, float]:
    return mse_range(hist.edges(), hist.counts, **range_kwargs(spec))


def _minmax(spec: QSpec, hist: RunningHistogram) -> Range:
    return hist.min_val, hist.max_val


_ESTIMATORS = {"histogram": _l2_search, "percentile": _percentile, "entropy": _entropy,
               "mse": _mse, "minmax": _minmax}


@torch.no_grad()
def range_from_histogram(spec: QSpec, hist: RunningHistogram) -> Range:
    """The clipping range ``spec``'s estimator picks from a (possibly shared) histogram.

    Returns:
        (lo, hi): float32 (1,) tensors; (inf, -inf) if the histogram saw nothing.
    """
    if hist.empty:
        return torch.tensor([float("inf")]), torch.tensor([float("-inf")])  # torch's unseen state
    if hist.min_val == hist.max_val:  # one value seen: nothing to clip
        return hist.min_val.reshape(1), hist.max_val.reshape(1)
    if spec.observer not in _ESTIMATORS:
        raise ValueError(f"observer {spec.observer!r} does not read a histogram; expected one "
                         f"of: {', '.join(_ESTIMATORS)}")
    lo, hi = _ESTIMATORS[spec.observer](spec, hist)
    return (torch.as_tensor(lo, dtype=torch.float32).reshape(1),
            torch.as_tensor(hi, dtype=torch.float32).reshape(1))


@torch.no_grad()
def qparams_from_histogram(spec: QSpec, hist: RunningHistogram) -> Range:
    """(scale, zero_point) of ``spec`` from a shared histogram (see ``range_from_histogram``)."""
    return qparams_from_range(*range_from_histogram(spec, hist), **range_kwargs(spec), eps=spec.option("eps"))
