"""recommend proposes a repair before fp32 layers: the cheapest chain that meets max_drop, with
the reason, in a recipe that records the repair's settings."""

import pytest
from repair_cases import trained_relu_mobilenet

import qcal
from qcal import datasets, zoo
from qcal.io.recipe_files import read_recipe, write_recipe
from qcal.repair.apply import apply_recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads cost more than they give


def accuracy(qm, batches) -> float:
    hits = [(qm(x).argmax(1) == y).sum().item() for x, y in batches]
    return sum(hits) / sum(len(y) for _, y in batches)


@pytest.fixture(scope="module")
def setup(digits):
    d, calib = digits
    x, y = d.test
    half = len(x) // 2
    return (trained_relu_mobilenet(), calib, datasets.batches(x[:half], y[:half]),
            datasets.batches(x[half:], y[half:]))


def test_equalize_not_fp32_fallback_on_the_dead_channel_model(setup, tmp_path):
    model, calib, search, held_out = setup
    rec = qcal.recommend(model, calib, search, schemes=["per_tensor_symmetric"], max_drop=0.005, test_data=held_out)
    assert rec.repair == "equalize" and rec.fp32_layers == []  # the cheapest chain met it: no other tried
    assert rec.drop <= 0.005 and rec.recipe.repairs == (("equalize", (("relu6", "bounded"),)),)
    assert "per_tensor_symmetric alone drops" in rec.reason and "per_tensor_symmetric + equalize" in rec.reason
    assert list(rec.steps["choice"]) == ["per_tensor_symmetric", "per_tensor_symmetric + equalize"]
    assert rec.steps["accepted"].iloc[-1] and rec.passes == 2
    # measured on the held-out half: 96.3% int8, fp32 96.3%; the saved recipe rebuilds that number
    saved = read_recipe(write_recipe(rec.recipe, tmp_path / "r.toml"))
    assert saved.repairs == rec.recipe.repairs
    assert accuracy(apply_recipe(model, calib, saved), held_out) == pytest.approx(rec.test_value, abs=1e-12)
    assert rec.test_value >= rec.test_fp32_value - 0.01
    plain = qcal.recommend(model, calib, search, schemes=["per_tensor_symmetric"], max_drop=0.005, repairs=())
    assert plain.repair is None and plain.fp32_layers and plain.drop > rec.drop + 0.01  # what fp32 fallback gives


def test_no_repair_is_tried_when_a_scheme_meets_max_drop_alone(digits):
    d, calib = digits
    x, y = d.test
    rec = qcal.recommend(zoo.load("digits_mlp"), calib, datasets.batches(x[:200], y[:200]),
                         schemes=["per_channel_symmetric"], max_drop=0.05)
    assert rec.repair is None and rec.reason == "" and not rec.recipe.repairs
    assert list(rec.steps["choice"]) == ["per_channel_symmetric"]
