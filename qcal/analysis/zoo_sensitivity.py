"""Sensitivity, the fallback curve and recipe runs on a zoo or registered model (the dashboard's
Sensitivity page): the model's own calibration split and the first ``eval_samples`` of its
held-out split, so a page stays responsive on a small machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from qcal.analysis.fallback import fallback_curve
from qcal.analysis.sensitivity import sensitivity
from qcal.recipes import Recipe
from qcal.store.store import Store
from qcal.store.zoo_runs import compare_zoo
from qcal.zoo import datasets
from qcal.zoo.registry import load_named

__all__ = [
    "heatmap_frame",
    "recipe_layer_table",
    "save_recipe_run",
    "zoo_data",
    "zoo_fallback_curve",
    "zoo_recipe_run",
    "zoo_sensitivity",
]

Progress = Callable[[float, str], None]


def zoo_data(model_name: str, eval_samples: int | None, calib_samples: int | None = None,
             batch_size: int = 128) -> tuple[Any, list, list]:
    """(fp32 model, calibration batches, eval batches) of a zoo or registered model."""
    named = load_named(model_name)
    calib, x, y = named.calib[:calib_samples], named.eval_x, named.eval_y
    if eval_samples is not None:
        x, y = x[:eval_samples], None if y is None else y[:eval_samples]
    return (named.model, datasets.calib_batches(calib, batch_size=batch_size),
            datasets.batches(x, y, batch_size=batch_size))


def zoo_sensitivity(model_name: str, schemes: Sequence[str], backend: str = "fbgemm", *,
                    eval_samples: int | None = 200, calib_samples: int | None = None,
                    progress: Progress | None = None) -> pd.DataFrame:
    """``sensitivity`` for every scheme, one frame with a ``scheme`` column (one calibration
    pass per scheme; cost 2 x layers evaluations per scheme)."""
    report = progress or (lambda fraction, message: None)
    model, calib, ev = zoo_data(model_name, eval_samples, calib_samples)
    frames = []
    for i, scheme in enumerate(schemes):
        def step(f: float, m: str, i: int = i, scheme: str = scheme) -> None:
            report((i + f) / len(schemes), f"{scheme}: {m}")
        frames.append(sensitivity(model, calib, ev, scheme, backend, progress=step).assign(scheme=scheme))
    report(1.0, "done")
    return pd.concat(frames, ignore_index=True)


def heatmap_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Layers x schemes: the drop (a fraction) when only that layer is int8, layers in model order."""
    only = rows[rows["mode"] == "only"]
    table = only.pivot(index="layer", columns="scheme", values="drop")
    return table.reindex(index=list(dict.fromkeys(only["layer"])), columns=list(dict.fromkeys(only["scheme"])))


def zoo_fallback_curve(model_name: str, scheme: str, order: Sequence[str], backend: str = "fbgemm", *,
                       eval_samples: int | None = 200, calib_samples: int | None = None,
                       progress: Progress | None = None) -> pd.DataFrame:
    """``fallback_curve`` on a zoo or registered model's data."""
    model, calib, ev = zoo_data(model_name, eval_samples, calib_samples)
    return fallback_curve(model, calib, ev, scheme, order, backend, progress=progress)


def zoo_recipe_run(model_name: str, recipe: Recipe, backend: str = "fbgemm", *,
                   eval_samples: int | None = 200, calib_samples: int | None = None) -> Any:
    """One recipe compared on a zoo model (a Comparison: accuracy and per-layer errors)."""
    return compare_zoo(model_name, [recipe], [backend], eval_samples=eval_samples, calib_samples=calib_samples)


def save_recipe_run(comparison: Any, store: Store | None = None) -> str:
    """Save a recipe's Comparison as a run; returns its id."""
    return (store or Store()).save_comparison(comparison)


def recipe_layer_table(comparison: Any, recipe: Recipe, layers: Sequence[str]) -> pd.DataFrame:
    """Per layer of ``layers``: the recipe's choice (scheme name or fp32) and its output SQNR in
    dB (worst over the run's backends; NaN for an fp32 layer, which is not quantized)."""
    frame = comparison.layers
    sqnr = frame.groupby("layer", sort=False)["sqnr_db"].min() if not frame.empty else pd.Series(dtype=float)
    choice = [getattr(recipe.scheme_for(n), "name", "fp32") for n in layers]
    return pd.DataFrame({"layer": list(layers), "choice": choice,
                         "sqnr_db": [float(sqnr.get(n, float("nan"))) if c != "fp32" else float("nan")
                                     for n, c in zip(layers, choice, strict=True)]})
