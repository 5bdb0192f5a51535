"""PT2E in, ExecuTorch out: qcal's xnnpack flavour against ExecuTorch's XNNPACK delegate itself.

Two small CNNs of our own (depthwise-separable with a grouped conv; residual with an add),
quantized by XNNPACKQuantizer per channel and per tensor, lowered with XnnpackPartitioner and
run by executorch.runtime: qcal.from_pt2e(converted)(x) must equal the delegate's output in
every value. torch's own converted module (the simulation) is counted beside it, not asserted.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("executorch.runtime", reason="the pt2e extra (requirements-dev.txt installs it)")

import qcal
from qcal.export.executorch import lower_to_executorch, run_executorch


class Separable(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=4)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        y = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.c1(x))))))
        return self.fc(self.grouped(y).flatten(1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        return self.fc(torch.relu(self.c3(torch.relu(self.c2(y))) + y).flatten(1))


def _converted(model: nn.Module, x: torch.Tensor, per_channel: bool, seed: int):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    g = torch.Generator().manual_seed(seed)
    prepared(torch.randn(x.shape, generator=g) * 2)
    return convert_pt2e(prepared)


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("model_cls", [Separable, Residual])
def test_from_pt2e_equals_the_xnnpack_delegate_in_every_value(model_cls, per_channel):
    torch.manual_seed(1)
    model = model_cls().eval()
    x = torch.randn(50, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2
    converted = _converted(model, x, per_channel, seed=3)
    delegate = run_executorch(lower_to_executorch(converted, (x,)), x)[0]
    mine = qcal.from_pt2e(converted, backend="xnnpack")(x)
    simulated = converted(x)
    differing = int((mine != delegate).sum())
    print(f"{model_cls.__name__} {'per channel' if per_channel else 'per tensor'}: qcal vs delegate "
          f"{differing}, torch's simulation vs delegate {int((simulated != delegate).sum())} of {delegate.numel()}")
    assert differing == 0


def test_to_executorch_round_trip_and_refusals(tmp_path):
    torch.manual_seed(4)
    x = torch.randn(8, 1, 8, 8) * 2
    pm = qcal.from_pt2e(_converted(Residual().eval(), x, True, seed=5))
    path = qcal.to_executorch(pm, tmp_path / "residual.pte", x)
    assert torch.equal(run_executorch(path, x)[0], pm(x))
    assert set(pm.codes(x)) == set(pm.fused_nodes) and len(pm.fused_nodes) == 5  # 4 conv/linear + add
    with pytest.raises(ValueError, match="from_pt2e"):
        qcal.to_executorch(object(), tmp_path / "no.pte", x)
    with pytest.raises(ValueError, match="'xnnpack' only"):
        qcal.from_pt2e(pm.converted, backend="x86")


def test_missing_extra_names_the_install_command(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_executorch(name, *args, **kwargs):
        if name.startswith("executorch"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_executorch)
    with pytest.raises(ImportError, match=r"pip install 'qcal\[pt2e\]'"):
        qcal.from_pt2e(None)
