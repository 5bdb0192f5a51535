"""qcal: int8 post-training quantization of PyTorch models, explained and compared.

The public API (DESIGN.md) is re-exported here and loaded lazily, so ``import qcal`` stays
cheap and a submodule is imported only when one of its names is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qcal import _torch_warnings

_torch_warnings.silence()

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "QSpec": "schemes",
    "Scheme": "schemes",
    "Recipe": "schemes",
    "SCHEMES": "schemes",
    "resolve_scheme": "schemes",
    "qparams_from_range": "qparams",
    "quantize": "qparams",
    "dequantize": "qparams",
    "make_observer": "observers",
    "make_observers": "observers",
    "RunningHistogram": "histogram",
    "calibrate": "calibration",
    "calibrate_many": "calibration",
    "QuantizedModel": "model",
    "LayerTrace": "model",
    "torch_reference": "reference",
    "to_qconfig_mapping": "export.qconfig",
    "compare": "comparison",
    "Comparison": "comparison",
    "explain": "checkpoints",
    "example_checkpoint": "checkpoints",
    "Store": "store",
    "StoreError": "store",
    "Run": "runs",
    "RunInfo": "runs",
    "compare_zoo": "comparison",
    "report": "reporting",
}
_SUBMODULES = (
    "int8", "zoo", "datasets", "architectures", "store", "schemes", "qparams", "observers",
    "figures",
)

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"qcal.{_EXPORTS[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"qcal.{name}")
    else:
        raise AttributeError(f"module 'qcal' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from qcal import (  # noqa: F401
        architectures,
        datasets,
        figures,
        int8,
        observers,
        qparams,
        schemes,
        store,
        zoo,
    )
    from qcal.calibration import calibrate, calibrate_many  # noqa: F401
    from qcal.checkpoints import example_checkpoint, explain  # noqa: F401
    from qcal.comparison import Comparison, compare, compare_zoo  # noqa: F401
    from qcal.export.qconfig import to_qconfig_mapping  # noqa: F401
    from qcal.histogram import RunningHistogram  # noqa: F401
    from qcal.model import LayerTrace, QuantizedModel  # noqa: F401
    from qcal.observers import make_observer, make_observers  # noqa: F401
    from qcal.qparams import dequantize, qparams_from_range, quantize  # noqa: F401
    from qcal.reference import torch_reference  # noqa: F401
    from qcal.reporting import report  # noqa: F401
    from qcal.runs import Run, RunInfo  # noqa: F401
    from qcal.schemes import SCHEMES, QSpec, Recipe, Scheme, resolve_scheme  # noqa: F401
    from qcal.store import Store, StoreError  # noqa: F401
