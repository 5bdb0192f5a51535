"""torch's own FX quantization of a model under a qcal scheme: the oracle for tests and benchmarks.

``torch_reference`` runs ``prepare_fx`` / calibration / ``convert_fx`` with the
``QConfigMapping`` of ``qcal.to_qconfig_mapping`` (torch's default mapping with the scheme's
qconfig as the default, plus a recipe's per-layer entries). qcal's own inference never
uses it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from qcal import _torch_warnings
from qcal.batching import call_model
from qcal.export.qconfig import TORCH_ENGINES, to_qconfig_mapping, torch_observer, torch_qconfig
from qcal.schemes import Recipe, Scheme

__all__ = ["TORCH_ENGINES", "quantized_engine", "torch_observer", "torch_qconfig", "torch_reference"]


@contextmanager
def quantized_engine(backend: str) -> Iterator[None]:
    """Set ``torch.backends.quantized.engine`` for the block, restoring the old engine."""
    if backend not in TORCH_ENGINES:
        raise ValueError(f"torch has no engine for backend {backend!r}; expected one of: {', '.join(TORCH_ENGINES)}")
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = TORCH_ENGINES[backend]
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def _batches(calib_data: Any) -> list[Any]:
    if isinstance(calib_data, torch.Tensor | dict):
        return [calib_data]
    return list(calib_data)


def _example(batch: Any) -> tuple:
    if isinstance(batch, tuple | list):
        return tuple(batch)
    if isinstance(batch, dict):
        return tuple(batch.values())
    return (batch,)


@torch.no_grad()
def torch_reference(model: nn.Module, calib_data: Any, scheme: str | Scheme | Recipe,
                    backend: str = "fbgemm") -> nn.Module:
    """torch's FX-converted int8 model for ``scheme`` (or a Recipe), calibrated on ``calib_data``.

    Run it inside ``quantized_engine(backend)`` (the engine it was converted under).

    Raises:
        ValueError: a backend torch lacks, or a setting torch cannot run (see ``to_qconfig_mapping``).
    """
    batches = _batches(calib_data)
    if not batches:
        raise ValueError("calibration data is empty")
    with quantized_engine(backend), warnings.catch_warnings():
        _torch_warnings.silence()  # torch.ao's deprecation notices, on every call
        mapping = to_qconfig_mapping(scheme, backend)
        prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, example_inputs=_example(batches[0]))
        for batch in batches:
            call_model(prepared, batch)
        return convert_fx(prepared)
