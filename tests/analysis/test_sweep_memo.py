"""Step values shared between a sweep's recipes (``qcal.graph.memo``): the same numbers as
plain runs, whatever the recipe, the backend or in-place fp32 modules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import qcal
import qcal.analysis.sweep as sweep_module
from qcal.calibration.calibrate import Calibrated
from qcal.graph.memo import StepMemo, program_keys
from qcal.recipes import Recipe
from qcal.schemes import resolve_scheme


class Residual(nn.Module):
    """conv-bn-relu(inplace), a residual join, max pool, global pool, linear; and a value that a
    layer reads and an in-place Hardtanh then changes (a stored value must not change)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                  nn.Conv2d(8, 8, 3, padding=1, groups=8))
        self.relu = nn.ReLU(inplace=True)
        self.act = nn.Hardtanh(0.0, 0.25, inplace=True)  # changes most values
        self.pool = nn.MaxPool2d(2)
        self.tail = nn.Conv2d(8, 16, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.body(x)
        x = self.relu(self.act(x) + y)
        x = self.relu(self.tail(self.pool(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = Residual().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 3, 12, 12, generator=g) for _ in range(2)]
    x = torch.randn(24, 3, 12, 12, generator=g)
    return model, calib, x


def _recipes(layers: list[str], scheme) -> list[Recipe]:
    out = [Recipe(scheme, name="int8"), Recipe(None, name="fp32")]
    for layer in layers:
        out += [Recipe(None, {layer: scheme}, name=f"only {layer}"), Recipe(scheme, {layer: None}, name=f"but {layer}")]
    return out


@pytest.mark.parametrize("backend", ["fbgemm", "qnnpack", "ort", "onnx"])
def test_memo_runs_equal_plain_runs_for_every_one_layer_variant(case, backend):
    model, calib, x = case
    scheme = resolve_scheme("per_tensor_symmetric" if backend == "onnx" else "per_tensor_affine")
    cal = Calibrated(model, calib, lambda layers: _recipes(layers, scheme))
    recipes = _recipes(cal.layers, scheme)
    memo = StepMemo()
    for base in recipes[:2]:
        memo.run(cal.build(base, backend), x, 0, store=True)
    assert memo.used > 0
    for recipe in recipes:
        qm = cal.build(recipe, backend)
        assert torch.equal(memo.run(qm, x, 0), qm(x)), recipe.name
    assert memo.hits > 0  # the variants did read stored values


@settings(max_examples=12, deadline=None)
@given(fp32=st.sets(st.integers(0, 4)), base=st.sampled_from(["int8", "fp32"]))
def test_any_recipe_run_from_a_base_memo_equals_its_plain_run(case, fp32, base):
    model, calib, x = case
    scheme = resolve_scheme("fbgemm_default")
    cal = Calibrated(model, calib, [Recipe(scheme)])
    memo = StepMemo()
    memo.run(cal.build(Recipe(scheme if base == "int8" else None, name=base), "fbgemm"), x, 0, store=True)
    layers = {cal.layers[i % len(cal.layers)]: None for i in fp32}
    qm = cal.build(Recipe(scheme, layers), "fbgemm")
    assert torch.equal(memo.run(qm, x, 0), qm(x))


def test_keys_follow_content_not_objects(case):
    model, calib, _x = case
    a, b = resolve_scheme("per_tensor_affine"), resolve_scheme("per_channel_symmetric")
    cal = Calibrated(model, calib, [Recipe(a), Recipe(b)])
    one, again, other = cal.build(a, "fbgemm"), cal.build(a, "fbgemm"), cal.build(b, "fbgemm")
    k1, k2 = program_keys(one.runtime(), one.quant_layers), program_keys(again.runtime(), again.quant_layers)
    k3 = program_keys(other.runtime(), other.quant_layers)
    assert one.runtime() is not again.runtime() and k1 == k2  # two builds of one recipe share every key
    first_layer = next(i for i, s in enumerate(one.graph.steps) if s.kind == "conv")
    assert k1[first_layer] != k3[first_layer]  # other weights, other key
    assert program_keys(cal.build(a, "qnnpack").runtime(), one.quant_layers)[1] != k1[1]  # other backend


@pytest.mark.parametrize("backend", ["fbgemm", "qnnpack"])
def test_sensitivity_with_shared_steps_equals_sensitivity_without(case, backend, monkeypatch):
    model, calib, x = case
    evals = [(x[:12], None), (x[12:], None)]
    shared = qcal.sensitivity(model, calib, evals, "fbgemm_default", backend)
    monkeypatch.setattr(sweep_module, "_memo", lambda shared_eval: None)
    plain = qcal.sensitivity(model, calib, evals, "fbgemm_default", backend)
    assert shared[["layer", "mode", "value", "sqnr_db"]].equals(plain[["layer", "mode", "value", "sqnr_db"]])


def test_a_small_budget_stores_less_and_changes_nothing(case):
    model, calib, x = case
    scheme = resolve_scheme("per_tensor_affine")
    cal = Calibrated(model, calib, lambda layers: _recipes(layers, scheme))
    memo = StepMemo(budget_bytes=x.numel())  # about one fp32 value of the first layers
    memo.run(cal.build(Recipe(None, name="fp32"), "fbgemm"), x, 0, store=True)
    assert 0 < memo.used <= x.numel()
    for recipe in _recipes(cal.layers, scheme)[2:]:
        qm = cal.build(recipe, "fbgemm")
        assert torch.equal(memo.run(qm, x, 0), qm(x)), recipe.name


def test_a_trace_keeps_the_fp32_value_an_in_place_module_later_changes(case):
    # the value stem.0 computes is changed in place by the Hardtanh after body.0 read it; the
    # trace's fp32 reference is the value as stem.0 computed it (not as it was left)
    model, calib, x = case
    with torch.no_grad():
        stem = model.stem(x).clone()  # what stem.0 (conv-bn-relu) computes
    qm = qcal.calibrate(model, calib, "fbgemm_default")
    fp32 = qm.trace(x)["stem.0"].fp32
    assert torch.allclose(fp32, stem, atol=1e-5)
    assert float(stem.max()) > 0.5  # the Hardtanh (max 0.25) would have changed it
