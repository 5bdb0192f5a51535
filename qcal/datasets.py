"""Data for qcal: the bundled digits splits, batching helpers and users' own tensor files.

The built-in task is scikit-learn's bundled 8x8 handwritten digits (1797 images, no
download): fixed, seeded splits for training, calibration and held-out testing. Users bring
their own calibration/evaluation data as tensor files (``.pt``/``.pth``, ``.npz``/``.npy``,
``.safetensors``); those are read as data only — ``torch.load(weights_only=True)``,
``np.load(allow_pickle=False)`` — so a file can never run code.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DIGITS_SPLIT_SIZES",
    "INPUT_KEYS",
    "LABEL_KEYS",
    "TENSOR_SUFFIXES",
    "DigitsSplits",
    "batches",
    "calib_batches",
    "digits_splits",
    "fingerprint",
    "load_tensors",
]

DIGITS_SPLIT_SIZES: tuple[int, int, int] = (1000, 200, 597)  # train, calib, test: all 1797
DEFAULT_MAX_BYTES = 512 * 2**20  # 512 MiB: plenty for calibration data, small enough for a laptop
TENSOR_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".npz", ".npy", ".safetensors")
INPUT_KEYS: tuple[str, ...] = ("inputs", "input", "x", "data", "images", "features")
LABEL_KEYS: tuple[str, ...] = ("labels", "label", "y", "targets", "target")

Pair = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class DigitsSplits:
    """The digits data split three ways; each split is ``(x, y)``.

    ``x`` is float32 of shape (N, 1, 8, 8) with pixels scaled to [0, 1] (the raw 0..16
    counts divided by 16); ``y`` is int64 of shape (N,) with classes 0..9.

    Attributes:
        train: 1000 images the zoo models are trained on.
        calib: 200 images for calibration (never trained on, never scored).
        test: 597 held-out images every accuracy is reported on.
    """

    train: Pair
    calib: Pair
    test: Pair


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)


def digits_splits(seed: int = 0) -> DigitsSplits:
    """Deterministic train/calib/test splits of scikit-learn's bundled digits.

    Args:
        seed: seeds the one permutation of the 1797 images; the same seed always gives
            the same splits (on any machine: numpy's PCG64 stream is stable).

    Returns:
        DigitsSplits with 1000 / 200 / 597 images; fresh tensors on every call.

    Example:
        >>> s = digits_splits()
        >>> s.train[0].shape, s.test[1].dtype
        (torch.Size([1000, 1, 8, 8]), torch.int64)
    """
    images, labels = _digits_arrays()
    order = np.random.default_rng(seed).permutation(len(labels))
    n_train, n_calib, _ = DIGITS_SPLIT_SIZES
    cuts = np.split(order, [n_train, n_train + n_calib])
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 8, 8) -> (N, 1, 8, 8)
    y = torch.from_numpy(labels)
    train, calib, test = ((x[torch.from_numpy(i)].clone(), y[torch.from_numpy(i)].clone()) for i in cuts)
    return DigitsSplits(train=train, calib=calib, test=test)


def batches(x: Tensor, y: Tensor | None = None, batch_size: int = 64) -> list[tuple[Tensor, Tensor | None]]:
    """Cut inputs (and labels) into evaluation batches, in order.

    Args:
        x: inputs, batch along dim 0.
        y: labels with ``len(y) == len(x)``, or None (then each batch's label is None).
        batch_size: rows per batch (the last one may be shorter).

    Returns:
        A list of ``(x_batch, y_batch)`` pairs, as ``qcal.compare`` takes for ``eval_data``.
    """
    _check_batch_size(batch_size)
    if y is not None and len(y) != len(x):
        raise ValueError(f"labels have {len(y)} rows but inputs have {len(x)}; they must match")
    return [
        (x[i : i + batch_size], None if y is None else y[i : i + batch_size])
        for i in range(0, len(x), batch_size)
    ]


def calib_batches(x: Tensor, batch_size: int = 64, max_batches: int | None = None) -> list[Tensor]:
    """Cut inputs into calibration batches (tensors only), optionally capped in number.

    Args:
        x: inputs, batch along dim 0.
        batch_size: rows per batch.
        max_batches: keep at most this many batches (None: all).

    Returns:
        A list of tensors, as ``qcal.calibrate`` takes for ``calib_data``.
    """
    _check_batch_size(batch_size)
    out = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    return out if max_batches is None else out[:max_batches]


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


@torch.no_grad()
def fingerprint(*tensors: Tensor | None) -> str:
    """A short, stable identity for data: sha256 over dtypes, shapes and raw bytes.

    Saved runs record it so that two runs can be told to have used the same data.

    Args:
        *tensors: tensors (None entries are recorded as absent, so (x, None) != (x,)).

    Returns:
        The first 16 hex digits of the digest.
    """
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"fingerprint takes tensors or None, got {type(t).__name__}")
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype};{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- users' tensor files

_ACCEPTED = (
    "a tensor; a dict with an inputs key (" + "/".join(INPUT_KEYS) + ") and optionally a labels "
    "key (" + "/".join(LABEL_KEYS) + "); or an (inputs, labels) tuple/list"
)


def load_tensors(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Tensor, Tensor | None]:
    """Read users' calibration/evaluation data from a tensor file, as data only.

    Formats, by extension: ``.pt``/``.pth`` (``torch.load(weights_only=True)``: tensors and
    plain containers only, never arbitrary pickled objects), ``.npz``/``.npy``
    (``np.load(allow_pickle=False)``) and ``.safetensors``. The content may be a tensor, a
    dict with an inputs key and an optional labels key, or an ``(inputs, labels)`` pair.

    Args:
        path: the file.
        max_bytes: refuse files (and zip archives whose members expand) beyond this size.

    Returns:
        ``(inputs, labels)``: float64 inputs become float32; labels are int64 of shape (N,)
        matching ``len(inputs)``, or None when the file has none.

    Raises:
        ValueError: naming the file, for a missing file, unknown extension, oversize or
            truncated/corrupt file, content of the wrong shape, or mismatched lengths.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise ValueError(f"{path}: unknown extension {suffix!r}; accepted: {', '.join(TENSOR_SUFFIXES)}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path}: {size:,} bytes is larger than the limit of {max_bytes:,} bytes")
    _check_zip_expansion(path, suffix, max_bytes)
    content = _READERS[suffix](path)
    return _split_content(path, content)


def _check_zip_expansion(path: Path, suffix: str, max_bytes: int) -> None:
    # .pt and .npz are zip archives; a compressed .npz can expand far beyond its file size.
    if suffix not in (".pt", ".pth", ".npz") or not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            expanded = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: truncated or corrupt archive ({e})") from e
    if expanded > max_bytes:
        raise ValueError(
            f"{path}: expands to {expanded:,} bytes, larger than the limit of {max_bytes:,} bytes"
        )


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused to load: the file holds Python objects other than tensors and "
            f"plain containers, and qcal never unpickles arbitrary objects (save tensors, a "
            f"dict of tensors or an (inputs, labels) tuple instead). Detail: {_first_line(e)}"
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: truncated or corrupt torch file ({_first_line(e)})") from e


def _read_numpy(path: Path) -> object:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return torch.from_numpy(loaded.copy())
        with loaded:
            return {k: torch.from_numpy(loaded[k].copy()) for k in loaded.files}
    except ValueError as e:  # numpy raises ValueError for object (pickled) arrays
        if "allow_pickle" in str(e):
            raise ValueError(
                f"{path}: refused to load object arrays (they need pickle); save numeric arrays"
            ) from e
        raise ValueError(f"{path}: truncated or corrupt numpy file ({_first_line(e)})") from e
    except (EOFError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: truncated or corrupt numpy file ({_first_line(e)})") from e


def _read_safetensors(path: Path) -> object:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path}: truncated or corrupt safetensors file ({_first_line(e)})") from e


_READERS = {
    ".pt": _read_torch,
    ".pth": _read_torch,
    ".npz": _read_numpy,
    ".npy": _read_numpy,
    ".safetensors": _read_safetensors,
}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _split_content(path: Path, content: object) -> tuple[Tensor, Tensor | None]:
    if isinstance(content, Tensor):
        inputs, labels = content, None
    elif isinstance(content, Mapping):
        inputs, labels = _from_mapping(path, content)
    elif isinstance(content, Sequence) and not isinstance(content, str) and 1 <= len(content) <= 2:
        inputs, labels = content[0], (content[1] if len(content) == 2 else None)
    else:
        raise ValueError(f"{path}: holds {type(content).__name__}; accepted: {_ACCEPTED}")
    if not isinstance(inputs, Tensor) or (labels is not None and not isinstance(labels, Tensor)):
        raise ValueError(f"{path}: inputs and labels must be tensors; accepted: {_ACCEPTED}")
    if inputs.dim() == 0:
        raise ValueError(f"{path}: inputs are a scalar; expected a batch along dim 0")
    if inputs.dtype == torch.float64:
        inputs = inputs.float()  # numpy's default; models here are float32
    if labels is not None:
        labels = _check_labels(path, labels, len(inputs))
    return inputs, labels


def _from_mapping(path: Path, content: Mapping) -> tuple[object, object | None]:
    keys = list(content)
    input_key = next((k for k in INPUT_KEYS if k in content), None)
    label_key = next((k for k in LABEL_KEYS if k in content), None)
    if input_key is None and len(keys) == 1 and label_key is None:
        input_key = keys[0]  # a single unnamed array (np.save's "arr_0")
    if input_key is None and "arr_0" in content:
        input_key, label_key = "arr_0", label_key or ("arr_1" if "arr_1" in content else None)
    if input_key is None:
        raise ValueError(
            f"{path}: no inputs key among {keys[:10]}; accepted: {_ACCEPTED}"
        )
    return content[input_key], None if label_key is None else content[label_key]


def _check_labels(path: Path, labels: Tensor, n: int) -> Tensor:
    if labels.dim() != 1:
        raise ValueError(f"{path}: labels must be 1-D class indices, got shape {tuple(labels.shape)}")
    if len(labels) != n:
        raise ValueError(f"{path}: {len(labels)} labels for {n} inputs; the counts must match")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError(f"{path}: labels must be integer class indices, got fractional values")
    return labels.long()
