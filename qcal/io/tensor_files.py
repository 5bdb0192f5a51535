"""Users' own calibration/evaluation data from tensor files, read as data only.

Formats, by extension: ``.pt``/``.pth`` via ``torch.load(weights_only=True)`` (tensors and
plain containers only: a pickle that would build any other object is refused before it
runs), ``.npz``/``.npy`` via ``np.load(allow_pickle=False)``, and ``.safetensors``. Sizes
are capped, including the expanded size of zip archives.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DEFAULT_MAX_BYTES", "INPUT_KEYS", "LABEL_KEYS", "TENSOR_SUFFIXES", "load_tensors"]

DEFAULT_MAX_BYTES = 512 * 2**20  # 512 MiB: plenty for calibration data, small enough for a laptop
TENSOR_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".npz", ".npy", ".safetensors")
INPUT_KEYS: tuple[str, ...] = ("inputs", "input", "x", "data", "images", "features")
LABEL_KEYS: tuple[str, ...] = ("labels", "label", "y", "targets", "target")

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
