"""Export a zoo model and check the file in onnxruntime: the check users run on their machine.

``export_zoo`` calibrates a built-in model on the digits calibration split under one scheme
(on the ``"ort"`` flavour) and writes it with ``to_onnx``; ``verify_onnx`` runs a file in
``onnxruntime`` (CPU EP, default session options) and counts the output values that differ
from qcal's ``ort`` flavour: 0 when qcal predicted this machine's onnxruntime bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qcal.export.onnx import to_onnx
from qcal.int8.backends.ort import ort_environment

__all__ = ["Verification", "export_zoo", "verify_onnx"]


@dataclass(frozen=True)
class Verification:
    """onnxruntime's outputs against qcal's ort flavour on the same inputs.

    Attributes:
        differing: output values that differ (0: bit for bit).
        total: output values compared.
        samples: inputs run.
        onnxruntime_version, instruction_set: what ran and what qcal assumed.
    """

    differing: int
    total: int
    samples: int
    onnxruntime_version: str
    instruction_set: str

    def __str__(self) -> str:
        return (f"{self.differing} differing values of {self.total} ({self.samples} samples; onnxruntime "
                f"{self.onnxruntime_version}, {self.instruction_set})")


def export_zoo(model_name: str, scheme: str | Any, path: str | Path) -> tuple[Any, Path]:
    """Calibrate zoo model ``model_name`` under ``scheme`` (a preset name, Scheme or Recipe;
    ort flavour) as the stored runs and the dashboard calibrate it (same data, same batches,
    so the same file as the Compare page's download) and write it as ONNX.

    Returns:
        (the QuantizedModel, the path written).
    """
    from qcal.calibration.calibrate import calibrate
    from qcal.zoo.datasets import ZOO_BATCH, calib_batches
    from qcal.zoo.registry import input_shape_of, load_named

    named = load_named(model_name)
    qm = calibrate(named.model, calib_batches(named.calib, batch_size=ZOO_BATCH), scheme, "ort")
    return qm, to_onnx(qm, path, input_shape=input_shape_of(model_name))


def verify_onnx(path: str | Path, qm: Any, x: torch.Tensor, batch_size: int = 256) -> Verification:
    """Run ``path`` in onnxruntime on ``x`` and count the values differing from ``qm.with_backend("ort")(x)``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mine = qm.with_backend("ort") if qm.backend != "ort" else qm
    differing = total = 0
    for i in range(0, len(x), batch_size):
        batch = x[i:i + batch_size]
        (theirs,) = sess.run(None, {"input": batch.numpy().astype(np.float32)})
        ours = mine(batch).numpy()
        if theirs.shape != ours.shape:
            raise ValueError(f"{path}: onnxruntime returned shape {theirs.shape}, qcal {ours.shape}")
        differing += int((theirs != ours).sum())
        total += ours.size
    env = ort_environment()
    return Verification(differing, total, len(x), env["onnxruntime_version"], env["ort_instruction_set"])
