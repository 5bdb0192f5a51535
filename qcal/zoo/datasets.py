"""Data for qcal: the bundled digits splits, batching helpers and users' own tensor files.

The built-in task is scikit-learn's bundled 8x8 handwritten digits (1797 images, no
download): fixed, seeded splits for training, calibration and held-out testing. Users bring
their own data as tensor files: ``load_tensors`` (defined in ``qcal.io.tensor_files``,
re-exported here) reads them as data only, so a file can never run code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from qcal.io.tensor_files import (
    DEFAULT_MAX_BYTES,
    INPUT_KEYS,
    LABEL_KEYS,
    TENSOR_SUFFIXES,
    load_tensors,
)

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


ZOO_BATCH = 128  # the batch size zoo comparisons calibrate and evaluate with (moving averages depend on it)


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
