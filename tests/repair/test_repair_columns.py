"""compare with repaired columns: ``scheme + repair`` beside the plain scheme in every frame, the
repair settings in the metadata, and a saved run that keeps both."""

import pytest
from repair_cases import trained_relu_mobilenet

import qcal
from qcal import datasets
from qcal.recipes import REPAIR_PARAMETERS, Recipe
from qcal.repair.apply import chain_recipe, repair_label, split_repairs, with_repairs
from qcal.reporting.report import report_html
from qcal.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads cost more than they give

PLAIN, LABEL = "per_tensor_symmetric", "per_tensor_symmetric + equalize"


@pytest.fixture(scope="module")
def comparison(digits):
    d, calib = digits
    x, y = d.test
    return qcal.compare(trained_relu_mobilenet(), calib, datasets.batches(x, y),
                        [PLAIN, with_repairs(PLAIN, ["equalize"]), "per_tensor_symmetric+correct_bias"])


def test_the_equalize_column_beats_the_plain_one_on_the_dead_channel_model(comparison):
    values = comparison.summary.set_index("scheme")["value"]
    assert list(values.index) == [PLAIN, LABEL, "per_tensor_symmetric + correct_bias"]
    # measured: 87.4% plain, 96.1% equalized, fp32 96.0% (597 test digits)
    assert values[LABEL] - values[PLAIN] > 0.05
    assert comparison.summary.set_index("scheme").loc[LABEL, "drop"] < 0.01
    for name, frame in comparison.frames().items():
        assert set(frame["scheme"]) == set(values.index), name
    assert set(comparison.models) == {(s, "fbgemm") for s in values.index}


def test_repaired_columns_record_their_settings_not_learned_values(comparison):
    meta = comparison.meta
    assert meta["schemes"] == [PLAIN, LABEL, "per_tensor_symmetric + correct_bias"]
    assert meta["repairs"] == {LABEL: [{"name": "equalize"}],
                               "per_tensor_symmetric + correct_bias": [{"name": "correct_bias", "method": "empirical"}]}
    assert Recipe.from_data(meta["recipes"][LABEL]) == with_repairs(PLAIN, ["equalize"])
    for data in meta["recipes"].values():
        assert set(data) <= {"name", "default", "layers", "repairs"}
        assert all(set(r) - {"name"} <= set(REPAIR_PARAMETERS[r["name"]]) for r in data["repairs"])


def test_a_saved_run_keeps_the_labels_and_the_repair_settings(comparison, tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    run = store.load(store.save_comparison(comparison))
    assert list(run.summary["scheme"]) == list(comparison.summary["scheme"])
    assert run.meta["repairs"] == comparison.meta["repairs"]
    for label, data in run.meta["recipes"].items():  # a reloaded run says what was repaired, and how
        assert repair_label(Recipe.from_data(data)) == label
    other = Store(tmp_path / "other.sqlite")
    again = other.load(other.import_(store.export(run.id, tmp_path / "run.sqlite")))
    assert again.meta["recipes"] == run.meta["recipes"] and set(again.layers["scheme"]) == set(run.layers["scheme"])
    assert LABEL in store.list()["schemes"].iloc[0].split(",")
    page = report_html(run)  # the HTML report names each repaired column's settings
    assert "<h2>Repairs</h2>" in page and "correct_bias(method=empirical)" in page


def test_labels_and_the_spelled_form():
    assert split_repairs("per_tensor_symmetric+equalize + correct_bias") == (PLAIN, ("equalize", "correct_bias"))
    assert split_repairs("per_tensor_affine+1-abc123") == ("per_tensor_affine+1-abc123", ())  # a derived name
    assert repair_label(Recipe(PLAIN, repairs=["correct_bias", "equalize"])) == \
        "per_tensor_symmetric + equalize + correct_bias"  # in the order apply_recipe applies them
    assert repair_label(Recipe(PLAIN, name="mine", repairs=["equalize"])) == "mine + equalize"
    assert chain_recipe(PLAIN, ["equalize"]).repairs == (("equalize", (("relu6", "bounded"),)),)


def test_two_repaired_columns_with_one_label_are_refused_before_any_work():
    keep = with_repairs(PLAIN, [("equalize", {"relu6": "keep"})])
    with pytest.raises(ValueError, match="labelled 'per_tensor_symmetric \\+ equalize'"):
        qcal.compare(None, None, [], [keep, "per_tensor_symmetric + equalize"])
