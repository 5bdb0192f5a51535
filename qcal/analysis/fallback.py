"""The fp32-fallback curve: layers returned to fp32 one at a time, most sensitive first.

Step 0 is the scheme on every layer; step k keeps the k most sensitive layers in fp32. All
steps come from one calibration pass and one fp32 evaluation (``Sweep``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch

from qcal.analysis.sweep import Sweep
from qcal.recipes import Recipe
from qcal.schemes import Scheme, resolve_scheme

__all__ = ["FALLBACK_COLUMNS", "fallback_curve", "fallback_recipes", "sensitivity_order"]

FALLBACK_COLUMNS = ["step", "layer", "fp32_layers", "metric", "value", "fp32_value", "drop", "recipe"]
Progress = Callable[[float, str], None]


def sensitivity_order(rows: pd.DataFrame) -> list[str]:
    """Layers from a ``sensitivity`` frame, most sensitive first.

    Ranked by the drop with only that layer int8; ties go to the layer whose return to fp32
    (the "all_but" row) recovers most.
    """
    only = rows[rows["mode"] == "only"].set_index("layer")["drop"]
    all_but = rows[rows["mode"] == "all_but"].set_index("layer")["value"]
    ranked = pd.DataFrame({"drop": only, "recovered": all_but.reindex(only.index)})
    ranked = ranked.sort_values(["drop", "recovered"], ascending=False, kind="stable")
    return [str(n) for n in ranked.index]


def fallback_recipes(order: Sequence[str], scheme: Scheme) -> list[Recipe]:
    """Recipe k keeps ``order[:k]`` in fp32 and quantizes the rest with ``scheme``."""
    return [Recipe(scheme, {layer: None for layer in order[:k]}, name=f"{scheme.name} with {k} fp32")
            for k in range(len(order) + 1)]


@torch.no_grad()
def fallback_curve(
    model: torch.nn.Module,
    calib_data: Any,
    eval_data: Any,
    scheme: str | Scheme,
    order: Sequence[str],
    backend: str = "fbgemm",
    *,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """The metric as layers return to fp32 one at a time, in ``order``.

    Cost: one calibration pass, one fp32 evaluation, len(order) + 1 int8 evaluations.

    Args:
        model, calib_data, eval_data, backend: as for ``sensitivity``.
        scheme: a preset name or Scheme for the int8 layers.
        order: layer names, first returned to fp32 first (``sensitivity_order`` of a
            sensitivity frame gives the most sensitive first).
        progress: ``progress(fraction, message)``.

    Returns:
        One row per step: step (fp32 layers so far), layer (the one returned at this step;
        "" at step 0), fp32_layers (comma-separated), metric, value, fp32_value, drop, recipe.

    Raises:
        ValueError: ``order`` names a layer the model does not quantize, or names one twice.
    """
    scheme = resolve_scheme(scheme)
    if len(set(order)) != len(order):
        raise ValueError(f"order names a layer twice: {list(order)}")
    report = progress or (lambda fraction, message: None)
    recipes = fallback_recipes(list(order), scheme)
    sweep = Sweep(model, calib_data, eval_data, recipes[:1], backend=backend,
                  progress=lambda f, m: report(0.3 * f, m))
    unknown = [n for n in order if n not in sweep.layers]
    if unknown:
        raise ValueError(f"order names {unknown}, not quantizable layers; the layers are {sweep.layers}")
    scores = sweep.scores(recipes, progress=lambda f, m: report(0.3 + 0.7 * f, m))
    rows = [{"step": k, "layer": order[k - 1] if k else "", "fp32_layers": ", ".join(order[:k]),
             "metric": sweep.metric, "value": s.value, "fp32_value": sweep.fp32_value,
             "drop": sweep.fp32_value - s.value, "recipe": r}
            for k, (r, s) in enumerate(zip(recipes, scores, strict=True))]
    report(1.0, "done")
    return pd.DataFrame(rows, columns=FALLBACK_COLUMNS)
