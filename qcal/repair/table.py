"""Repairs side by side: one scheme, the plain calibration and each repair (or chain of them).

``repair_table`` is what ``qcal repair`` prints: per repair, the float model it quantizes
(its accuracy, how far its output moved), the int8 accuracy or top-1 agreement with fp32,
and the settings that reproduce it (names, parameters, seed: applying them again recomputes
the same numbers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from qcal.batching import call_model
from qcal.recipes import Recipe
from qcal.repair.apply import apply_recipe, with_repairs

__all__ = ["REPAIRS", "repair_table"]

#: the chains ``repair_table`` knows, in the order it prints them
REPAIRS: tuple[str, ...] = ("none", "equalize", "correct_bias", "equalize+correct_bias", "adaround",
                            "equalize+adaround")
Progress = Callable[[float, str], None]


def _score(model: Any, x: torch.Tensor, y: torch.Tensor | None, ref: torch.Tensor) -> float:
    with torch.no_grad():
        top = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)]).argmax(1)
    return float((top == (ref.argmax(1) if y is None else y)).float().mean())


def _recipe(chain: str, scheme: Any, opts: dict) -> Recipe:
    """The chain as a recipe recording its repairs' settings."""
    settings = {"equalize": {"relu6": opts["relu6"]}, "correct_bias": {"method": "empirical"},
                "adaround": {"iterations": opts["iterations"], "samples": opts["samples"], "seed": opts["seed"]}}
    return with_repairs(scheme, [(step, settings[step]) for step in chain.split("+") if step != "none"])


def _settings(recipe: Recipe) -> str:
    return " + ".join(f"{n}({', '.join(f'{k}={v}' for k, v in p)})" for n, p in recipe.repairs) or "none"


@torch.no_grad()
def _moved(qm: Any, model: nn.Module, calib: list[Any]) -> float:
    """Largest |output change| of the float model ``qm`` quantizes against ``model``, on calib."""
    return max(float((call_model(qm.float_model, b) - call_model(model, b)).abs().max()) for b in calib)


def repair_table(model: nn.Module, calib: list[Any], x: torch.Tensor, y: torch.Tensor | None, scheme: Any,
                 backend: str = "fbgemm", repairs: Sequence[str] = REPAIRS, *, relu6: str = "bounded",
                 iterations: int = 1000, samples: int = 256, seed: int = 0,
                 progress: Progress | None = None) -> pd.DataFrame:
    """One row per repair chain under one scheme.

    Args:
        model: the float model; calib: calibration batches (also the repairs' data);
        x, y: evaluation inputs and labels (None: score top-1 agreement with fp32).
        scheme, backend: as for ``qcal.calibrate``.
        repairs: names from ``REPAIRS``.
        relu6, iterations, samples, seed: equalize's and adaround's settings.

    Returns:
        columns repair, settings (the recipe's repairs: ``qcal.repair.apply_recipe`` of
        ``with_repairs(scheme, ...)`` rebuilds the row), float_metric (of the float model
        quantized: equalized, bias-corrected), float_change (its largest output change
        against ``model`` on calib), int8_metric, drop (vs the original fp32), seconds;
        metric is accuracy, or agreement when ``y`` is None.
    """
    bad = [r for r in repairs if r not in REPAIRS]
    if bad:
        raise ValueError(f"unknown repair {bad[0]!r}; expected some of: {', '.join(REPAIRS)}")
    report = progress or (lambda f, m: None)
    with torch.no_grad():
        ref = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])
    fp32 = _score(model, x, y, ref)
    opts, rows = {"relu6": relu6, "iterations": iterations, "samples": samples, "seed": seed}, []
    for i, chain in enumerate(repairs):
        report(i / len(repairs), f"repair: {chain}")
        start = time.perf_counter()
        recipe = _recipe(chain, scheme, opts)
        qm = apply_recipe(model, calib, recipe, backend)
        metric = _score(qm, x, y, ref)
        rows.append({"repair": chain, "settings": _settings(recipe), "float_metric": _score(qm.float_model, x, y, ref),
                     "float_change": _moved(qm, model, calib), "int8_metric": metric, "drop": fp32 - metric,
                     "seconds": time.perf_counter() - start})
    report(1.0, "repair: done")
    return pd.DataFrame(rows)
