"""Which backend runs which scheme: the XNNPACK presets and refusals, and where presets run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qcal
from qcal.runnable import PRESET_ENGINES, check_runnable, preset_backends, presets_for
from qcal.schemes import SCHEMES, QSpec, Scheme

XNN_ACT = SCHEMES["xnnpack_default"].activation


def test_xnnpack_presets_are_xnnpack_quantizers_symmetric_configs():
    pc, pt = SCHEMES["xnnpack_default"], SCHEMES["xnnpack_per_tensor"]
    assert (pc.weight.qscheme, pt.weight.qscheme) == ("per_channel_symmetric", "per_tensor_symmetric")
    for s in (pc, pt):
        assert s.weight.code_range() == (-127, 127) and s.weight.dtype == "qint8" and s.weight.observer == "minmax"
        assert s.activation == QSpec("qint8", "per_tensor_affine", "histogram", options={"eps": 2.0**-12})
        assert s.weight.option("eps") == 2.0**-12 and PRESET_ENGINES[s.name] == "xnnpack"
        check_runnable(s, "xnnpack")


def test_eps_is_the_smallest_scale():
    spec = QSpec("qint8", "per_tensor_symmetric", options={"eps": 2.0**-12})
    obs = qcal.make_observer(spec)
    obs.update(torch.full((4,), 1e-6))
    assert float(obs.qparams()[0]) == 2.0**-12
    with pytest.raises(ValueError, match="takes no option"):
        qcal.make_observer(QSpec(options={"epsilon": 1.0}))


@pytest.mark.parametrize(("weight", "activation", "message"), [
    (None, QSpec("quint8", "per_tensor_affine", "histogram"), r"quint8 activations: the delegate serializes"),
    (None, QSpec("qint8", "per_tensor_affine", reduce_range=True), r"reduce_range activations: XNNPACK's qs8"),
    (None, QSpec("qint8", quant_min=-100, quant_max=100), r"quant_min..quant_max -100..100 activations"),
    (QSpec("qint8", "per_channel_affine"), None, r"per_channel_affine weights: XNNPACK's qs8/qc8w kernels have no "
                                                 r"weight zero point"),
    (QSpec("quint8", "per_tensor_symmetric"), None, r"quint8 weights: the delegate's convolution"),
])
def test_xnnpack_refuses_what_the_delegate_cannot_run(weight, activation, message):
    scheme = Scheme("mine", weight or SCHEMES["xnnpack_default"].weight, activation or XNN_ACT)
    with pytest.raises(ValueError, match=r"^scheme 'mine' cannot run on xnnpack: " + message):
        check_runnable(scheme, "xnnpack")
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    with pytest.raises(ValueError, match=message):
        qcal.calibrate(model, torch.randn(2, 1, 5, 5), scheme, "xnnpack")


def test_full_range_symmetric_weights_run_on_xnnpack():
    # ExecuTorch's delegate takes int8 weight codes of -128 (XNNPACKQuantizer's weight_qmin=-128);
    # its -127 default keeps ARM's int16 sums of two products from overflowing
    check_runnable(Scheme("full", QSpec("qint8", "per_channel_symmetric"), XNN_ACT), "xnnpack")


def test_presets_run_on_their_engine_or_the_backends_they_can():
    xnn, fb = SCHEMES["xnnpack_default"], SCHEMES["fbgemm_default"]
    assert preset_backends(xnn, None) == ["xnnpack"] and preset_backends(fb, None) == ["fbgemm"]
    assert preset_backends(xnn, ["fbgemm", "qnnpack"]) == ["xnnpack"]
    assert preset_backends(fb, ["qnnpack", "xnnpack"]) == ["qnnpack"]
    built = Scheme("built", xnn.weight, xnn.activation)
    assert preset_backends(built, ["fbgemm"]) == ["fbgemm"]  # a built scheme is refused there, not moved
    assert "xnnpack_default" not in presets_for("fbgemm") and presets_for("xnnpack") == [
        "xnnpack_default", "xnnpack_per_tensor"]
    with pytest.raises(ValueError, match=r"qint8 activations.*\(preset xnnpack_default runs on backend 'xnnpack'\)"):
        check_runnable(xnn, "fbgemm")


def test_calibrate_runs_an_xnnpack_preset_on_xnnpack_unless_told_otherwise():
    model, x = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval(), torch.randn(2, 1, 5, 5)
    assert qcal.calibrate(model, x, "xnnpack_per_tensor").backend == "xnnpack"
    assert qcal.calibrate(model, x, "per_tensor_affine").backend == "fbgemm"
    with pytest.raises(ValueError, match="cannot run on fbgemm"):
        qcal.calibrate(model, x, "xnnpack_default", "fbgemm")
    qms = qcal.calibrate_many(model, x, ["xnnpack_default", "qnnpack_default"], ["fbgemm", "qnnpack"])
    assert set(qms) == {("xnnpack_default", "xnnpack"), ("qnnpack_default", "fbgemm"), ("qnnpack_default", "qnnpack")}


def test_compare_runs_every_preset_where_it_can_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3)).eval()
    x = torch.randn(32, 1, 5, 5)
    evals = [(x, torch.randint(0, 3, (32,)))]
    cmp = qcal.compare(model, x, evals, schemes=["xnnpack_default", "per_tensor_affine"], backends=["fbgemm"])
    assert set(zip(cmp.summary["scheme"], cmp.summary["backend"], strict=True)) == {
        ("xnnpack_default", "xnnpack"), ("per_tensor_affine", "fbgemm")}
    assert (cmp.summary["drop"].abs() < 0.2).all()
