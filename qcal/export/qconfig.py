"""A scheme or recipe as torch's ``QConfigMapping``, for ``prepare_fx`` / ``convert_fx``.

The mapping is torch's default one for the engine with the default scheme's qconfig as the
global and object-type qconfig (what ``get_default_qconfig_mapping`` builds around a
default), plus one module-name entry per recipe layer. torch then places observers and
quantize/dequantize steps by its own rules at the boundaries between int8 and fp32 layers;
``qcal.calibrate`` mirrors them, so the converted model computes the same values.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.ao.quantization import observer as tobs
from torch.ao.quantization.qconfig import QConfig
from torch.ao.quantization.qconfig_mapping import (
    QConfigMapping,
    _get_default_qconfig_mapping_with_default_qconfig,
)

from qcal import _torch_warnings
from qcal.recipes import Recipe, resolve_scheme_or_recipe
from qcal.schemes import QSpec, Scheme, resolve_scheme

__all__ = ["TORCH_ENGINES", "qconfig_mapping_code", "to_qconfig_mapping", "torch_observer", "torch_qconfig"]

#: torch engine for each qcal backend that torch has.
TORCH_ENGINES = {"fbgemm": "fbgemm", "qnnpack": "qnnpack", "x86": "x86"}
_QSCHEMES = {"per_tensor_affine": torch.per_tensor_affine, "per_tensor_symmetric": torch.per_tensor_symmetric,
             "per_channel_affine": torch.per_channel_affine, "per_channel_symmetric": torch.per_channel_symmetric}
_DTYPES = {"quint8": torch.quint8, "qint8": torch.qint8}
_TORCH_OBSERVERS = {  # (observer, per channel) -> torch's observer class
    ("minmax", False): tobs.MinMaxObserver,
    ("minmax", True): tobs.PerChannelMinMaxObserver,
    ("moving_average", False): tobs.MovingAverageMinMaxObserver,
    ("moving_average", True): tobs.MovingAveragePerChannelMinMaxObserver,
    ("histogram", False): tobs.HistogramObserver,
}
_OBSERVER_OPTIONS = {"moving_average": ("averaging_constant", 0.01), "histogram": ("bins", 2048)}
# what torch's fbgemm/qnnpack kernels take: quint8 activations, qint8 weights
_TORCH_DTYPES = {"activation": "quint8", "weight": "qint8"}


def torch_observer(spec: QSpec) -> Any:
    """torch's observer constructor (``with_args``) equivalent to ``spec`` (its quant_min and
    quant_max passed on when given).

    Raises:
        ValueError: for percentile / entropy / mse, which torch does not have.
    """
    cls = _TORCH_OBSERVERS.get((spec.observer, spec.per_channel))
    if cls is None:
        raise ValueError(f"torch has no {spec.observer!r} observer; torch has minmax, moving_average and histogram")
    kw: dict[str, Any] = {"dtype": _DTYPES[spec.dtype], "qscheme": _QSCHEMES[spec.qscheme],
                          "reduce_range": spec.reduce_range}
    if spec.per_channel:
        kw["ch_axis"] = spec.ch_axis
    if spec.custom_range:  # torch halves them too under reduce_range, as qcal does
        kw["quant_min"], kw["quant_max"] = spec.quant_min, spec.quant_max
    if spec.observer in _OBSERVER_OPTIONS:
        option, default = _OBSERVER_OPTIONS[spec.observer]
        kw[option] = spec.option(option, default)
    if spec.option("eps") is not None:
        kw["eps"] = spec.option("eps")
    with warnings.catch_warnings():
        _torch_warnings.silence()
        return cls.with_args(**kw)


def torch_qconfig(scheme: str | Scheme) -> QConfig:
    """torch's QConfig equivalent to a qcal scheme (observers only; no checks of the engine)."""
    scheme = resolve_scheme(scheme)
    return QConfig(activation=torch_observer(scheme.activation), weight=torch_observer(scheme.weight))


def _checked_qconfig(scheme: Scheme | None, where: str) -> QConfig | None:
    """The scheme's QConfig, or a ValueError naming ``where`` and the setting torch cannot run."""
    if scheme is None:
        return None
    for part, spec in (("weight", scheme.weight), ("activation", scheme.activation)):
        if (spec.observer, spec.per_channel) not in _TORCH_OBSERVERS:
            raise ValueError(f"{where}: scheme {scheme.name!r} uses the {spec.observer!r} {part} observer; torch has no "
                             "such observer (torch: minmax, moving_average, and histogram per tensor)")
        if spec.dtype != _TORCH_DTYPES[part]:
            raise ValueError(f"{where}: scheme {scheme.name!r} has {spec.dtype} {part}s; torch's fbgemm and qnnpack "
                             f"kernels take {_TORCH_DTYPES[part]} {part}s")
    return torch_qconfig(scheme)


