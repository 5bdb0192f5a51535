"""The built-in model zoo: digits models trained on first use and cached, benchmark shapes.

``load("digits_cnn")`` trains the model from a fixed seed on scikit-learn's bundled digits
(seconds on a laptop CPU), caches its state_dict under ``data/zoo/`` and returns it in eval
mode; later calls read the cache (``torch.load(weights_only=True)``). The cache directory
is the repository's ``data/`` folder, or ``$QCAL_DATA_DIR``, or the ``data_dir`` argument.
The cache file ``<name>.pt`` holds ``{"zoo_version", "train", "train_seconds", "state_dict"}``
(plain types only), so a cache made by another recipe is recognised as stale. Files are
written atomically, and a missing, unreadable or stale cache is rebuilt. Each model's fp32
test accuracy is stored beside its weights as ``<name>.json``.

The ``*_like`` models are ImageNet-shaped (3x224x224) with realistic random weights, for
timing; they are not trained and have no accuracy.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcal.io.user_models import load_user_model
from qcal.paths import data_dir
from qcal.zoo import architectures as arch
from qcal.zoo.datasets import digits_splits, fingerprint
from qcal.zoo.training import TrainConfig, evaluate, train_classifier

__all__ = [
    "MODELS",
    "ZOO_VERSION",
    "ModelInfo",
    "accuracy",
    "data_dir",
    "evaluate",
    "info",
    "load",
    "load_user_model",
    "metadata",
    "names",
]

ZOO_VERSION = 2  # bump when architectures or training change: older caches are retrained
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the zoo.

    Attributes:
        name: registry key, e.g. "digits_cnn".
        description: one sentence for tables and the dashboard.
        factory: builds the untrained module.
        input_shape: one input's shape, without the batch dim.
        task: "digits" (10-class 8x8 digits) or "benchmark" (224x224, random weights).
        data: the built-in data it is evaluated on ("digits"), or None.
        train: how it is trained, or None for random realistic weights.
        graph_traceable: whether torch.fx.symbolic_trace works (else qcal uses module swap).
    """

    name: str
    description: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    task: str
    data: str | None
    train: TrainConfig | None
    graph_traceable: bool = True

    def accuracy(self, *, data_dir: str | Path | None = None) -> float | None:
        """fp32 test accuracy (trains and caches on first use); None for benchmark models."""
        return accuracy(self.name, data_dir=data_dir)


def _digits(name: str, description: str, factory: Callable[[], nn.Module], epochs: int,
            traceable: bool = True) -> ModelInfo:
    return ModelInfo(name, description, factory, (1, 8, 8), "digits", "digits",
                     TrainConfig(epochs=epochs), traceable)


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        _digits("digits_cnn", "Plain CNN (no BN): conv_3x3_32a (40 filters), conv, pools, 2 linears.",
                arch.DigitsCNN, epochs=10),
        _digits("digits_mobilenet", "Depthwise-separable CNN with BN and ReLU6; folded per-channel "
                "weight ranges differ ~100x, so per-tensor weights lose accuracy.",
                arch.DigitsMobileNet, epochs=15),
        _digits("digits_resnet", "Residual CNN with BN, ReLU, residual adds, max and average pooling.",
                arch.DigitsResNet, epochs=10),
        _digits("digits_mlp", "Multi-layer perceptron: flatten, 3 linear layers with ReLU.",
                arch.DigitsMLP, epochs=40),
        _digits("digits_encoder", "Tiny transformer encoder over the 8 pixel rows (attention_mask "
                "keyword, data-dependent control flow: not fx-traceable, uses module swap).",
                arch.TinyEncoder, epochs=30, traceable=False),
        ModelInfo("resnet18_like", "resnet18 layout (11.7M parameters), random realistic weights, "
                  "for benchmarks.", arch.ResNet18Like, (3, 224, 224), "benchmark", None, None),
        ModelInfo("mobilenet_v2_like", "mobilenet_v2 layout (3.5M parameters), random realistic "
                  "weights, for benchmarks.", arch.MobileNetV2Like, (3, 224, 224), "benchmark", None, None),
    )
}

_LOCK = threading.Lock()  # one trainer at a time in a process; files are atomic across processes


def names() -> list[str]:
    """The registered model names, in registry order."""
    return list(MODELS)


