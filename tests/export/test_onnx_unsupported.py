"""Pools and ops beyond the zoo: exported exactly, or refused by name (the op and its layer).

avg_pool2d (module and function, padding, ceil_mode) exports as AveragePool, which
onnxruntime fuses into QLinearAveragePool: 0 differing values against the ort flavour. An
avg_pool2d with divisor_override, an adaptive average pool to anything but (1, 1), a linear
layer on a 4-D input (ONNX Gemm takes (batch, features)), torch.cat and a shape read fail with
a message naming what and where, and leave no file.
"""

from __future__ import annotations

import onnx
import onnxruntime as ort
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
        return self.fc(torch.flatten(F.avg_pool2d(F.relu(self.conv(x)), 3, 2, 1, ceil_mode=True,
                                                  count_include_pad=False), 1))


class _DivisorOverride(_Conv):
    def forward(self, x):
        return self.fc(torch.flatten(F.avg_pool2d(F.relu(self.conv(x)), 2, divisor_override=3), 1))


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
    "divisor_override": (_DivisorOverride, r"avg_pool2d at graph node 'avg_pool2d': avg_pool2d with divisor_override"),
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


@pytest.mark.parametrize("build", [lambda: _Conv(nn.AvgPool2d(2)), lambda: _Conv(nn.AvgPool2d(3, 1, 1), 8 * 8 * 8),
                                   lambda: _AvgPoolFunction(None, 8 * 5 * 5)], ids=["module", "module-padded", "function-ceil"])
def test_avg_pool_exports_exactly(build, tmp_path):
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8)
    qm = qcal.calibrate(build().eval(), [x], "fbgemm_default", "ort", mode="graph")
    path = qcal.to_onnx(qm, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    (theirs,) = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert "QLinearAveragePool" in [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    assert int((qm(x).numpy() != theirs).sum()) == 0