def to_qconfig_mapping(recipe_or_scheme: str | Scheme | Recipe, backend: str = "fbgemm") -> QConfigMapping:
    """torch's ``QConfigMapping`` for a preset, Scheme or Recipe on one engine.

    ``prepare_fx(model, mapping, example)`` -> run the calibration batches (same batches,
    same order) -> ``convert_fx`` (with ``torch.backends.quantized.engine`` set to
    ``backend`` before converting and while running) gives, for graph-mode models, the
    same outputs as ``qcal.calibrate(model, batches, recipe_or_scheme, backend)``.

    Args:
        recipe_or_scheme: a preset name, a Scheme, or a Recipe (its layers become
            module-name entries; None entries keep those modules fp32).
        backend: "fbgemm" or "qnnpack".

    Raises:
        ValueError: a backend torch has no engine for, or a setting torch cannot express or
            run (percentile/entropy/mse observers, qint8 activations, quint8 weights); the
            message names the layer ("default" for the recipe's default) and the setting. A
            recipe whose repairs include AdaRound (learned codes torch's observers would not keep).

    Example::

        mapping = qcal.to_qconfig_mapping(recipe, "fbgemm")
        torch.backends.quantized.engine = "fbgemm"
        prepared = prepare_fx(model.eval(), mapping, example_inputs=(x,))
        for batch in calib_batches:
            prepared(batch)
        int8_model = convert_fx(prepared)
    """
    if backend not in TORCH_ENGINES:
        raise ValueError(f"torch has no engine for backend {backend!r}; expected one of: {', '.join(TORCH_ENGINES)}")
    value = resolve_scheme_or_recipe(recipe_or_scheme)
    recipe = value if isinstance(value, Recipe) else Recipe(value, name=value.name)
    if any(name == "adaround" for name, _ in recipe.repairs):
        raise ValueError(
            f"recipe {recipe.name!r} learns its weight codes with AdaRound: torch's weight observers would "
            "recompute the weight scale from weights written as code x scale and round them again, which "
            "does not keep every learned code (an extreme code that moved changes the scale), so no "
            "QConfigMapping reproduces it; export it with qcal.to_onnx, which writes the codes themselves")
    default = _checked_qconfig(recipe.default, "default (every layer the recipe does not name)")
    with warnings.catch_warnings():
        _torch_warnings.silence()
        if default is None:
            mapping = QConfigMapping().set_global(None)
        else:
            mapping = _get_default_qconfig_mapping_with_default_qconfig(False, TORCH_ENGINES[backend], default)
        for layer, scheme in recipe.layers:
            mapping.set_module_name(layer, _checked_qconfig(scheme, f"layer {layer!r}"))
    return mapping


def qconfig_mapping_code(recipe_or_scheme: str | Scheme | Recipe, backend: str = "fbgemm") -> str:
    """Python source that builds the same mapping with torch alone (no qcal import)."""
    value = resolve_scheme_or_recipe(recipe_or_scheme)
    recipe = value if isinstance(value, Recipe) else Recipe(value, name=value.name)
    to_qconfig_mapping(recipe, backend)  # the same checks
    lines = ["import torch", "from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig_mapping",
             "from torch.ao.quantization import observer as obs", "", ""]
    lines += [f"torch.backends.quantized.engine = {TORCH_ENGINES[backend]!r}  # before convert_fx, and for inference"]
    if recipe.default is None:
        lines.append("mapping = QConfigMapping().set_global(None)")
    else:
        lines += [f"default = {_qconfig_code(recipe.default)}",
                  f"mapping = get_default_qconfig_mapping({TORCH_ENGINES[backend]!r})",
                  "# the default everywhere except the fixed-qparams ops (sigmoid, tanh, ...)",
                  "mapping.set_global(default)",
                  "for key, qc in list(mapping.object_type_qconfigs.items()):",
                  "    if not isinstance(qc.activation(), obs.FixedQParamsObserver):",
                  "        mapping.set_object_type(key, default)"]
    for layer, scheme in recipe.layers:
        lines.append(f"mapping.set_module_name({layer!r}, {'None' if scheme is None else _qconfig_code(scheme)})")
    return "\n".join(lines) + "\n"


def _qconfig_code(scheme: Scheme) -> str:
    return f"QConfig(activation={_observer_code(scheme.activation)}, weight={_observer_code(scheme.weight)})"


def _observer_code(spec: QSpec) -> str:
    cls = _TORCH_OBSERVERS[(spec.observer, spec.per_channel)].__name__
    kw = [f"dtype=torch.{spec.dtype}", f"qscheme=torch.{spec.qscheme}", f"reduce_range={spec.reduce_range}"]
    if spec.per_channel:
        kw.append(f"ch_axis={spec.ch_axis}")
    if spec.custom_range:
        kw += [f"quant_min={spec.quant_min}", f"quant_max={spec.quant_max}"]
    if spec.observer in _OBSERVER_OPTIONS:
        option, default = _OBSERVER_OPTIONS[spec.observer]
        kw.append(f"{option}={spec.option(option, default)!r}")
    return f"obs.{cls}.with_args({', '.join(kw)})"
