"""qcal.correct_bias: each layer's integer mean meets the float mean, the result is what
calibrating the corrected float model gives (and what torch's convert_fx computes), and the
analytic mode's arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from repair_cases import accuracy

import qcal
from qcal import zoo
from qcal.analysis.reference import quantized_engine, torch_reference
from qcal.repair.bias import _clipped_normal_mean, _float_means, _integer_mean, bias_correction
from qcal.zoo.architectures import TinyEncoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads cost more than they give


def _mean_gaps(qm, batches, reference=None) -> dict[str, float]:
    """Per layer, the largest |integer mean - float mean| of a channel; the float means of
    ``reference`` (the uncorrected model: a corrected model's own float model moved too)."""
    target = _float_means(reference or qm, batches)
    return {name: float((_integer_mean(qm, name, batches) - target[name]).abs().max()) for name in qm.quant_layers}


def test_empirical_correction_meets_every_layers_float_mean(digits):
    _, calib = digits
    qm = qcal.calibrate(zoo.load("digits_mlp"), calib, "per_tensor_symmetric")
    report = bias_correction(qm, calib)
    before, after = _mean_gaps(qm, calib), _mean_gaps(report.model, calib, qm)
    assert all(after[n] < 1e-4 for n in after), after  # the mean error is gone on the data it was fit on
    assert any(before[n] > 100 * after[n] for n in before)  # and there was one to remove
    assert set(report.shifts) == set(qm.quant_layers) and report.method == "empirical"


def test_the_result_is_the_corrected_float_model_calibrated_and_torch_agrees(digits):
    d, calib = digits
    qm = qcal.calibrate(zoo.load("digits_mobilenet"), calib, "fbgemm_default")
    report = bias_correction(qm, calib)
    x = d.test[0][:64]
    again = qcal.calibrate(report.float_model, calib, "fbgemm_default", "fbgemm")
    assert torch.equal(report.model(x), again(x))
    ref = torch_reference(report.float_model, calib, "fbgemm_default", "fbgemm")
    with quantized_engine("fbgemm"), torch.no_grad():
        assert torch.equal(ref(x), report.model(x))  # convert_fx of the corrected float model: same values


def test_analytic_correction_repairs_per_tensor_on_digits_mobilenet(digits):
    d, calib = digits
    x, y = d.test
    qm = qcal.calibrate(zoo.load("digits_mobilenet"), calib, "per_tensor_symmetric")
    report = bias_correction(qm)
    assert report.method == "analytic" and "stem.0" in report.skipped and "fc" in report.skipped
    assert accuracy(report.model, x, y) > accuracy(qm, x, y) + 0.1
    assert report.model.activations is qm.activations and "kept as calibrated" in report.notes[0]


def test_analytic_after_equalize_takes_the_statistics_it_reports(digits):
    d, calib = digits
    eq = qcal.equalize(zoo.load("digits_mobilenet"), calib, relu6="bounded")
    qm = qcal.calibrate(eq.model, calib, "per_tensor_symmetric")
    assert bias_correction(qm).shifts == {}  # BN folded away: nothing to read without the report
    report = bias_correction(qm, stats=eq.preactivation_stats)
    assert len(report.shifts) == 6  # each depthwise and pointwise layer: fed by a folded BN directly
    assert accuracy(report.model, *d.test) >= accuracy(qm, *d.test) - 0.005


def test_module_swap_models_get_the_empirical_correction_only():
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    calib = [torch.rand(16, 1, 8, 8) for _ in range(2)]
    qm = qcal.calibrate(model, calib, "per_tensor_symmetric", mode="modules")
    after = _mean_gaps(qcal.correct_bias(qm, calib), calib, qm)
    assert max(after.values()) < 1e-4
    analytic = bias_correction(qm)
    assert analytic.shifts == {} and all("module-swap" in why for why in analytic.skipped.values())


def test_bad_arguments_are_named(digits):
    with pytest.raises(TypeError, match="QuantizedModel"):
        qcal.correct_bias(zoo.load("digits_mlp"))
    qm = qcal.calibrate(zoo.load("digits_mlp"), digits[1], "per_tensor_symmetric")
    with pytest.raises(ValueError, match="empty"):
        qcal.correct_bias(qm, [])


@settings(max_examples=40, deadline=None)
@given(mu=st.floats(-8, 8), sigma=st.floats(0.05, 5), clip=st.sampled_from([(0.0, 6.0), (0.0, math.inf),
                                                                             (-math.inf, math.inf)]))
def test_clipped_normal_mean_matches_numerical_integration(mu, sigma, clip):
    lo, hi = clip
    z = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    x = mu + sigma * z
    density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    numeric = float(torch.trapezoid(x.clamp(lo, hi) * density, z))
    got = float(_clipped_normal_mean(torch.tensor([mu], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64),
                                     lo, hi))
    assert got == pytest.approx(numeric, abs=1e-6 * max(1.0, abs(mu) + sigma))
