"""The Sensitivity page's cached calls into qcal (not a page: st.navigation lists only page files).

Every cache is keyed on hashable identities (model name, scheme names, backend, eval size,
a recipe's JSON text); progress callbacks are ``_``-prefixed so they are not hashed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from qcal.analysis import zoo_sensitivity as zs
from qcal.analysis.fallback import sensitivity_order
from qcal.export.qconfig import qconfig_mapping_code
from qcal.io.recipe_files import recipe_text
from qcal.recipes import Recipe

Progress = Callable[[float, str], None]


@st.cache_resource(show_spinner=False)
def _results() -> dict[tuple, pd.DataFrame]:
    """Scans and curves computed in this server process, shared by every session."""
    return {}


def scan(model: str, schemes: tuple[str, ...], backend: str, eval_samples: int, progress: Progress) -> pd.DataFrame:
    """qcal's sensitivity for every scheme (one frame with a ``scheme`` column), computed once."""
    key = ("scan", model, schemes, backend, eval_samples)
    if key not in _results():
        _results()[key] = zs.zoo_sensitivity(model, schemes, backend, eval_samples=eval_samples, progress=progress)
    return _results()[key]


def scanned(model: str, schemes: tuple[str, ...], backend: str, eval_samples: int) -> pd.DataFrame | None:
    """The scan's frame if it was computed in this process, else None (no computation)."""
    return _results().get(("scan", model, schemes, backend, eval_samples))


def curve(model: str, scheme: str, backend: str, eval_samples: int, order: tuple[str, ...],
          progress: Progress) -> pd.DataFrame:
    """qcal's fp32-fallback curve in ``order``, computed once."""
    key = ("curve", model, scheme, backend, eval_samples, order)
    if key not in _results():
        _results()[key] = zs.zoo_fallback_curve(model, scheme, order, backend, eval_samples=eval_samples,
                                                progress=progress)
    return _results()[key]


def heatmap(rows: pd.DataFrame) -> pd.DataFrame:
    """Layers x schemes: the drop when only that layer is int8."""
    return zs.heatmap_frame(rows)


def order_of(rows: pd.DataFrame, scheme: str) -> tuple[str, ...]:
    """Layers most sensitive first under ``scheme``."""
    return tuple(sensitivity_order(rows[rows["scheme"] == scheme]))


def recipe_json(default: str | None, layers: dict[str, str | None]) -> str:
    """A recipe's identity: its JSON text (hashable, the cache key)."""
    return json.dumps(Recipe(default, layers, name="dashboard recipe").to_data(), sort_keys=True)


@st.cache_resource(show_spinner="Evaluating the recipe…", max_entries=32)
def recipe_run(model: str, recipe: str, backend: str, eval_samples: int) -> Any:
    """The recipe's Comparison on the model's data (accuracy and per-layer SQNR)."""
    return zs.zoo_recipe_run(model, Recipe.from_data(json.loads(recipe)), backend, eval_samples=eval_samples)


def recipe_layers(comparison: Any, recipe: str, layers: list[str]) -> pd.DataFrame:
    """Per layer: the recipe's choice and its SQNR."""
    return zs.recipe_layer_table(comparison, Recipe.from_data(json.loads(recipe)), layers)


def save(comparison: Any) -> str:
    """Save the recipe's comparison as a run; returns its id."""
    return zs.save_recipe_run(comparison)


def files(recipe: str, backend: str) -> tuple[str, str]:
    """(the TOML recipe file, torch QConfigMapping code or why torch cannot express it)."""
    parsed = Recipe.from_data(json.loads(recipe))
    try:
        code = qconfig_mapping_code(parsed, backend)
    except (ValueError, TypeError) as err:
        code = f"# torch cannot express this recipe: {err}\n"
    return recipe_text(parsed, "toml"), code
