"""calibrate / calibrate_many: one pass for many schemes, the caller's model untouched, loud errors."""

import warnings
from unittest import mock

import pytest
import torch
from torch import nn
from wholemodel_cases import digits_data, make_model

import qcal
import qcal.calibration.calibrate
import qcal.calibration.observation
from qcal.calibration.calibrate import calibrate, calibrate_many
from qcal.schemes import QSpec, Scheme

ALL = list(qcal.SCHEMES)


@pytest.fixture(scope="module")
def data():
    return digits_data()


@pytest.mark.parametrize("mode", ["graph", "modules"])
def test_every_preset_runs_the_model_over_the_data_once(mode, data):
    calib, _ = data
    model = make_model("cnn")
    calls = []
    original = nn.Conv2d.forward

    def counting(self, x):
        calls.append(1)
        return original(self, x)

    with mock.patch.object(nn.Conv2d, "forward", counting):
        qms = calibrate_many(model, calib, ALL, mode=mode)
    assert len(qms) == len(ALL)
    assert len(calls) == 3 * len(calib)  # three convs, each batch once


def test_one_observer_per_distinct_activation_and_weight_spec(data):
    calib, _ = data
    made = []
    real = qcal.observers.observers.make_observer

    def counting(spec):
        made.append(spec)
        return real(spec)

    generic = ["per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric"]
    # weights: calibrate's own make_observer; activations: make_observers' calls in observers
    with mock.patch("qcal.observers.observers.make_observer", counting), \
            mock.patch("qcal.calibration.calibrate.make_observer", counting):
        qms = calibrate_many(make_model("cnn"), calib, generic)
    qm = next(iter(qms.values()))
    acts = [s for s in made if s.dtype == "quint8"]
    weights = [s for s in made if s.dtype == "qint8"]
    assert len(set(acts)) == 1 and len(acts) == len(qm.activations)
    assert len(weights) == 4 * len(qm.quant_layers)


def test_default_backends_put_default_presets_on_their_own_engine(data):
    qms = calibrate_many(make_model("mlp"), data[0], ALL)
    assert set(qms) == {("fbgemm_default", "fbgemm"), ("qnnpack_default", "qnnpack"), ("xnnpack_default", "xnnpack"),
                        ("xnnpack_per_tensor", "xnnpack"), *((s, "fbgemm") for s in ALL if "pack" not in s)}
    explicit = calibrate_many(make_model("mlp"), data[0], ["fbgemm_default", "per_tensor_affine"],
                              ["fbgemm", "qnnpack"])
    assert set(explicit) == {(s, b) for s in ["fbgemm_default", "per_tensor_affine"] for b in ["fbgemm", "qnnpack"]}


def test_many_schemes_in_one_pass_equal_separate_calibrations(data):
    calib, x = data
    model = make_model("mobilenet")  # ReLU6 shares the conv's observer: two looks per batch
    together = calibrate_many(model, calib, ALL)
    for (scheme, backend), qm in together.items():
        alone = calibrate(model, calib, scheme, backend)
        assert torch.equal(qm(x), alone(x)), scheme


def test_training_mode_model_warns_once_and_is_left_unchanged(data):
    model = make_model("mobilenet").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qm = calibrate(model, data[0], "fbgemm_default")
    training = [w for w in caught if "training mode" in str(w.message)]
    assert len(training) == 1
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not qm.float_model.training


def test_calibration_data_forms_tensor_list_tuples_and_dicts(data):
    calib, x = data
    model = make_model("cnn")
    base = calibrate(model, calib, "per_tensor_affine")
    as_tuples = calibrate(model, [(b,) for b in calib], "per_tensor_affine")
    as_dicts = calibrate(model, ({"x": b} for b in calib), "per_tensor_affine")  # a one-shot generator
    one = calibrate(model, torch.cat(calib), "per_tensor_affine")
    for qm in (as_tuples, as_dicts, one):
        assert torch.equal(qm(x), base(x))
    assert torch.equal(base((x,)), base({"x": x}))


