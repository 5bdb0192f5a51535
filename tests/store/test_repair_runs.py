"""Zoo runs with repaired columns (the dashboard's Compare page): found again only when the
repair settings match, not just the labels."""

import pytest

import qcal.store.zoo_runs as zoo_runs
from qcal.recipes import Recipe
from qcal.repair.apply import with_repairs
from qcal.store import Store
from qcal.store.recipe_runs import saved_recipe_rows

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads cost more than they give

SETUP = ("per_tensor_symmetric", "per_tensor_symmetric + equalize")


def test_a_repaired_zoo_run_is_computed_once_and_found_by_its_settings(tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    run_id, cmp = zoo_runs.find_or_compute_zoo_run("digits_mlp", SETUP, ("fbgemm",), store=store,
                                                   eval_samples=100)
    assert cmp is not None and list(cmp.summary["scheme"]) == list(SETUP)
    saved = store.load(run_id)
    assert Recipe.from_data(saved.meta["recipes"][SETUP[1]]).repairs == (("equalize", (("relu6", "bounded"),)),)
    assert zoo_runs.find_or_compute_zoo_run("digits_mlp", SETUP, ("fbgemm",), store=store) == (run_id, None)
    keep = with_repairs("per_tensor_symmetric", [("equalize", {"relu6": "keep"})])  # same label, other settings
    other, recomputed = zoo_runs.find_or_compute_zoo_run("digits_mlp", [SETUP[0], keep], ("fbgemm",), store=store,
                                                         eval_samples=100)
    assert other != run_id and recomputed is not None
    assert store.load(other).meta["repairs"] == {SETUP[1]: [{"name": "equalize", "relu6": "keep"}]}
    rows = saved_recipe_rows(store, "digits_mlp")  # the Compare page's saved recipes: repaired columns say so
    assert list(rows["scheme"]) == [SETUP[1], SETUP[1]] and set(rows["repairs"]) == {"equalize"}
