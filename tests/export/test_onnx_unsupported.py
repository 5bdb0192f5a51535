"""Ops ``to_onnx`` cannot write exactly are refused by name (the op and its layer), no file left.

avg_pool2d (module and function), an adaptive average pool to anything but (1, 1), a linear
layer on a 4-D input (ONNX Gemm takes (batch, features)), torch.cat, a shape read: each
either exports exactly (the zoo tests) or fails here with a message naming what and where.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcal
from qcal.export.onnx import UnsupportedExport

pytestmark = pytest.mark.usefixtures("one_thread")


class _Conv(nn.Module):
    def __init__(self, pool: nn.Module | None = None, fc_in: int = 8 * 4 * 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = pool
        self.fc = nn.Linear(fc_in, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))


class _AvgPoolFunction(_Conv):
    def forward(self, x):
        return self.fc(torch.flatten(F.avg_pool2d(F.relu(self.conv(x)), 2), 1))


class _LinearOn4d(_Conv):
    def forward(self, x):
        return self.fc(F.relu(self.conv(x)))  # over the last (width) dim of (N, C, H, W)


class _Cat(_Conv):
    def forward(self, x):
        y = F.relu(self.conv(x))
        return self.fc(torch.flatten(F.max_pool2d(torch.cat([y, y], 1), 4), 1))


class _ShapeRead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


CASES = {
    "avg_pool2d module": (lambda: _Conv(nn.AvgPool2d(2)), r"layer 'pool' \(AvgPool2d\): avg_pool2d has no export"),
    "avg_pool2d function": (_AvgPoolFunction, r"avg_pool2d at graph node 'avg_pool2d'"),
    "adaptive pool to 2x2": (lambda: _Conv(nn.AdaptiveAvgPool2d((2, 2)), 32),
                             r"layer 'pool' \(AdaptiveAvgPool2d\): adaptive_avg_pool2d exports to \(1, 1\) only"),
    "linear on 4-D": (lambda: _LinearOn4d(None, 8), r"layer 'fc' \(Linear\): a linear layer on a 4-D input"),
    "cat": (lambda: _Cat(None, 16 * 2 * 2), r"cat at graph node 'cat': torch.cat has no export"),
    "shape read": (_ShapeRead, r"reading a tensor's shape"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unsupported_op_is_named(case, tmp_path):
    build, message = CASES[case]
    x = torch.rand(16, 1, 8, 8)
    qm = qcal.calibrate(build().eval(), [x], "fbgemm_default", "ort", mode="graph")
    with pytest.raises(UnsupportedExport, match=message):
        qcal.to_onnx(qm, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    assert not (tmp_path / "m.onnx").exists()
