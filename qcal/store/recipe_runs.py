"""Saved recipes beside the presets: the recipe columns of stored runs of one model.

A run holds a recipe when its metadata has ``recipes`` (``compare`` writes one entry per
Recipe column, repaired ones included: ``repairs`` names them). Recipe runs may use a different eval subset than the presets' run: the
``data_description`` column says which, so numbers are compared knowingly.
"""

from __future__ import annotations

import pandas as pd

from qcal.store.store import Store

__all__ = ["RECIPE_ROW_COLUMNS", "beside_presets", "saved_recipe_rows"]

RECIPE_ROW_COLUMNS = ["kind", "scheme", "backend", "metric", "value", "fp32_value", "drop", "fp32_layers",
                      "repairs", "run_id", "data_description"]


def saved_recipe_rows(store: Store, model: str) -> pd.DataFrame:
    """One row per (recipe, backend) in the store's runs of ``model``, newest run first."""
    rows = []
    runs = store.list()
    for run_id in runs.loc[runs["model"] == model, "id"]:
        run = store.load(run_id)
        recipes = run.meta.get("recipes") or {}
        summary = run.frames.get("summary", pd.DataFrame(columns=["scheme"]))
        for _, row in summary[summary["scheme"].isin(list(recipes))].iterrows():
            layers = recipes[row["scheme"]].get("layers", {})
            rows.append({**row[["scheme", "backend", "metric", "value", "fp32_value", "drop"]].to_dict(),
                         "kind": "recipe", "run_id": run_id,
                         "fp32_layers": ", ".join(n for n, v in layers.items() if v == "fp32"),
                         "repairs": " + ".join(r["name"] for r in recipes[row["scheme"]].get("repairs", [])),
                         "data_description": run.meta.get("data_description", "")})
    return pd.DataFrame(rows, columns=RECIPE_ROW_COLUMNS)


def beside_presets(summary: pd.DataFrame, run_id: str, data_description: str,
                   recipes: pd.DataFrame) -> pd.DataFrame:
    """The run's summary rows (kind "preset") followed by the saved recipe rows."""
    presets = summary.assign(kind="preset", fp32_layers="", repairs="", run_id=run_id,
                             data_description=data_description)
    recipes = recipes[recipes["run_id"] != run_id]  # a run's own recipes are already in its summary
    return pd.concat([presets.reindex(columns=RECIPE_ROW_COLUMNS), recipes], ignore_index=True)
