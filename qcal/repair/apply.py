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
from qcal.recipes import REPAIR_PARAMETERS, Recipe, resolve_scheme_or_recipe
from qcal.repair.adaround import adaround
from qcal.repair.bias import correct_bias
from qcal.repair.equalize import equalize
from qcal.repair.stats import as_batches

__all__ = ["CHAIN_SETTINGS", "CHEAP_CHAINS", "REPAIR_ORDER", "apply_recipe", "chain_recipe", "repair_label",
           "settings_text", "split_repairs", "with_repairs"]

#: the order ``apply_recipe`` applies repairs in (and labels name them in)
REPAIR_ORDER: tuple[str, ...] = ("equalize", "adaround", "correct_bias")
#: the settings a chain spelled by name records (``"per_tensor_symmetric + equalize"``)
CHAIN_SETTINGS: dict[str, dict[str, Any]] = {"equalize": {"relu6": "bounded"}, "correct_bias": {"method": "empirical"},
                                             "adaround": {"seed": 0}}
#: the data-free or low-cost chains compare's pages offer and recommend tries, cheapest first
CHEAP_CHAINS: tuple[str, ...] = ("equalize", "correct_bias", "equalize+correct_bias")


def with_repairs(scheme: Any, repairs: Any) -> Recipe:
    """A scheme (or recipe) with repairs recorded, e.g. ``with_repairs("per_tensor_symmetric",
    [("equalize", {"relu6": "bounded"}), "correct_bias"])``."""
    value = resolve_scheme_or_recipe(scheme)
    if isinstance(value, Recipe):
        return dataclasses.replace(value, repairs=repairs)
    return Recipe(value, name=value.name, repairs=repairs)


def repair_label(recipe: Any) -> str:
    """The name a scheme with repairs shows in frames: ``"per_tensor_symmetric + equalize"``.

    A recipe without repairs (or a Scheme) keeps its name; one with repairs is named after its
    scheme (or its own name, when given) and its repairs in the order they are applied.
    """
    if not isinstance(recipe, Recipe) or not recipe.repairs:
        return recipe.name
    names = [n for n in REPAIR_ORDER if n in dict(recipe.repairs)]
    base = recipe.name
    if base == Recipe(recipe.default, recipe.layers, repairs=recipe.repairs).name:  # no name was given
        base = recipe.default.name if not recipe.layers and recipe.default is not None else (
            Recipe(recipe.default, recipe.layers).name)
    suffix = " + ".join(names)
    return base if base.endswith(f" + {suffix}") else f"{base} + {suffix}"


def settings_text(repairs: Any) -> str:
    """Repairs as one line, ``"equalize(relu6=bounded) + correct_bias(method=empirical)"``, from a
    recipe's data (``Recipe.to_data()["repairs"]``: a saved run's ``meta["repairs"][label]``)."""
    return " + ".join(r["name"] + "(" + ", ".join(f"{k}={v}" for k, v in r.items() if k != "name") + ")"
                      for r in repairs) or "none"


def split_repairs(text: str) -> tuple[str, tuple[str, ...]]:
    """``"per_tensor_symmetric + equalize + correct_bias"`` -> ("per_tensor_symmetric",
    ("equalize", "correct_bias")); spaces around ``+`` are optional, a text without trailing
    repair names comes back whole with ()."""
    parts = text.split("+")
    names: list[str] = []
    while len(parts) > 1 and parts[-1].strip() in REPAIR_PARAMETERS:
        names.insert(0, parts.pop().strip())
    return "+".join(parts).strip(), tuple(names)


def chain_recipe(scheme: Any, names: Any, *, name: str = "") -> Recipe:
    """A scheme with the repairs ``names`` (e.g. ("equalize", "correct_bias")), each with its
    ``CHAIN_SETTINGS``; ``name`` names the recipe (default: the scheme's)."""
    recipe = with_repairs(scheme, [(n, CHAIN_SETTINGS[n]) for n in names])
    return dataclasses.replace(recipe, name=name) if name else recipe


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
