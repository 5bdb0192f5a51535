"""The observer lab: measured clipping and rounding error per observer's range."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qcal
from qcal.analysis.observer_lab import observer_lab
from qcal.calibration.trajectory import activation_specs


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def test_the_lab_matches_calibration_and_its_errors_add_up_to_the_fake_quant_mse():
    model = _model()
    x = torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    x[0, 0, 0, 0] = 40.0  # one outlier: minmax keeps it, percentile clips it
    layer = qcal.calibrate(model, [x[:32], x[32:]], "per_tensor_affine").scales()
    layer = layer[layer["tensor"] == "activation"]["layer"].iloc[-2]  # the ReLU'd conv output
    lab = observer_lab(model, x, layer, batch_size=32)
    r = lab.ranges.set_index("observer")
    assert list(r.index) == ["minmax", "moving_average", "histogram", "percentile", "entropy", "mse"]
    for spec in activation_specs():  # the same qparams calibration gives
        want = qcal.calibrate(model, [x[:32], x[32:]], qcal.Scheme("s", qcal.QSpec("qint8"), spec)).scales()
        assert r.loc[spec.observer, "scale"] == want[want["layer"] == layer]["scale"].iloc[0]
    assert (r["clip_mse"] + r["round_mse"] - r["mse"]).abs().max() < 1e-12
    assert r.loc["minmax", "clipped_share"] == 0 and r.loc["minmax", "clip_mse"] == 0
    assert r.loc["percentile", "clip_max"] < r.loc["minmax", "clip_max"]
    assert r.loc["percentile", "round_mse"] < r.loc["minmax", "round_mse"]  # finer steps inside
    assert lab.histogram["count"].sum() > 0 and lab.samples == 48


def test_the_lab_measures_against_a_recount():
    model = _model()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    lab = observer_lab(model, x, "0", activation_specs(["minmax"]))
    row = lab.ranges.iloc[0]
    with torch.no_grad():
        out = model[1](model[0](x))  # conv and ReLU fuse: the observed tensor is the ReLU's output
    deq = qcal.dequantize(qcal.quantize(out, row["scale"], row["zero_point"]), row["scale"], row["zero_point"])
    assert abs(float(((deq.double() - out.double()) ** 2).mean()) - row["mse"]) < 1e-12
    assert lab.histogram["count"].sum() == out.numel()


def test_an_unknown_layer_lists_the_observed_ones():
    with pytest.raises(ValueError, match="no observed activation 'nope'; observed: "):
        observer_lab(_model(), torch.randn(4, 1, 8, 8), "nope")
