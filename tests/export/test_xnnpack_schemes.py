"""qcal's XNNPACK presets against XNNPACKQuantizer, and to_executorch from them against the delegate.

The oracles: torchao's prepare_pt2e/convert_pt2e with XNNPACKQuantizer's
get_symmetric_quantization_config on the same calibration batches (every scale, zero point,
weight code and bias equal), and ExecuTorch's XNNPACK delegate itself (0 differing values).
torch's converted module (the simulation) is counted beside the delegate, not asserted.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("executorch.runtime", reason="the pt2e extra (requirements-dev.txt installs it)")

from test_pt2e import (  # tests/export/test_pt2e.py's CNNs (torch.relu, grouped, add)
    Residual,
    Separable,
)

import qcal
from qcal.export.executorch import run_executorch
from qcal.export.pt2e_qparams import pt2e_qparams, qcal_qparams, qparam_differences
from qcal.export.scheme_pt2e import to_pt2e

PRESETS = [("xnnpack_default", True), ("xnnpack_per_tensor", False)]
# weights reaching -128 (no quant_min/quant_max): the delegate takes them (weight_qmin=-128)
FULL_RANGE = qcal.Scheme("full_range_weights", qcal.QSpec("qint8", "per_channel_symmetric", options={"eps": 2.0**-12}),
                         qcal.SCHEMES["xnnpack_default"].activation)


class Net(nn.Module):
    """conv-ReLU, depthwise conv-BN-ReLU, grouped conv, a residual add-ReLU, max pooling, linear."""

    def __init__(self, relu=F.relu):
        super().__init__()
        self.act = relu
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)  # folded by qcal and by prepare_pt2e, each in its own code
        self.pw = nn.Conv2d(8, 8, 1)
        self.grouped = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):  # (N, 1, 8, 8) -> (N, 10)
        y = self.relu(self.c1(x))
        z = F.relu(self.pw(self.act(self.bn(self.dw(y)))) + y)
        return self.fc(torch.flatten(self.grouped(F.max_pool2d(z, 2)), 1))


def _data(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    calib = [torch.randn(16, 1, 8, 8, generator=g) * 2 for _ in range(3)]
    return calib, torch.randn(50, 1, 8, 8, generator=g) * 2


def _model(**kwargs) -> nn.Module:
    torch.manual_seed(1)
    model = Net(**kwargs)
    for p in (model.bn.running_mean, model.bn.bias):
        p.data.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    model.bn.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _xnnpack_quantizer_model(model, calib, per_channel):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    prepared = prepare_pt2e(torch.export.export(model, (calib[0],)).module(), quantizer)
    for batch in calib:
        prepared(batch)
    return convert_pt2e(prepared)


@pytest.mark.parametrize(("preset", "per_channel"), PRESETS)
def test_preset_qparams_equal_xnnpack_quantizers_on_the_same_batches(preset, per_channel):
    model, (calib, _) = _model(), _data()
    qm = qcal.calibrate(model, calib, preset)
    theirs = pt2e_qparams(_xnnpack_quantizer_model(model, calib, per_channel))
    mine = qcal_qparams(qm)
    assert qm.backend == "xnnpack" and len(mine) == 27  # 5 layers x 5 entries, the input, the add
    assert qparam_differences(mine, theirs) == []
    assert all(set(v[1]) == {0} for k, v in mine.items() if k.endswith(" weight"))  # symmetric: zero points 0


@pytest.mark.parametrize(("preset", "model_cls"), [
    ("xnnpack_default", Net), ("xnnpack_per_tensor", Net), (FULL_RANGE, Net),
    ("xnnpack_default", Separable), ("xnnpack_per_tensor", Residual),  # torch.relu: fused, as XNNPACKQuantizer does
], ids=lambda p: getattr(p, "name", getattr(p, "__name__", p)))
def test_to_executorch_of_a_calibrated_preset_equals_the_delegate(preset, model_cls, tmp_path):
    torch.manual_seed(1)
    (calib, x), model = _data(), (_model() if model_cls is Net else model_cls().eval())
    qm = qcal.calibrate(model, calib, preset, "xnnpack")
    if preset is FULL_RANGE:
        assert min(int(layer.weight_q.min()) for layer in qm.quant_layers.values()) == -128
    path = qcal.to_executorch(qm, tmp_path / "model.pte", x)
    delegate = run_executorch(path, x)[0]
    differing = int((qm(x) != delegate).sum())
    simulated = int((to_pt2e(qm, (x,))(x) != delegate).sum())
    print(f"{model_cls.__name__} {qm.scheme.name}: qcal vs delegate {differing}, torch's converted module vs delegate {simulated} "
          f"of {delegate.numel()}")
    assert differing == 0


def test_to_executorch_refuses_what_xnnpack_cannot_run(tmp_path):
    model, (calib, x) = _model(), _data()
    with pytest.raises(ValueError, match=r"'xnnpack' flavour.*got a QuantizedModel of backend 'fbgemm'"):
        qcal.to_executorch(qcal.calibrate(model, calib, "fbgemm_default"), tmp_path / "a.pte", x)
    with pytest.raises(ValueError, match="from_pt2e"):
        qcal.to_executorch(object(), tmp_path / "b.pte", x)
    moved = qcal.calibrate(model, calib, "per_tensor_affine").with_backend("xnnpack")
    with pytest.raises(ValueError, match="cannot run on xnnpack: quint8 activations"):
        qcal.to_executorch(moved, tmp_path / "b.pte", x)
    swapped = qcal.calibrate(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid()).eval(), calib, "xnnpack_default",
                             mode="modules")
    with pytest.raises(ValueError, match="graph-mode QuantizedModel"):
        qcal.to_executorch(swapped, tmp_path / "c.pte", x)
    # torch's default eps (1.2e-7) where XNNPACKQuantizer's weights take 2**-12: a channel with
    # max|w| < 2**-12 * 127 gets another scale, and the export names the entry
    model.c1.weight.data[0] *= 1e-3
    torch_eps = qcal.Scheme("torch_eps", qcal.QSpec("qint8", "per_channel_symmetric", quant_min=-127, quant_max=127),
                            qcal.SCHEMES["xnnpack_default"].activation)
    with pytest.raises(ValueError, match=r"entries: c1 weight: qcal .*, PT2E \(\(0\.000244140625, "):
        qcal.to_executorch(qcal.calibrate(model, calib, torch_eps, "xnnpack"), tmp_path / "d.pte", x)
