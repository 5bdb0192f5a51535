"""Recipes that record repairs: settings as data and files, refused by calibrate, recomputed
deterministically by qcal.repair.apply_recipe."""

from __future__ import annotations

import pytest
import torch

import qcal
from qcal import zoo
from qcal.io.recipe_files import read_recipe, write_recipe
from qcal.recipes import Recipe
from qcal.repair.apply import apply_recipe, with_repairs

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads cost more than they give

REPAIRS = [("equalize", {"relu6": "bounded", "sweeps": 10}), ("adaround", {"iterations": 20, "seed": 3}),
           "correct_bias"]


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_repairs_are_settings_in_the_recipe_and_its_files(tmp_path, suffix):
    recipe = Recipe("per_tensor_symmetric", {"fc": None}, name="mine", repairs=REPAIRS)
    assert recipe.repairs[0] == ("equalize", (("relu6", "bounded"), ("sweeps", 10)))
    assert recipe.to_data()["repairs"][2] == {"name": "correct_bias"}
    assert Recipe.from_data(recipe.to_data()) == recipe
    assert read_recipe(write_recipe(recipe, tmp_path / f"r{suffix}")) == recipe
    plain = Recipe("per_tensor_symmetric", {"fc": None})
    assert "repairs" not in plain.to_data() and "repairs" not in repr(plain)  # older recipes unchanged
    assert Recipe("per_tensor_symmetric", {"fc": None}, repairs=REPAIRS).name != plain.name


@pytest.mark.parametrize(("repairs", "message"), [
    (["polish"], "unknown repair 'polish'"),
    ([("equalize", {"relu7": "keep"})], "no setting 'relu7'"),
    (["correct_bias", "correct_bias"], "names a repair twice"),
])
def test_bad_repairs_are_named(repairs, message):
    with pytest.raises(ValueError, match=message):
        Recipe("per_tensor_symmetric", repairs=repairs)


def test_calibrate_refuses_a_recipe_with_repairs_rather_than_ignore_them(digits):
    recipe = with_repairs("per_tensor_symmetric", ["correct_bias"])
    with pytest.raises(ValueError, match="apply_recipe"):
        qcal.calibrate(zoo.load("digits_mlp"), digits[1], recipe)


def test_applying_a_recipe_recomputes_the_same_model_as_the_chain_by_hand(digits):
    d, calib = digits
    model, x = zoo.load("digits_mobilenet"), d.test[0][:100]
    recipe = with_repairs("per_tensor_symmetric", [("equalize", {"relu6": "bounded"}), "correct_bias"])
    first, again = apply_recipe(model, calib, recipe), apply_recipe(model, calib, Recipe.from_data(recipe.to_data()))
    assert torch.equal(first(x), again(x))
    eq = qcal.equalize(model, calib, relu6="bounded")
    by_hand = qcal.correct_bias(qcal.calibrate(eq.model, calib, "per_tensor_symmetric"), calib)
    assert torch.equal(first(x), by_hand(x))
    assert first.scheme.name == "per_tensor_symmetric" and first.recipe is None
