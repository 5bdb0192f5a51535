"""Run-store fixtures shared by tests/store and tests/test_errors.py: frames, metadata, read-only folders.

A plain module beside conftest.py (tests/ is on sys.path through it), like wholemodel_cases.py.
"""

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

ENV = {"torch_version": "2.13.0+cpu", "cpu_capability": "AVX512", "vnni": True, "qcal_version": "0.1.0"}


def make_frames(seed: int = 0) -> dict[str, pd.DataFrame]:
    """The five comparison frames plus qm.layers()-style list cells, with NaN, inf and unicode."""
    rng = np.random.default_rng(seed)
    schemes, layers = ["per_tensor_affine", "fbgemm_default"], ["conv₁", "fc/ü", "头"]
    summary = pd.DataFrame({
        "scheme": schemes, "backend": ["fbgemm", "qnnpack"], "metric": ["accuracy", "agreement"],
        "value": rng.random(2), "fp32_value": [0.97, np.nan], "drop": [0.01, np.nan],
        "cosine": rng.random(2), "int8_bytes": np.array([1234, 99], dtype=np.int64), "seconds": [0.5, 1.25],
    })  # fmt: skip
    grid = [(s, layer) for s in schemes for layer in layers]
    layer_frame = pd.DataFrame({
        "scheme": [s for s, _ in grid], "backend": "fbgemm", "layer": [layer for _, layer in grid],
        "kind": "Conv2d", "sqnr_db": [np.inf, *rng.normal(30, 5, len(grid) - 1)],
        "mse": rng.random(len(grid)), "cosine": rng.random(len(grid)),
    })  # fmt: skip
    scales = pd.DataFrame({
        "scheme": "per_channel_affine", "layer": "conv₁", "tensor": ["weight"] * 3 + ["activation"],
        "channel": np.array([0, 1, 2, -1], dtype=np.int64), "scale": rng.random(4) / 100,
        "zero_point": np.array([0, 0, 0, 128], dtype=np.int64), "min": -rng.random(4), "max": rng.random(4),
    })  # fmt: skip
    edges = np.linspace(-1, 1, 9)
    histograms = pd.DataFrame({
        "scheme": "fbgemm_default", "layer": "fc/ü", "observer": "histogram", "bin_left": edges[:-1],
        "bin_right": edges[1:], "count": rng.integers(0, 100, 8), "clip_min": -0.9, "clip_max": 0.8,
    })  # fmt: skip
    samples = pd.DataFrame({
        "scheme": "fbgemm_default", "backend": "fbgemm", "layer": rng.choice(layers, 200),
        "fp32": rng.normal(size=200).astype(np.float32), "int8_dequantized": rng.normal(size=200),
    })  # fmt: skip
    qm_layers = pd.DataFrame({
        "name": layers, "kind": ["Conv2d", "Linear", "Linear"], "weight_scale": [[0.01, 0.02], [0.5], []],
        "weight_zero_point": [[0, 0], [0], []], "requant_scale": [[1e-3, 2e-3], [3e-4], []],
        "saturated_pairs": np.array([0, 3, 0]), "per_channel": [True, False, False],
    })  # fmt: skip
    return {"summary": summary, "layers": layer_frame, "scales": scales, "histograms": histograms,
            "samples": samples, "qm_layers": qm_layers}  # fmt: skip


META = {"model": "digits_mlp", "model_source": "zoo:digits_mlp", "data_fingerprint": "sha256:ab12",
        "data_description": "8×8 digits, 360 images", "schemes": ["per_tensor_affine", "fbgemm_default"],
        "backends": ["fbgemm", "qnnpack"], "title": "première comparaison — 頭", **ENV}  # fmt: skip


def assert_same_frames(actual: dict[str, pd.DataFrame], expected: dict[str, pd.DataFrame]) -> None:
    assert list(actual) == list(expected)
    for name, frame in expected.items():
        assert_frame_equal(actual[name], frame, check_dtype=True, check_exact=True, obj=name)


@contextmanager
def read_only(folder: Path):
    """Make ``folder`` read-only for this process: chmod, or as root (who ignores modes) chattr +i."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield
        folder.chmod(0o755)
        return
    items = [folder, *folder.iterdir()]
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", *map(str, items)], capture_output=True).returncode:
        pytest.skip("running as root without a working chattr: no way to make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, items)], check=True)
