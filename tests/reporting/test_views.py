"""Page-facing views: tables and sentences computed from small hand-made frames."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from qcal.reporting import views


@pytest.fixture
def summary():
    return pd.DataFrame({
        "scheme": ["per_tensor_affine", "per_tensor_affine", "per_channel_symmetric"],
        "backend": ["fbgemm", "qnnpack", "fbgemm"],
        "metric": "accuracy", "value": [0.80, 0.81, 0.97], "fp32_value": 0.98,
        "drop": [0.18, 0.17, 0.01], "cosine": [0.9, 0.9, 0.99],
        "int8_bytes": [1000, 1000, 1064], "seconds": 0.1,
    })


@pytest.fixture
def layers():
    return pd.DataFrame({
        "scheme": ["a"] * 3 + ["b"] * 3, "backend": "fbgemm",
        "layer": ["conv1", "dw", "fc"] * 2, "kind": ["conv", "conv", "linear"] * 2,
        "sqnr_db": [30.0, 12.0, 25.0, 31.0, 28.0, math.inf], "mse": 0.1, "cosine": 0.99,
    })


def test_metric_value_names_the_pairs_it_has_when_asked_for_a_missing_one(summary):
    assert views.metric_value(summary, "per_tensor_affine", "qnnpack")["value"] == 0.81
    with pytest.raises(ValueError, match="per_tensor_affine/fbgemm"):
        views.metric_value(summary, "per_channel_symmetric", "qnnpack")


def test_accuracy_sentence_names_the_best_and_the_costly_scheme(summary):
    text = views.accuracy_sentence(summary)
    assert "per_channel_symmetric on fbgemm at 97.0%" in text
    assert "per_tensor_affine on fbgemm loses 18.0%" in text


def test_size_table_has_one_row_per_scheme(summary):
    sizes = views.size_table(summary, fp32_bytes=4000)
    assert sizes["scheme"].tolist() == ["per_tensor_affine", "per_channel_symmetric"]
    assert sizes["ratio_vs_fp32"].tolist() == [0.25, 0.266]


def test_worst_layers_table_lists_the_lowest_sqnr_first(layers):
    table = views.worst_layers_table(layers, 2)
    assert table.loc[table["scheme"] == "a", ["worst 1", "worst 2"]].values.tolist() == \
        [["dw (12.0 dB)", "fc (25.0 dB)"]]
    assert "dw under a" in views.worst_layers_sentence(layers)


def test_layer_table_keeps_model_order_and_one_column_per_job(layers):
    table = views.layer_table(layers)
    assert table["layer"].tolist() == ["conv1", "dw", "fc"]
    assert list(table.columns) == ["layer", "kind", "a / fbgemm", "b / fbgemm"]


def test_scale_spread_measures_how_far_channel_ranges_differ():
    scales = pd.DataFrame({
        "scheme": "s", "layer": "dw", "tensor": "weight", "channel": [0, 1],
        "scale": [0.01, 0.0001], "zero_point": 0, "min": [-1.27, -0.0127], "max": [0.5, 0.01],
    })
    spread = views.scale_spread(scales, "dw").iloc[0]
    assert spread["channels"] == 2
    assert spread["scale_ratio"] == pytest.approx(100)
    assert spread["range_ratio"] == pytest.approx(100)


def test_summarize_values_keeps_single_values_and_summarizes_lists():
    assert views.summarize_values([0.015625]) == "0.01562"
    assert views.summarize_values([0, 0, 0]) == "all 0"
    assert views.summarize_values([0.1, 0.3, 0.2]) == "3 values: 0.1 … 0.3"
    assert views.summarize_values([]) == ""
