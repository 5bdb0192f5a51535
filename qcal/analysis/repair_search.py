"""Repairs before fp32 layers: what ``recommend`` tries when no scheme meets ``max_drop`` alone.

Each repair chain, cheapest first (``CHEAP_CHAINS``: equalize, data-free; correct_bias; both),
is applied by ``apply_recipe`` under every candidate scheme and scored on the search's eval
data against the same fp32 outputs. The first chain under which some scheme meets ``max_drop``
wins, with its best scheme, and no layer falls back to fp32; when none does, the search goes on
to fp32 fallback. Cost: at most C x S calibration passes and int8 evaluations (C chains, S
schemes), on this machine (the repaired models are built here, not on an executor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qcal.recipes import Recipe
from qcal.repair.apply import apply_recipe, chain_recipe, repair_label

__all__ = ["RepairChoice", "try_repairs"]


@dataclass(frozen=True, eq=False)
class RepairChoice:
    """The repaired recipe recommend proposes: its chain, value on the eval data, why, and its model."""

    recipe: Recipe
    chain: str
    value: float
    reason: str
    model: Any  # the QuantizedModel, scored again on test_data


def _chain_names(chain: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in chain.split("+"))


def try_repairs(search: Any, model: Any, calib: list[Any], chains: Sequence[str], max_drop: float, *,
                where: str, mode: str = "auto", report: Callable[[float, str], None] | None = None
                ) -> tuple[RepairChoice | None, str, int]:
    """(the cheapest chain's best scheme meeting ``max_drop`` or None, why, calibration passes made).

    Args:
        search: recommend's search state (``schemes``, ``sweep``, ``value``, ``drop``, ``log``,
            ``steps``); each trial is logged as a step on ``where`` (all layers).
        model, calib: the float model and the calibration batches (a list: read once per trial).
        chains: repair chains such as "equalize" or "equalize+correct_bias", cheapest first.
    """
    say = report or (lambda f, m: None)
    start, best_seen, passes = search.drop(search.value), None, 0
    for i, chain in enumerate(chains):
        say(0.2 + 0.1 * i / len(chains), f"trying repair {chain}")
        trials = []
        for scheme in search.schemes:
            recipe = chain_recipe(scheme, _chain_names(chain), name="recommended")
            qm = apply_recipe(model, calib, recipe, search.sweep.backend, mode=mode)
            passes += 1
            value = search.sweep.score_model(qm)
            search.log(where, repair_label(chain_recipe(scheme, _chain_names(chain))), value, False)
            trials.append((value, len(search.steps) - 1, recipe, qm, scheme))
        value, step, recipe, qm, scheme = max(trials, key=lambda t: t[0])  # first of equals: given order
        label = repair_label(chain_recipe(scheme, _chain_names(chain)))
        if best_seen is None or value > best_seen[0]:
            best_seen = (value, label)
        if search.drop(value) <= max_drop:
            search.steps[step]["accepted"] = True
            why = (f"{search.base.name} alone drops {start:.2%}, over max_drop {max_drop:.2%}; {label} drops "
                   f"{search.drop(value):.2%} with every layer int8, so no layer falls back to fp32"
                   + (f" (cheaper repairs fell short: {', '.join(chains[:i])})" if i else ""))
            return RepairChoice(recipe, chain, value, why, qm), why, passes
    why = (f"no repair met max_drop {max_drop:.2%} (best: {best_seen[1]}, drop {search.drop(best_seen[0]):.2%}); "
           "layers fall back to fp32 instead") if best_seen else ""
    return None, why, passes