def info(name: str) -> ModelInfo:
    """The registry entry for ``name``.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[name]


def _paths(name: str, root: str | Path | None) -> tuple[Path, Path]:
    folder = data_dir(root) / "zoo"
    return folder / f"{name}.pt", folder / f"{name}.json"


def load(name: str, *, data_dir: str | Path | None = None, progress: Progress | None = None) -> nn.Module:
    """A zoo model in eval mode: trained and cached on first use, read from the cache after.

    Args:
        name: one of ``names()``.
        data_dir: cache root (default ``$QCAL_DATA_DIR`` or the repo's data/).
        progress: optional ``progress(fraction, message)`` callback while training.

    Returns:
        A fresh module (callers may modify it freely) in eval mode. If the cache cannot be
        written (read-only folder), the model is still returned, with a warning.

    Raises:
        ValueError: for an unknown name.
    """
    entry = info(name)
    model = _build(entry)
    if entry.train is None:
        return arch.init_realistic_(model, seed=0)
    state, _ = _cached_or_trained(entry, data_dir, progress)
    model.load_state_dict(state)
    return model.eval()


def metadata(name: str, *, data_dir: str | Path | None = None) -> dict[str, Any]:
    """The JSON record cached beside a digits model's weights (trains on first use).

    Keys: name, zoo_version, accuracy (fp32, held-out test split), train_seconds, train
    (the TrainConfig), weights_fingerprint, torch_version, created (unix time).
    """
    entry = info(name)
    if entry.train is None:
        raise ValueError(f"{name!r} is a benchmark model with random weights; it has no training record")
    return _cached_or_trained(entry, data_dir, None)[1]


def accuracy(name: str, *, data_dir: str | Path | None = None) -> float | None:
    """fp32 top-1 accuracy of a zoo model on the held-out digits test split (None: benchmark)."""
    entry = info(name)
    return None if entry.train is None else float(metadata(name, data_dir=data_dir)["accuracy"])


def _build(entry: ModelInfo) -> nn.Module:
    seed = entry.train.seed if entry.train is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initial weights are part of the recipe
        return entry.factory()


def _cached_or_trained(entry: ModelInfo, root: str | Path | None,
                       progress: Progress | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    weights, record = _paths(entry.name, root)
    with _LOCK:
        cached = _read_weights(weights, entry)
        if cached is None:
            state, seconds = _train(entry, progress)
            meta = _record(entry, state, seconds)
            if _save(weights, _torch_bytes(entry, state, seconds)):
                _save(record, json.dumps(meta, indent=2).encode())
            return state, meta
        state, seconds = cached
        meta = _read_record(record, entry, state)
        if meta is None:  # weights fine, record lost or damaged: re-score only
            meta = _record(entry, state, seconds)
            _save(record, json.dumps(meta, indent=2).encode())
    if progress is not None:
        progress(1.0, f"{entry.name}: loaded from cache")
    return state, meta


def _read_weights(path: Path, entry: ModelInfo) -> tuple[dict[str, torch.Tensor], float | None] | None:
    """The cached (state_dict, training seconds), or None if missing, unreadable or stale."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["zoo_version"] != ZOO_VERSION or saved["train"] != asdict(entry.train):
            return None  # another recipe: retrain
        _build(entry).load_state_dict(saved["state_dict"])  # same keys and shapes as today's
        return saved["state_dict"], saved.get("train_seconds")
    except Exception:  # corrupt, truncated, foreign: the cache is only a cache, retrain
        return None


def _read_record(path: Path, entry: ModelInfo, state: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    fresh = (
        meta.get("zoo_version") == ZOO_VERSION
        and meta.get("train") == asdict(entry.train)
        and meta.get("weights_fingerprint") == _state_fingerprint(state)
        and isinstance(meta.get("accuracy"), float)
    )
    return meta if fresh else None


def _train(entry: ModelInfo, progress: Progress | None) -> tuple[dict[str, torch.Tensor], float]:
    assert entry.train is not None
    if progress is not None:
        progress(0.0, f"{entry.name}: training on digits (first use; cached afterwards)")
    x, y = digits_splits().train
    start = time.perf_counter()
    model = _build(entry)
    with torch.random.fork_rng(devices=[]):
        train_classifier(model, x, y, entry.train, progress=progress)
    seconds = time.perf_counter() - start
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, seconds


def _record(entry: ModelInfo, state: dict[str, torch.Tensor], train_seconds: float | None) -> dict[str, Any]:
    model = _build(entry)
    model.load_state_dict(state)
    x, y = digits_splits().test
    return {
        "name": entry.name,
        "zoo_version": ZOO_VERSION,
        "accuracy": float(evaluate(model.eval(), x, y)),
        "train_seconds": train_seconds,
        "train": asdict(entry.train),
        "weights_fingerprint": _state_fingerprint(state),
        "torch_version": torch.__version__,
        "created": time.time(),
    }


def _state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    keys = sorted(state)
    return fingerprint(*(state[k] for k in keys)) + f"-{len(keys)}"


def _torch_bytes(entry: ModelInfo, state: dict[str, torch.Tensor], seconds: float | None) -> bytes:
    buf = io.BytesIO()
    payload = {"zoo_version": ZOO_VERSION, "train": asdict(entry.train), "train_seconds": seconds,
               "state_dict": state}  # plain types only: loadable with weights_only=True
    torch.save(payload, buf)
    return buf.getvalue()


def _save(path: Path, payload: bytes) -> bool:
    """Cache a file; a read-only or full disk costs a retrain next time, not this load."""
    try:
        _atomic_write(path, payload)
    except OSError as e:
        warnings.warn(f"qcal.zoo.zoo: could not cache {path} ({e}); the model works but will be "
                      f"retrained next time. Set QCAL_DATA_DIR to a writable folder.", stacklevel=4)
        return False
    return True


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; caches are ordinary shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
