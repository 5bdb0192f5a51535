"""qcal: int8 post-training quantization of PyTorch models, explained and compared.

The public API is re-exported here and loaded lazily: ``import qcal`` stays cheap (no torch,
pandas or streamlit until a name needs them) and a submodule is imported only when one of its
names is first used.
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
    "Recipe": "recipes",
    "SCHEMES": "schemes",
    "resolve_scheme": "schemes",
    "check_runnable": "runnable",
    "parse_scheme": "scheme_text",
    "format_scheme": "scheme_text",
    "qparams_from_range": "qparams",
    "quantize": "qparams",
    "dequantize": "qparams",
    "make_observer": "observers",
    "make_observers": "observers",
    "RunningHistogram": "observers.histogram",
    "calibrate": "calibration.calibrate",
    "calibrate_many": "calibration.calibrate",
    "QuantizedModel": "calibration.model",
    "LayerTrace": "calibration.model",
    "torch_reference": "analysis.reference",
    "to_qconfig_mapping": "export.qconfig",
    "sensitivity": "analysis.sensitivity",
    "recommend": "analysis.recommend",
    "Recommendation": "analysis.recommend",
    "compare": "analysis.compare",
    "Comparison": "analysis.compare",
    "explain": "checkpoint.explain",
    "example_checkpoint": "checkpoint.example",
    "Store": "store",
    "StoreError": "store",
    "Run": "store",
    "RunInfo": "store",
    "compare_zoo": "store.zoo_runs",
    "report": "reporting.report",
    "to_onnx": "export.onnx",
    "from_pt2e": "export.pt2e",
    "to_executorch": "export.executorch",
    "simulation_gap": "export.silicon",
    "SimulationGap": "export.silicon",
    "equalize": "repair.equalize",
    "Equalization": "repair.equalize",
    "correct_bias": "repair.bias",
    "bias_correction": "repair.bias",
    "BiasCorrection": "repair.bias",
    "adaround": "repair.adaround",
    "apply_recipe": "repair.apply",
    "with_repairs": "repair.apply",
}
# public submodule name -> where it lives
_SUBMODULES: dict[str, str] = {
    "int8": "int8",
    "zoo": "zoo",
    "datasets": "zoo.datasets",
    "architectures": "zoo.architectures",
    "store": "store",
    "schemes": "schemes",
    "qparams": "qparams",
    "observers": "observers",
    "figures": "reporting.figures",
}

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"qcal.{_EXPORTS[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"qcal.{_SUBMODULES[name]}")
    else:
        raise AttributeError(f"module 'qcal' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from qcal import int8, observers, qparams, schemes, store, zoo  # noqa: F401
    from qcal.analysis.compare import Comparison, compare  # noqa: F401
    from qcal.analysis.recommend import Recommendation, recommend  # noqa: F401
    from qcal.analysis.reference import torch_reference  # noqa: F401
    from qcal.analysis.sensitivity import sensitivity  # noqa: F401
    from qcal.calibration.calibrate import calibrate, calibrate_many  # noqa: F401
    from qcal.calibration.model import LayerTrace, QuantizedModel  # noqa: F401
    from qcal.checkpoint.example import example_checkpoint  # noqa: F401
    from qcal.checkpoint.explain import explain  # noqa: F401
    from qcal.export.qconfig import to_qconfig_mapping  # noqa: F401
    from qcal.export.silicon import SimulationGap, simulation_gap  # noqa: F401
    from qcal.observers import make_observer, make_observers  # noqa: F401
    from qcal.observers.histogram import RunningHistogram  # noqa: F401
    from qcal.qparams import dequantize, qparams_from_range, quantize  # noqa: F401
    from qcal.recipes import Recipe  # noqa: F401
    from qcal.repair.adaround import adaround  # noqa: F401
    from qcal.repair.apply import apply_recipe, with_repairs  # noqa: F401
    from qcal.repair.bias import BiasCorrection, bias_correction, correct_bias  # noqa: F401
    from qcal.repair.equalize import Equalization, equalize  # noqa: F401
    from qcal.reporting import figures  # noqa: F401
    from qcal.reporting.report import report  # noqa: F401
    from qcal.runnable import check_runnable  # noqa: F401
    from qcal.scheme_text import format_scheme, parse_scheme  # noqa: F401
    from qcal.schemes import SCHEMES, QSpec, Scheme, resolve_scheme  # noqa: F401
    from qcal.store import Run, RunInfo, Store, StoreError  # noqa: F401
    from qcal.store.zoo_runs import compare_zoo  # noqa: F401
    from qcal.zoo import architectures, datasets  # noqa: F401
