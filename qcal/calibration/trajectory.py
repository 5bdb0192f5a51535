"""How many calibration samples are enough: each observer's scales as samples arrive.

``scale_trajectory`` makes ONE pass over the calibration inputs with one observer per
activation spec at every observation point, and checkpoints the running statistics after
given numbers of samples: at each checkpoint every observer's current (scale, zero point,
clipping range) is read without disturbing it. ``settling_samples`` turns that into "how
many samples before the scales stop moving".
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from qcal.calibration.observed import observe_activation_specs
from qcal.schemes import OBSERVERS, QSpec, check_mode

__all__ = ["TRAJECTORY_COLUMNS", "activation_specs", "scale_trajectory", "settling_samples"]

TRAJECTORY_COLUMNS = ["observer", "layer", "samples", "scale", "zero_point", "clip_min", "clip_max"]


def activation_specs(observers: Sequence[str] = OBSERVERS) -> list[QSpec]:
    """The presets' activation spec (quint8, per tensor affine, reduce_range) with each
    observer in turn, so that only the range estimator differs."""
    return [QSpec("quint8", "per_tensor_affine", o, reduce_range=True) for o in observers]


def _checkpoints(n: int, checkpoints: Sequence[int] | None) -> list[int]:
    if checkpoints is None:  # roughly geometric: dense where scales still move
        steps, k = [], 1
        while k < n:
            steps.append(k)
            k = max(k + 1, round(k * 1.5))
        return [*steps, n]
    out = sorted({int(c) for c in checkpoints})
    if not out or out[0] < 1 or out[-1] > n:
        raise ValueError(f"checkpoints must be sample counts in 1..{n} (the inputs hold {n}), got {list(checkpoints)}")
    return out


@torch.no_grad()
def scale_trajectory(
    model: nn.Module,
    calib_inputs: torch.Tensor,
    specs: Sequence[QSpec] | None = None,
    *,
    checkpoints: Sequence[int] | None = None,
    batch_size: int = 64,
    mode: str = "auto",
) -> pd.DataFrame:
    """Each observer's activation scale at every observation point vs samples seen.

    Args:
        model: the fp32 model (never modified).
        calib_inputs: one Tensor of calibration inputs, samples along dim 0, fed in order.
        specs: activation QSpecs (one observer each); default ``activation_specs()``, the six
            observers on the presets' activation spec.
        checkpoints: sample counts after which the statistics are read (default: 1, 2, 3, 4,
            6, 9, 14, ... growing by half each time, and
            ``len(calib_inputs)``). Batches are split at
            them; batch boundaries matter to the histogram observer (as in torch), so its
            values can differ slightly from a pass with other batch sizes.
        batch_size: largest batch fed at once.
        mode: "auto" | "graph" | "modules", as for ``calibrate``.

    Returns:
        A tidy frame: observer (the spec's observer, with options when several specs
        share one), layer (the observed tensor, as in ``scales``), samples, scale,
        zero_point, clip_min, clip_max.

    Raises:
        ValueError: for empty inputs, bad checkpoints or mode, inputs that do not fit.
    """
    if not isinstance(calib_inputs, torch.Tensor) or calib_inputs.dim() == 0 or len(calib_inputs) == 0:
        raise ValueError("calib_inputs must be a non-empty Tensor with samples along dim 0")
    check_mode(mode)
    specs = list(dict.fromkeys(specs or activation_specs()))
    names = {s: s.observer for s in specs}
    if len(set(names.values())) < len(specs):
        names = {s: s.label() for s in specs}
    observed = observe_activation_specs(copy.deepcopy(model).eval(), mode, specs)
    rows, seen = [], 0
    for stop in _checkpoints(len(calib_inputs), checkpoints):
        while seen < stop:
            end = min(stop, seen + batch_size)
            observed.feed(calib_inputs[seen:end], seen == 0)
            seen = end
        for point in observed.points.values():
            for spec, obs in point.observers.items():
                scale, zp = obs.qparams()
                lo, hi = obs.clip_range()
                rows.append((names[spec], point.label, seen, float(scale[0]), int(zp[0]),
                             float(lo[0]), float(hi[0])))
    return pd.DataFrame(rows, columns=TRAJECTORY_COLUMNS)


def settling_samples(trajectory: pd.DataFrame, tolerance: float = 0.01) -> pd.DataFrame:
    """Per observer and layer, the samples after which the scale stays within ``tolerance``
    (relative) of its final value at every later checkpoint.

    "Final" is the scale after all samples, so the answer is relative to the calibration
    set given; a layer whose scale never settles before the end gets the last count.

    Returns:
        Columns observer, layer, samples (the first checkpoint from which on every scale is
        within tolerance), final_scale.
    """
    rows = []
    for (observer, layer), g in trajectory.groupby(["observer", "layer"], sort=False):
        g = g.sort_values("samples")
        final = float(g["scale"].iloc[-1])
        off = ((g["scale"] - final).abs() > tolerance * abs(final)).to_numpy()
        # the first checkpoint after the last one that is off
        last_off = int(off.nonzero()[0].max()) if off.any() else -1
        rows.append({"observer": observer, "layer": layer,
                     "samples": int(g["samples"].iloc[last_off + 1]), "final_scale": final})
    return pd.DataFrame(rows, columns=["observer", "layer", "samples", "final_scale"])
