"""``qcal.repair.apply_recipe``: a recipe's repairs recomputed from its recorded settings.

A recipe records which repairs to apply and their settings (``Recipe.repairs``), never the
learned values; applying it runs them again, in the one order that composes: ``equalize``
(a new float model), then ``adaround`` (learned codes) or plain calibration, then
``correct_bias``. The same recipe, model and data give the same QuantizedModel.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from qcal.calibration.calibrate import calibrate
from qcal.calibration.model import QuantizedModel
from qcal.recipes import Recipe, resolve_scheme_or_recipe
from qcal.repair.adaround import adaround
from qcal.repair.bias import correct_bias
from qcal.repair.equalize import equalize
from qcal.repair.stats import as_batches

__all__ = ["apply_recipe", "with_repairs"]


def with_repairs(scheme: Any, repairs: Any) -> Recipe:
    """A scheme (or recipe) with repairs recorded, e.g. ``with_repairs("per_tensor_symmetric",
    [("equalize", {"relu6": "bounded"}), "correct_bias"])``."""
    value = resolve_scheme_or_recipe(scheme)
    if isinstance(value, Recipe):
        return dataclasses.replace(value, repairs=repairs)
    return Recipe(value, name=value.name, repairs=repairs)


def apply_recipe(model: nn.Module, calib_data: Any, recipe: Recipe, backend: str = "fbgemm", *,
                 mode: str = "auto") -> QuantizedModel:
    """The QuantizedModel of a recipe with its repairs applied (see the module doc).

    The result's ``recipe`` is the recipe without repairs (what was calibrated); the float
    model it quantizes is ``qm.float_model`` (equalized, bias-corrected where asked).
    """
    data = as_batches(calib_data)
    settings = {name: dict(params) for name, params in recipe.repairs}
    plain = dataclasses.replace(recipe, repairs=())
    eq = equalize(model, data, **settings["equalize"]) if "equalize" in settings else None
    base = eq.model if eq is not None else model
    if "adaround" in settings:
        qm = adaround(base, data, plain, backend, mode=mode, **settings["adaround"])
    else:
        qm = calibrate(base, data, plain, backend, mode=mode)
    if "correct_bias" in settings:
        analytic = settings["correct_bias"].get("method", "empirical") == "analytic"
        stats = eq.preactivation_stats if eq is not None else None
        qm = correct_bias(qm, None if analytic else data, stats=stats if analytic else None)
    return qm
