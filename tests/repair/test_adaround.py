"""qcal.adaround: codes are floor or ceil of w / scale within the scheme's range, the layer's
output error is no worse than round-to-nearest's, seeded runs repeat, 4-bit weights recover."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from repair_cases import accuracy

import qcal
from qcal import zoo
from qcal.export.verify import verify_onnx
from qcal.repair.adaround import _with_layer, adaround, model_error, model_guard, round_layer
from qcal.repair.written import learned_layers, moved_codes, written_model
from qcal.schemes import SCHEMES, QSpec, Scheme

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads cost more than they give


def _four_bit(qscheme: str) -> Scheme:
    return Scheme(f"w4_{qscheme}", QSpec("qint8", qscheme, quant_min=-8, quant_max=7),
                  SCHEMES["per_channel_symmetric"].activation)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_layer_rounds_each_weight_down_or_up_and_fits_its_output_better(seed, digits):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(12, 6)).eval()
    x = torch.randn(256, 12)
    scheme = _four_bit("per_tensor_symmetric")
    qm = qcal.calibrate(model, [x], scheme)
    layer = qm.quant_layers["0"]
    w, scale = model[0].weight.detach(), float(layer.weight_scale)
    x_q = qcal.dequantize(qcal.quantize(x, layer.input_scale, layer.input_zero_point, "quint8"),
                          layer.input_scale, layer.input_zero_point)
    target = model(x).detach()
    codes = round_layer(layer, w, scheme.weight, x_q, target, iterations=300,
                        generator=torch.Generator().manual_seed(seed))
    floor = torch.floor(w / scale)
    assert bool(((codes == floor) | (codes == floor + 1) | (codes == -8) | (codes == 7)).all())
    assert int(codes.min()) >= -8 and int(codes.max()) <= 7

    def error(c: torch.Tensor) -> float:
        return float((torch.nn.functional.linear(x_q, c.float() * scale, layer.bias) - target).pow(2).mean())

    assert error(codes) <= error(layer.weight_q)  # round-to-nearest's codes, from calibration


def test_codes_that_fit_worse_than_round_to_nearest_give_way_to_it():
    # a step size far too large for a few steps scatters the rounding directions: the result is
    # round-to-nearest's codes, never a worse fit of the layer's output
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(12, 6)).eval()
    x = torch.randn(256, 12)
    scheme = _four_bit("per_tensor_symmetric")
    layer = qcal.calibrate(model, [x], scheme).quant_layers["0"]
    x_q = qcal.dequantize(qcal.quantize(x, layer.input_scale, layer.input_zero_point, "quint8"),
                          layer.input_scale, layer.input_zero_point)
    target = model(x).detach()
    w = model[0].weight.detach()
    scattered = round_layer(layer, w, scheme.weight, x_q, target, iterations=3, lr=50.0, reg=0.0,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(scattered, layer.weight_q)


def test_seeded_runs_repeat_and_progress_is_reported(digits):
    _, calib = digits
    model, seen = zoo.load("digits_mlp"), []
    a = adaround(model, calib, "per_tensor_symmetric", iterations=50, samples=64, seed=3,
                 progress=lambda f, m: seen.append((f, m)))
    b = adaround(model, calib, "per_tensor_symmetric", iterations=50, samples=64, seed=3)
    assert all(torch.equal(a.quant_layers[n].weight_q, b.quant_layers[n].weight_q) for n in a.quant_layers)
    assert seen[-1] == (1.0, "adaround: done") and any("fc2: iteration" in m for _, m in seen)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)


def test_int8_adaround_matches_round_to_nearest(digits):
    d, calib = digits
    x, y = d.test
    model = zoo.load("digits_mobilenet")
    nearest = qcal.calibrate(model, calib, "per_channel_symmetric")
    learned = adaround(model, calib, "per_channel_symmetric", iterations=200)
    assert accuracy(learned, x, y) >= accuracy(nearest, x, y) - 0.005  # one digit of 597 at most
    assert learned.activations is not None and learned.scheme == nearest.scheme


def test_four_bit_weights_recover_half_the_gap(digits):
    d, calib = digits
    x, y = d.test
    model = qcal.equalize(zoo.load("digits_mobilenet"), calib, relu6="bounded").model
    scheme = _four_bit("per_tensor_symmetric")
    fp32, nearest = accuracy(model, x, y), accuracy(qcal.calibrate(model, calib, scheme), x, y)
    assert nearest < fp32 - 0.03  # round-to-nearest loses at least 3 points at 4 bits
    learned = adaround(model, calib, scheme, iterations=300)
    assert all(int(ly.weight_q.min()) >= -8 and int(ly.weight_q.max()) <= 7 for ly in learned.quant_layers.values())
    assert accuracy(learned, x, y) >= nearest + (fp32 - nearest) / 2


def test_learned_codes_export_to_onnx_and_onnxruntime_computes_qcals_values(digits, tmp_path):
    d, calib = digits
    scheme = _four_bit("per_channel_symmetric")
    learned = adaround(zoo.load("digits_mobilenet"), calib, scheme, iterations=30, samples=64)
    nearest = qcal.calibrate(zoo.load("digits_mobilenet"), calib, scheme)
    assert any(not torch.equal(learned.quant_layers[n].weight_q, nearest.quant_layers[n].weight_q)
               for n in learned.quant_layers)  # the codes moved: the export has something to carry
    path = tmp_path / "adaround.onnx"
    qcal.to_onnx(learned, path)
    result = verify_onnx(path, learned, d.test[0][:128])
    assert result.differing == 0 and result.total > 0


def _flipped(layer, weight, spec, *args, **kwargs):
    """Every weight rounded the other way from round-to-nearest (within the layer's codes)."""
    scale = layer.weight_scale.reshape((-1,) + (1,) * (weight.dim() - 1)) if layer.weight_scale.numel() > 1 \
        else layer.weight_scale
    floor = torch.floor(weight / scale)
    nearest = layer.weight_q.float()
    other = torch.where(nearest == floor, floor + 1, floor).clamp(nearest.min(), nearest.max())
    return other.to(layer.weight_q.dtype)


def test_learned_codes_that_serve_the_whole_model_worse_give_way_to_round_to_nearest(digits, monkeypatch):
    # each layer's codes all rounded the wrong way (the per-layer check bypassed): the model's
    # output on the calibration data is worse, so the model guard keeps round-to-nearest's codes
    _, calib = digits
    model, seen = zoo.load("digits_mlp"), []
    monkeypatch.setattr("qcal.repair.adaround.round_layer", _flipped)
    qm = adaround(model, calib, "per_tensor_symmetric", iterations=1, progress=lambda f, m: seen.append(m))
    nearest = qcal.calibrate(model, calib, "per_tensor_symmetric")
    assert all(torch.equal(qm.quant_layers[n].weight_q, nearest.quant_layers[n].weight_q) for n in qm.quant_layers)
    assert seen[-2].startswith("adaround: round-to-nearest kept: the learned codes do not serve the whole model")


def test_the_model_guard_keeps_codes_that_lower_the_output_error_and_keep_every_top1(digits):
    _, calib = digits
    model = zoo.load("digits_mlp")
    nearest = qcal.calibrate(model, calib, "per_tensor_symmetric")
    flipped = nearest
    for name in nearest.quant_layers:
        layer = nearest.quant_layers[name]
        flipped = _with_layer(flipped, name, dataclasses.replace(
            layer, weight_q=_flipped(layer, model.get_submodule(name).weight.detach(), None)))
    assert model_guard(flipped, nearest, model, calib)[0] is nearest
    assert model_guard(nearest, flipped, model, calib)[0] is nearest  # the better one wins either way round
    error, differing = model_error(nearest, model, calib)
    assert error > 0 and 0 <= differing < 0.05


@pytest.mark.parametrize("scheme", ["per_tensor_symmetric", "per_channel_affine", "fbgemm_default",
                                    _four_bit("per_channel_symmetric")], ids=lambda s: getattr(s, "name", s))
def test_learned_codes_written_as_weights_calibrate_back_to_the_same_codes_and_scales(scheme, digits):
    # what an exporter re-observing the float model (PT2E's, torch's minmax weight observers) sees
    _, calib = digits
    model = zoo.load("digits_mlp")
    learned = adaround(model, calib, scheme, iterations=40, samples=64)
    assert learned_layers(learned) and set(moved_codes(learned).values()) == {0}
    again = qcal.calibrate(written_model(learned), calib, scheme)
    for name, layer in learned.quant_layers.items():
        assert torch.equal(again.quant_layers[name].weight_q, layer.weight_q)
        assert torch.equal(again.quant_layers[name].weight_scale, layer.weight_scale)
        assert torch.equal(again.quant_layers[name].weight_zero_point, layer.weight_zero_point)


def test_the_traced_inputs_adaround_learns_from_are_the_integer_models_own(digits):
    # a ReLU6 that alone reads a conv's output is clamped with the conv's output codes; a traced
    # run (what AdaRound and bias correction read) must pass the clamped codes on as well
    _, calib = digits
    qm = qcal.calibrate(zoo.load("digits_mobilenet"), calib, "per_channel_symmetric")
    traces = qm.trace(calib[0])
    fc = qm.quant_layers["fc"]
    out = qcal.dequantize(traces["fc"].output_q, fc.output_scale, fc.output_zero_point)
    assert torch.equal(out, qm(calib[0]))
    for name, layer in qm.quant_layers.items():
        x = qcal.dequantize(traces[name].input_q, layer.input_scale, layer.input_zero_point)
        assert float(x.max()) <= 6.0 + float(layer.input_scale)  # every input here is a ReLU6's (or the image's)
