"""Layer sensitivity: which layer costs the accuracy, measured one layer at a time.

For every quantizable layer two recipes are evaluated: "only" (that layer int8 under the
scheme, every other layer fp32) and "all_but" (that layer fp32, every other layer int8).
Both come from one calibration pass and one fp32 evaluation; each row carries the Recipe
that reproduces it with ``qcal.calibrate`` / ``qcal.compare``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict
from typing import Any

import pandas as pd
import torch

from qcal.analysis.sweep import Sweep
from qcal.recipes import Recipe
from qcal.schemes import Scheme, resolve_scheme

__all__ = ["SENSITIVITY_COLUMNS", "sensitivity", "sensitivity_recipes"]

SENSITIVITY_COLUMNS = ["layer", "kind", "mode", "metric", "value", "fp32_value", "drop", "sqnr_db", "recipe"]
Progress = Callable[[float, str], None]


def sensitivity_recipes(layers: list[str], scheme: Scheme) -> dict[tuple[str, str], Recipe]:
    """{(layer, mode): Recipe} for the "only" and "all_but" rows of every layer."""
    out = {}
    for layer in layers:
        out[(layer, "only")] = Recipe(None, {layer: scheme}, name=f"only {layer} ({scheme.name})")
        out[(layer, "all_but")] = Recipe(scheme, {layer: None}, name=f"all but {layer} ({scheme.name})")
    return out


def _kinds(sweep: Sweep) -> dict[str, str]:
    modules = dict(sweep.calibrated.float_model.named_modules())
    return {n: "conv" if isinstance(modules.get(n), torch.nn.Conv2d) else "linear" for n in sweep.layers}


@torch.no_grad()
def sensitivity(
    model: torch.nn.Module,
    calib_data: Any,
    eval_data: Any,
    scheme: str | Scheme,
    backend: str = "fbgemm",
    *,
    executor: Executor | None = None,
    progress: Progress | None = None,
    mode: str = "auto",
) -> pd.DataFrame:
    """Per layer: the metric with only that layer int8, and with only that layer fp32.

    Cost: one calibration pass, one fp32 evaluation, and 2 x (number of layers) int8
    evaluations on ``eval_data`` (the "only" ones also trace 64 samples for the layer's SQNR).

    Args:
        model: the fp32 model (never modified).
        calib_data: calibration batches, as for ``calibrate``.
        eval_data: (inputs, labels) batches; labels may be None (agreement with fp32 top-1).
        scheme: a preset name or Scheme.
        backend: the engine flavour.
        executor: any ``concurrent.futures.Executor``; the evaluations run on it (on Dask:
            the calibrated pass and eval data sent to each worker once, one small job per
            evaluation), with results identical to the in-process run.
        progress: ``progress(fraction, message)``.
        mode: "auto" | "graph" | "modules", as for ``calibrate``.

    Returns:
        One row per (layer, mode): layer, kind, mode ("only" | "all_but"), metric, value,
        fp32_value, drop (fp32_value - value, a fraction), sqnr_db (the layer's own output
        SQNR when it alone is int8, on the first 64 eval samples), recipe. On a Dask
        executor, ``attrs["dask"]`` records the bytes sent (``qcal.analysis.cluster.SweepStats``).

    Example::

        rows = qcal.sensitivity(model, calib, eval_batches, "per_tensor_affine")
        rows[rows["mode"] == "only"].sort_values("drop", ascending=False).head()
    """
    scheme = resolve_scheme(scheme)
    report = progress or (lambda fraction, message: None)
    with Sweep(model, calib_data, eval_data, lambda layers: list(sensitivity_recipes(layers, scheme).values()),
               backend=backend, executor=executor, mode=mode, progress=lambda f, m: report(0.3 * f, m),
               bases=(Recipe(scheme, name=scheme.name), Recipe(None, name="fp32"))) as sweep:
        recipes = sensitivity_recipes(sweep.layers, scheme)
        scores = sweep.scores(list(recipes.values()), [layer if mode == "only" else None for layer, mode in recipes],
                              progress=lambda f, m: report(0.3 + 0.7 * f, m))
    isolated = {layer: s.sqnr_db for (layer, mode), s in zip(recipes, scores, strict=True) if mode == "only"}
    kinds = _kinds(sweep)
    rows = [{"layer": layer, "kind": kinds[layer], "mode": mode, "metric": sweep.metric, "value": s.value,
             "fp32_value": sweep.fp32_value, "drop": sweep.fp32_value - s.value, "sqnr_db": isolated[layer],
             "recipe": recipe}
            for ((layer, mode), recipe), s in zip(recipes.items(), scores, strict=True)]
    report(1.0, "done")
    frame = pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)
    if sweep.stats.workers:
        frame.attrs["dask"] = asdict(sweep.stats)
    return frame
