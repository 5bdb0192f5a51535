"""Repaired xnnpack models through to_executorch, with ExecuTorch's XNNPACK delegate as the oracle.

equalize and correct_bias change the float model, which exports as any float model does;
AdaRound's learned codes are written into the folded float model as (code - zp) x scale, which
XNNPACKQuantizer's minmax observers turn back into exactly those codes (or the export refuses).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("executorch.runtime", reason="the pt2e extra (requirements-dev.txt installs it)")

from test_xnnpack_schemes import (  # the CNN with conv-BN, depthwise, grouped, residual add
    _data,
    _model,
)

import qcal
from qcal.calibration.model import QuantizedModel
from qcal.export.executorch import run_executorch
from qcal.repair.written import learned_layers, moved_codes

ADAROUND = ("adaround", {"iterations": 30, "samples": 48, "seed": 0})


@pytest.mark.parametrize(("preset", "repairs"), [
    ("xnnpack_per_tensor", ["equalize"]),
    ("xnnpack_default", ["equalize", "correct_bias"]),
    ("xnnpack_per_tensor", [ADAROUND]),
    ("xnnpack_default", [ADAROUND, "correct_bias"]),
], ids=lambda p: p if isinstance(p, str) else "+".join(r if isinstance(r, str) else r[0] for r in p))
def test_a_repaired_xnnpack_model_exports_and_the_delegate_computes_qcals_values(preset, repairs, tmp_path):
    (calib, x), model = _data(), _model()
    qm = qcal.apply_recipe(model, calib, qcal.with_repairs(preset, repairs), backend="xnnpack")
    if ADAROUND in repairs:  # the codes moved from round-to-nearest's, each one reproducible
        plain = qcal.calibrate(model, calib, preset, "xnnpack")
        assert any(not torch.equal(qm.quant_layers[n].weight_q, plain.quant_layers[n].weight_q) for n in qm.quant_layers)
        assert set(moved_codes(qm).values()) <= {0}
        # bias correction re-observes a float model that holds the codes: nothing left to write
        assert bool(learned_layers(qm)) == ("correct_bias" not in repairs)
    path = qcal.to_executorch(qm, tmp_path / "repaired.pte", x)
    delegate = run_executorch(path, x)[0]
    assert int((qm(x) != delegate).sum()) == 0


def test_learned_codes_minmax_observers_cannot_give_back_are_refused_with_the_reason(tmp_path):
    (calib, x), model = _data(), _model()
    qm = qcal.apply_recipe(model, calib, qcal.with_repairs("xnnpack_default", [ADAROUND]), backend="xnnpack")
    layer = qm.quant_layers["fc"]
    codes = layer.weight_q.clone()
    top = int(model.fc.weight[0].argmax())
    codes[0, top] -= 1  # channel 0's largest weight: its code sets the range the observer sees
    layers = {**qm.quant_layers, "fc": dataclasses.replace(layer, weight_q=codes)}
    edited = QuantizedModel(float_model=qm.float_model, scheme=qm.scheme, backend=qm.backend, mode=qm.mode,
                            fallback_reason=qm.fallback_reason, graph=qm.graph, layers=layers,
                            activations=qm.activations, reproduce_torch_bugs=qm.reproduce_torch_bugs, recipe=qm.recipe)
    assert moved_codes(edited)["fc"] >= 1
    with pytest.raises(ValueError, match=r"other codes for \d+ weights \(.*fc: \d+.*min or max weight"):
        qcal.to_executorch(edited, tmp_path / "edited.pte", x)
