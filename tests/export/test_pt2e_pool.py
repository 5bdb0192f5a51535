"""Pooling and concatenation as XNNPACKQuantizer annotates them, against ExecuTorch's XNNPACK delegate.

Global average pooling (adaptive_avg_pool2d to 1x1, mean over H and W) is requantized by XNNPACK's
qs8 mean (zero point added before rounding); cat copies codes that share one quantization. The
pool is the model's output in the first test, so any pooled value qcal got wrong shows.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("executorch.runtime", reason="the pt2e extra (requirements-dev.txt installs it)")

import qcal
from qcal.export.executorch import lower_to_executorch, run_executorch
from qcal.export.pt2e_examples import quantize_pt2e


class Pooled(nn.Module):
    def __init__(self, relu: bool, how: str):
        super().__init__()
        self.c = nn.Conv2d(1, 6, 3, padding=1)
        self.relu, self.how = relu, how

    def forward(self, x):
        y = torch.relu(self.c(x)) if self.relu else self.c(x)
        y = nn.functional.adaptive_avg_pool2d(y, 1) if self.how == "adaptive" else y.mean((2, 3), keepdim=True)
        return y.flatten(1)


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.c(torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)))
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def _delegate_and_qcal(model: nn.Module, x: torch.Tensor, per_channel: bool = True):
    converted = quantize_pt2e(model.eval(), x, per_channel=per_channel)
    return converted, run_executorch(lower_to_executorch(converted, (x,)), x)[0], qcal.from_pt2e(converted)(x)


@pytest.mark.parametrize("relu, how, hw, seed", [(True, "adaptive", 7, 0), (False, "adaptive", 8, 1),
                                                 (False, "mean", 8, 2), (True, "mean", 13, 3)])
def test_global_average_pooling_equals_the_delegate(relu, how, hw, seed):
    torch.manual_seed(seed)
    x = torch.randn(64, 1, hw, hw) * 2
    converted, delegate, mine = _delegate_and_qcal(Pooled(relu, how), x)
    assert "mean" in qcal.from_pt2e(converted).fused_nodes[-1] or "pool" in qcal.from_pt2e(converted).fused_nodes[-1]
    assert int((mine != delegate).sum()) == 0


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
def test_concatenation_and_pooling_in_one_model_equal_the_delegate(per_channel):
    torch.manual_seed(5)
    x = torch.randn(40, 1, 8, 8) * 2
    converted, delegate, mine = _delegate_and_qcal(Branches(), x, per_channel)
    assert int((mine != delegate).sum()) == 0
    gap = qcal.simulation_gap(converted, x)
    assert gap.logits == int((converted(x) != delegate).sum())
    frame = gap.layers
    assert "adaptive_avg_pool2d" in set(frame["op"])
    assert (frame[["inherited", "accumulation", "rounding", "clamping", "other"]].sum(axis=1) == frame["differing"]).all()


class _Refused(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.c, self.pool = nn.Conv2d(1, 4, 3, padding=1), pool

    def forward(self, x):
        return self.pool(torch.relu(self.c(x))).flatten(1)


@pytest.mark.parametrize("pool, reason", [(nn.AdaptiveAvgPool2d(2), "not a global average pooling"),
                                          (nn.AvgPool2d(2), "avg_pool2d")])
def test_other_pooling_is_refused_with_the_reason(pool, reason):
    x = torch.randn(8, 1, 8, 8)
    converted = quantize_pt2e(_Refused(pool).eval(), x)
    with pytest.raises(ValueError, match=reason):
        qcal.from_pt2e(converted)(x)
