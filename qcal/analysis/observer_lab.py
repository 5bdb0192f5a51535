"""The observer lab: one activation, every observer's range, and the error each range gives.

``observer_lab`` makes one calibration pass with one observer per activation spec, keeps
the chosen tensor's values, and quantizes them with each observer's qparams exactly as
torch does (``qcal.quantize``). The error is measured on those values and split in two
disjoint parts: clipping error (values outside the representable range) and rounding
error (values inside). Their sum is the fake-quantization MSE.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from qcal.calibration.observed import Observed, observe_activation_specs
from qcal.calibration.trajectory import activation_specs
from qcal.qparams import dequantize, qrange, quantize
from qcal.schemes import QSpec

__all__ = ["LAB_COLUMNS", "ObserverLab", "observer_lab"]

LAB_COLUMNS = ["observer", "scale", "zero_point", "clip_min", "clip_max", "range_min",
               "range_max", "clipped_share", "clip_mse", "round_mse", "mse"]


@dataclass(frozen=True)
class ObserverLab:
    """The lab's result for one observed tensor.

    Attributes:
        layer: the observed tensor's label (as in the ``scales`` frame).
        histogram: bin_left, bin_right, count of every value seen.
        ranges: one row per observer: scale, zero_point, clip_min/clip_max (the range the
            observer chose), range_min/range_max (what the integer codes can represent:
            (qmin - zp) * scale .. (qmax - zp) * scale), clipped_share, clip_mse,
            round_mse and mse (= clip_mse + round_mse), all measured on the values.
        samples: how many calibration samples were fed.
    """

    layer: str
    histogram: pd.DataFrame
    ranges: pd.DataFrame
    samples: int


def _errors(x: torch.Tensor, spec: QSpec, scale: torch.Tensor, zp: torch.Tensor) -> dict[str, float]:
    qmin, qmax = qrange(spec.dtype)  # the codes span the full dtype; reduce_range only shapes the scale
    s, z = float(scale[0]), int(zp[0])
    lo, hi = (qmin - z) * s, (qmax - z) * s
    deq = dequantize(quantize(x, scale, zp, spec.dtype), scale, zp).double()
    err2 = (deq - x.double()) ** 2
    outside = (x < lo) | (x > hi)
    n = max(x.numel(), 1)
    clip, rnd = float(err2[outside].sum()) / n, float(err2[~outside].sum()) / n
    return {"range_min": lo, "range_max": hi, "clipped_share": float(outside.sum()) / n,
            "clip_mse": clip, "round_mse": rnd, "mse": clip + rnd}


@torch.no_grad()
def observer_lab(
    model: nn.Module,
    calib_inputs: torch.Tensor,
    layer: str,
    specs: Sequence[QSpec] | None = None,
    *,
    bins: int = 200,
    batch_size: int = 64,
    mode: str = "auto",
) -> ObserverLab:
    """Every observer's clipping range on one activation, and the error each range gives.

    Args:
        model: the fp32 model (never modified).
        calib_inputs: calibration inputs, samples along dim 0.
        layer: the observed tensor's label, as the ``scales`` frame names activations.
        specs: activation QSpecs; default the six observers on the presets' activation spec.
        bins: histogram bins over [min, max] of the values.
        batch_size: calibration batch size (the histogram observer depends on it, as in torch).
        mode: "auto" | "graph" | "modules", as for ``calibrate``.

    Raises:
        ValueError: for a label that is not an observed tensor (the message lists them).
    """
    specs = list(dict.fromkeys(specs or activation_specs()))
    observed = observe_activation_specs(copy.deepcopy(model).eval(), mode, specs)
    kept: list[tuple[str, torch.Tensor]] = []
    on_value = observed._on_value

    def keep(name: str, value: torch.Tensor) -> None:  # the chosen tensor's values, by mode
        if value.is_floating_point() and any(p.label == layer for p in observed.feeds.get(name, ())):
            kept.append((observed.mode, value.detach().float().reshape(-1).clone()))
        on_value(name, value)

    observed._on_value = keep
    for i, start in enumerate(range(0, len(calib_inputs), batch_size)):
        observed.feed(calib_inputs[start:start + batch_size], i == 0)
    point = _find(observed, layer)
    # a fallback to module swap re-feeds the first batch: keep the final mode's values only
    x = torch.cat([v for mode, v in kept if mode == observed.mode])
    counts, edges = torch.histogram(x.double(), bins=bins)
    hist = pd.DataFrame({"bin_left": edges[:-1].numpy(), "bin_right": edges[1:].numpy(),
                         "count": counts.numpy()})
    rows = []
    for spec, obs in point.observers.items():
        scale, zp = obs.qparams()
        lo, hi = obs.clip_range()
        rows.append({"observer": spec.observer if len({s.observer for s in specs}) == len(specs)
                     else spec.label(), "scale": float(scale[0]), "zero_point": int(zp[0]),
                     "clip_min": float(lo[0]), "clip_max": float(hi[0]), **_errors(x, spec, scale, zp)})
    return ObserverLab(layer, hist, pd.DataFrame(rows, columns=LAB_COLUMNS), len(calib_inputs))


def _find(observed: Observed, layer: str):
    points = list(observed.points.values())
    labels = [p.label for p in points]
    if layer not in labels:
        raise ValueError(f"no observed activation {layer!r}; observed: {', '.join(labels)}")
    return points[labels.index(layer)]