def test_progress_reports_fractions_up_to_one(data):
    seen = []
    calibrate(make_model("cnn"), data[0], "per_tensor_affine", progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and all(0 <= f <= 1 for f in fractions)
    assert all(isinstance(m, str) and m for _, m in seen)


def test_empty_calibration_data_is_rejected():
    with pytest.raises(ValueError, match="calibration data is empty"):
        calibrate(make_model("cnn"), [], "per_tensor_affine")


def test_nan_and_inf_are_rejected_with_their_count(data):
    bad = data[0][0].clone()
    bad[0, 0, 0, :3] = float("nan")
    bad[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="4 NaN or Inf"):
        calibrate(make_model("cnn"), [data[0][1], bad], "per_tensor_affine")


@pytest.mark.parametrize("mode", ["auto", "modules"])
def test_input_that_does_not_fit_names_its_shape(mode):
    with pytest.raises(ValueError, match=r"\(4, 3, 8, 8\)"):
        calibrate(make_model("cnn"), torch.rand(4, 3, 8, 8), "per_tensor_affine", mode=mode)


def test_unknown_names_list_the_valid_ones(data):
    model = make_model("cnn")
    with pytest.raises(ValueError, match="per_tensor_affine"):
        calibrate(model, data[0], "int4_magic")
    with pytest.raises(ValueError, match="fbgemm, qnnpack"):
        calibrate(model, data[0], "per_tensor_affine", "tpu")
    with pytest.raises(ValueError, match="auto, graph, modules"):
        calibrate(model, data[0], "per_tensor_affine", mode="eager")


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = x * 2
        return self.fc(x)


def test_auto_falls_back_to_module_swap_saying_why_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qm = calibrate(Untraceable().eval(), torch.randn(16, 8), "per_tensor_affine")
    fallback = [w for w in caught if "module-swap" in str(w.message)]
    assert len(fallback) == 1 and "Untraceable" in str(fallback[0].message)
    assert qm.mode == "modules" and "trace" in qm.fallback_reason
    with pytest.raises(ValueError, match="graph mode is not possible"):
        calibrate(Untraceable().eval(), torch.randn(16, 8), "per_tensor_affine", mode="graph")


def test_a_custom_scheme_with_moving_average_observers_runs(data):
    calib, x = data
    scheme = Scheme("ma", QSpec("qint8", "per_channel_affine", "moving_average"),
                    QSpec("quint8", "per_tensor_affine", "moving_average", reduce_range=True))
    qm = calibrate(make_model("cnn"), calib, scheme)
    ref = qm.float_model(x)
    assert torch.nn.functional.cosine_similarity(qm(x).flatten(), ref.flatten(), dim=0) > 0.95


def test_the_display_histogram_counts_stay_exact_when_its_range_doubles():
    h = qcal.calibration.observation.ValueHistogram(bins=8)
    h.update(torch.tensor([0.1, 0.2, -0.3]))
    h.update(torch.tensor([3.5, -7.0]))
    edges, counts = h.trimmed(-7.0, 3.5)
    assert counts.sum() == 5 and edges[0] <= -7.0 and edges[-1] >= 3.5
    assert h.half == 8.0


@pytest.mark.parametrize("zero_point", [0, 37])
@pytest.mark.parametrize("axis", [None, 0])
def test_fast_quantize_equals_torchs_rounding_including_ties(axis, zero_point):
    from qcal.int8.layer_ops import quantize_codes
    from qcal.qparams import quantize

    torch.manual_seed(1)
    scale = torch.rand(8) * 0.02 + 0.001 if axis == 0 else torch.tensor([0.0123])
    w = torch.randn(8, 4, 3, 3) * 0.3
    # exact and near ties: (k + 0.5) * scale for half the values
    k = torch.randint(-120, 120, w.shape).float() + 0.5
    s = scale.view(-1, 1, 1, 1) if axis == 0 else scale
    w = torch.where(torch.rand(w.shape) < 0.5, k * s, w)
    zp = torch.full((scale.numel(),), zero_point, dtype=torch.int64)
    fast = quantize_codes(w, scale, zp, "qint8", axis)
    assert torch.equal(fast, quantize(w, scale, zp, "qint8", axis=axis))
    torch_q = (torch.quantize_per_channel(w, scale.double(), zp, 0, torch.qint8) if axis == 0
               else torch.quantize_per_tensor(w, float(scale), zero_point, torch.qint8))
    assert torch.equal(fast, torch_q.int_repr())
    act = torch.rand(4096) * 6 - 1
    assert torch.equal(quantize_codes(act, 0.0471, 21), torch.quantize_per_tensor(act, 0.0471, 21, torch.quint8).int_repr())


@pytest.mark.parametrize(("weight", "bounds"), [
    (QSpec("qint8", "per_channel_symmetric", "minmax", quant_min=-127, quant_max=127), (-127, 127)),
    (QSpec("qint8", "per_channel_affine", "mse", quant_min=-8, quant_max=7), (-8, 7)),
    (QSpec("qint8", "per_tensor_symmetric", "percentile", options={"percentile": 99.0}, quant_min=-8, quant_max=7),
     (-8, 7)),
])
def test_weight_codes_lie_in_quant_min_max(weight, bounds, data):
    """Weights are quantized with the spec's qparams and clamped to its range; a clipping
    estimator's clipped weights land on the ends (unclamped they would fall outside)."""
    from qcal.observers.observers import make_observer
    from qcal.qparams import quantize

    calib, x = data
    scheme = Scheme("ranged", weight, qcal.SCHEMES["per_tensor_affine"].activation)
    qm = calibrate(make_model("cnn"), calib, scheme, "fbgemm")
    lo, hi = bounds
    at_ends = 0
    for layer in qm.quant_layers.values():
        q = layer.weight_q
        assert q.dtype == torch.int8 and lo <= int(q.min()) and int(q.max()) <= hi
        at_ends += int(((q == lo) | (q == hi)).sum())
        w = qm.float_model.get_submodule(layer.name).weight.detach()
        o = make_observer(weight)
        o.update(w)
        scale, zp = o.qparams()
        assert torch.equal(layer.weight_scale, scale) and torch.equal(layer.weight_zero_point, zp)
        axis = 0 if weight.per_channel else None
        assert torch.equal(q, quantize(w, scale, zp, "qint8", axis=axis).clamp(lo, hi))
    assert at_ends > 0
    assert bool(torch.isfinite(qm(x)).all())
