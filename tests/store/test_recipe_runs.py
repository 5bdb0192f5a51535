"""Saved recipes are found in the store by model and shown beside the presets."""

import qcal
from qcal import datasets, zoo
from qcal.recipes import Recipe
from qcal.store import Store
from qcal.store.recipe_runs import RECIPE_ROW_COLUMNS, beside_presets, saved_recipe_rows


def test_a_saved_recipe_run_is_listed_beside_the_presets_of_the_same_model(tmp_path, one_thread):
    s = datasets.digits_splits()
    x, y = s.test
    model, calib, ev = zoo.load("digits_mlp"), datasets.calib_batches(s.calib[0], 100), datasets.batches(x[:50], y[:50])
    store = Store(tmp_path / "runs.sqlite")
    presets = qcal.compare(model, calib, ev, ["per_tensor_affine"], ["fbgemm"], meta={"model": "digits_mlp"})
    preset_id = store.save_comparison(presets)
    recipe = Recipe("per_tensor_affine", {"fc1": None}, name="mine")
    recipe_id = store.save_comparison(qcal.compare(model, calib, ev, [recipe], ["fbgemm"], meta={"model": "digits_mlp"}))
    store.save_comparison(qcal.compare(model, calib, ev, [recipe], ["fbgemm"], meta={"model": "other"}))
    rows = saved_recipe_rows(store, "digits_mlp")
    assert list(rows["run_id"]) == [recipe_id] and list(rows["scheme"]) == ["mine"]
    assert rows["fp32_layers"].iloc[0] == "fc1"
    table = beside_presets(presets.summary, preset_id, "", rows)
    assert list(table.columns) == RECIPE_ROW_COLUMNS
    assert list(table["kind"]) == ["preset", "recipe"]
    assert list(table["value"]) == [presets.summary["value"].iloc[0], rows["value"].iloc[0]]
