"""torch's own FX quantization of a model under a qcal scheme: the oracle for tests and benchmarks.

``torch_reference`` runs ``prepare_fx`` / calibration / ``convert_fx`` with a
``QConfigMapping`` whose observers are torch's equivalents of the scheme's QSpecs (torch's
default mapping with the scheme's qconfig as the default, as
``_get_default_qconfig_mapping_with_default_qconfig`` builds it). qcal's own inference never
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
from torch.ao.quantization import observer as tobs
from torch.ao.quantization.qconfig import QConfig
from torch.ao.quantization.qconfig_mapping import _get_default_qconfig_mapping_with_default_qconfig
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from qcal import _torch_warnings
from qcal.batching import call_model
from qcal.schemes import QSpec, Scheme, resolve_scheme

__all__ = ["TORCH_ENGINES", "quantized_engine", "torch_observer", "torch_qconfig", "torch_reference"]

#: torch engine for each qcal backend that torch has.
TORCH_ENGINES = {"fbgemm": "fbgemm", "qnnpack": "qnnpack"}
_QSCHEMES = {"per_tensor_affine": torch.per_tensor_affine, "per_tensor_symmetric": torch.per_tensor_symmetric,
             "per_channel_affine": torch.per_channel_affine, "per_channel_symmetric": torch.per_channel_symmetric}
_DTYPES = {"quint8": torch.quint8, "qint8": torch.qint8}


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


def torch_observer(spec: QSpec) -> Any:
    """torch's observer constructor equivalent to ``spec``.

    Raises:
        ValueError: for percentile / entropy / mse, which torch does not have.
    """
    kw: dict[str, Any] = {"dtype": _DTYPES[spec.dtype], "qscheme": _QSCHEMES[spec.qscheme],
                          "reduce_range": spec.reduce_range}
    if spec.per_channel:
        kw["ch_axis"] = spec.ch_axis
    if spec.observer == "minmax":
        cls = tobs.PerChannelMinMaxObserver if spec.per_channel else tobs.MinMaxObserver
    elif spec.observer == "moving_average":
        cls = tobs.MovingAveragePerChannelMinMaxObserver if spec.per_channel else tobs.MovingAverageMinMaxObserver
        kw["averaging_constant"] = spec.option("averaging_constant", 0.01)
    elif spec.observer == "histogram":
        cls = tobs.HistogramObserver
        kw["bins"] = spec.option("bins", 2048)
    else:
        raise ValueError(f"torch has no {spec.observer!r} observer; torch_reference supports minmax, "
                         "moving_average and histogram")
    with warnings.catch_warnings():
        _torch_warnings.silence()
        return cls.with_args(**kw)


def torch_qconfig(scheme: str | Scheme) -> QConfig:
    """torch's QConfig equivalent to a qcal scheme."""
    scheme = resolve_scheme(scheme)
    return QConfig(activation=torch_observer(scheme.activation), weight=torch_observer(scheme.weight))


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
def torch_reference(model: nn.Module, calib_data: Any, scheme: str | Scheme, backend: str = "fbgemm") -> nn.Module:
    """torch's FX-converted int8 model for ``scheme``, calibrated on ``calib_data``.

    Run it inside ``quantized_engine(backend)`` (the engine it was converted under).

    Raises:
        ValueError: a backend torch lacks, or a scheme with an observer torch lacks.
    """
    scheme = resolve_scheme(scheme)
    qconfig = torch_qconfig(scheme)
    batches = _batches(calib_data)
    if not batches:
        raise ValueError("calibration data is empty")
    with quantized_engine(backend), warnings.catch_warnings():
        _torch_warnings.silence()  # torch.ao's deprecation notices, on every call
        mapping = _get_default_qconfig_mapping_with_default_qconfig(False, TORCH_ENGINES[backend], qconfig)
        prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, example_inputs=_example(batches[0]))
        for batch in batches:
            call_model(prepared, batch)
        return convert_fx(prepared)
