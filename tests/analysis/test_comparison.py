import re
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import torch
from torch import nn

import qcal
from qcal.analysis.compare import _plan
from qcal.reporting.report import report_html


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    calib = [torch.randn(16, 1, 8, 8) for _ in range(2)]
    x = torch.randn(48, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    # labels that agree with fp32 on 3 of 4 samples, so accuracy < 1 and differs from agreement
    y = torch.where(torch.arange(48) % 4 == 0, (y + 1) % 4, y)
    evals = [(x[:24], y[:24]), (x[24:], y[24:])]
    return model, calib, evals


def test_default_presets_run_on_their_own_engine_and_the_rest_on_fbgemm():
    jobs = [(s.name, b) for s, b in _plan(None, None)]
    assert ("fbgemm_default", "fbgemm") in jobs and ("qnnpack_default", "qnnpack") in jobs
    assert ("qnnpack_default", "fbgemm") not in jobs
    assert ("per_tensor_affine", "fbgemm") in jobs and len(jobs) == 8
    assert ("xnnpack_default", "xnnpack") in jobs and ("xnnpack_per_tensor", "xnnpack") in jobs


def test_explicit_backends_apply_to_every_scheme():
    jobs = [(s.name, b) for s, b in _plan(["fbgemm_default", "per_tensor_affine"], ["qnnpack", "onnx"])]
    assert jobs == [("fbgemm_default", "qnnpack"), ("fbgemm_default", "onnx"),
                    ("per_tensor_affine", "qnnpack"), ("per_tensor_affine", "onnx")]


def test_compare_frames_have_the_design_columns_and_accuracy_matches_a_recount(setup):
    model, calib, evals = setup
    cmp = qcal.compare(model, calib, evals, schemes=["per_tensor_affine", "qnnpack_default"])
    assert list(cmp.summary.columns) == ["scheme", "backend", "metric", "value", "fp32_value",
                                         "drop", "cosine", "int8_bytes", "seconds"]
    assert list(cmp.layers.columns) == ["scheme", "backend", "layer", "kind", "sqnr_db", "mse", "cosine"]
    assert list(cmp.scales.columns) == ["scheme", "layer", "tensor", "channel", "scale",
                                        "zero_point", "min", "max"]
    assert list(cmp.histograms.columns)[:3] == ["scheme", "layer", "observer"]
    assert set(cmp.samples.columns) == {"scheme", "backend", "layer", "fp32", "int8_dequantized"}
    assert (cmp.summary["metric"] == "accuracy").all()
    assert cmp.summary["fp32_value"].iloc[0] == pytest.approx(0.75)
    qm = cmp.models[("per_tensor_affine", "fbgemm")]
    pred = torch.cat([qm(x).argmax(1) for x, _ in evals])
    labels = torch.cat([y for _, y in evals])
    row = cmp.summary.set_index("scheme").loc["per_tensor_affine"]
    assert row["value"] == pytest.approx(float((pred == labels).float().mean()))
    assert row["drop"] == pytest.approx(row["fp32_value"] - row["value"])
    assert set(cmp.layers["layer"]) >= {"conv", "fc"}


def test_without_labels_agreement_with_fp32_replaces_accuracy(setup):
    model, calib, evals = setup
    cmp = qcal.compare(model, calib, [x for x, _ in evals], schemes=["per_channel_symmetric"])
    assert (cmp.summary["metric"] == "agreement").all()
    assert cmp.summary["fp32_value"].iloc[0] == 1.0
    assert 0.0 < cmp.summary["cosine"].iloc[0] <= 1.0


def test_an_executor_gives_the_same_frames_as_in_process(setup):
    model, calib, evals = setup
    kw = {"schemes": ["per_tensor_affine", "per_channel_symmetric"]}
    a = qcal.compare(model, calib, evals, **kw)
    with ThreadPoolExecutor(2) as pool:
        b = qcal.compare(model, calib, evals, executor=pool, **kw)
    drop_t = ["seconds"]
    pd.testing.assert_frame_equal(a.summary.drop(columns=drop_t), b.summary.drop(columns=drop_t))
    for name in ("layers", "scales", "histograms", "samples"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))


def test_labels_that_do_not_match_the_outputs_are_refused(setup):
    model, calib, evals = setup
    x, y = evals[0]
    with pytest.raises(ValueError, match="labels do not match the outputs: 10 labels for a batch of 24"):
        qcal.compare(model, calib, [(x, y[:10])], schemes=["per_tensor_affine"])
    with pytest.raises(ValueError, match="label 7 is out of range for a model with 4 outputs"):
        qcal.compare(model, calib, [(x, torch.full((24,), 7))], schemes=["per_tensor_affine"])


def test_nan_in_eval_data_is_counted(setup):
    model, calib, evals = setup
    x = evals[0][0].clone()
    x[0, 0, 0, :3] = float("nan")
    with pytest.raises(ValueError, match="eval data holds 3 NaN or Inf values"):
        qcal.compare(model, calib, [(x, None)], schemes=["per_tensor_affine"])


def test_report_is_self_contained_html(setup, tmp_path):
    model, calib, evals = setup
    cmp = qcal.compare(model, calib, evals, schemes=["per_tensor_affine", "per_channel_symmetric"])
    path = qcal.report(cmp, tmp_path / "r" / "report.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>")
    assert "<script src=" not in text  # no network needed to open it
    assert "Plotly.newPlot" in text and "per_channel_symmetric" in text
    with pytest.raises(TypeError, match="report needs a qcal Comparison or a saved Run"):
        qcal.report(object(), tmp_path / "x.html")
    # the string form (the dashboard's download) is the same document, up to plotly's random div ids
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    assert uuid.sub("", report_html(cmp)) == uuid.sub("", text)


def test_a_dask_local_cluster_executor_gives_the_same_frames(setup):
    distributed = pytest.importorskip("distributed")
    model, calib, evals = setup
    kw = {"schemes": ["per_tensor_symmetric", "fbgemm_default"]}
    local = qcal.compare(model, calib, evals, **kw)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = qcal.compare(model, calib, evals, executor=client.get_executor(), **kw)
    pd.testing.assert_frame_equal(local.summary.drop(columns="seconds"),
                                  remote.summary.drop(columns="seconds"))
    for name in ("layers", "scales", "histograms", "samples"):
        pd.testing.assert_frame_equal(getattr(local, name), getattr(remote, name))
