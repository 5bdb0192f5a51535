"""The fp32-fallback curve: each step is reproduced by its recipe; the order comes from sensitivity."""

import pandas as pd
import pytest

import qcal
from qcal import datasets, zoo
from qcal.analysis.fallback import FALLBACK_COLUMNS, fallback_curve, sensitivity_order


@pytest.fixture(scope="module")
def mlp():
    s = datasets.digits_splits()
    x, y = s.test
    return zoo.load("digits_mlp"), datasets.calib_batches(s.calib[0], 100), datasets.batches(x[:100], y[:100], 100)


def test_each_step_keeps_one_more_layer_fp32_and_is_reproduced_by_its_recipe(mlp, one_thread):
    model, calib, ev = mlp
    layers = list(qcal.calibrate(model, calib, "per_tensor_affine").layers()["name"])
    order = list(reversed(layers))
    curve = fallback_curve(model, calib, ev, "per_tensor_affine", order)
    assert list(curve.columns) == FALLBACK_COLUMNS and list(curve["step"]) == list(range(len(order) + 1))
    for _, row in curve.iterrows():
        assert row["recipe"].fp32_layers(layers) == sorted(order[:row["step"]], key=layers.index)
        qm = qcal.calibrate(model, calib, row["recipe"])
        hits = sum(int((qm(x).argmax(1) == y).sum()) for x, y in ev)
        assert row["value"] == hits / 100
    assert curve["drop"].iloc[-1] == 0  # every layer fp32: the fp32 model


def test_order_is_most_sensitive_first_and_bad_orders_are_refused(mlp):
    rows = pd.DataFrame({"layer": ["a", "b", "c"] * 2, "mode": ["only"] * 3 + ["all_but"] * 3,
                         "drop": [0.01, 0.2, 0.01, 0, 0, 0], "value": [0, 0, 0, 0.5, 0.6, 0.9]})
    assert sensitivity_order(rows) == ["b", "c", "a"]
    model, calib, ev = mlp
    with pytest.raises(ValueError, match="not quantizable"):
        fallback_curve(model, calib, ev, "per_tensor_affine", ["nope"])
    with pytest.raises(ValueError, match="twice"):
        fallback_curve(model, calib, ev, "per_tensor_affine", ["a", "a"])
