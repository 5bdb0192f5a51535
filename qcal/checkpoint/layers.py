"""The layers of a quantized state_dict: every module with int8 weights, its bias and its
output quantization, whichever layout torch wrote it in.

* ``convert`` / ``convert_fx`` modules: ``<m>.weight`` (a quantized tensor) or, for Linear,
  ``<m>._packed_params._packed_params`` = (weight, bias); outputs in ``<m>.scale`` /
  ``<m>.zero_point``.
* ``convert_to_reference_fx`` modules: fp32 ``<m>.weight`` beside ``weight_scale``,
  ``weight_zero_point``, ``weight_axis``, ``weight_qscheme``, ``weight_dtype``; outputs in
  root buffers ``<m>_scale_<n>`` / ``<m>_zero_point_<n>``.
* FX functional ops: a root ``<scope>_packed_weight_<n>`` (packed params).
* dynamic quantization: a Linear whose saved scale 1.0 / zero point 0 are unused defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qcal.checkpoint.weights import QWeight
from qcal.io.safe_load import PackedParamsState

__all__ = ["Layer", "find_layers", "functional_name", "fx_paths"]


@dataclass(frozen=True)
class Layer:
    """A quantized Conv or Linear found in a state dict."""

    name: str  # module path, e.g. "features.0"
    kind: str  # "conv" | "linear"
    weight: QWeight
    weight_key: str
    bias: torch.Tensor | None
    out_scale: float | None  # None: dynamic quantization or an FX functional op
    out_zero_point: int | None
    scale_key: str
    zero_point_key: str
    first_index: int
    last_index: int
    last_key: str  # the requant row goes after this entry
    functional: bool = False  # FX F.linear / F.conv packed weight at the root
    dynamic: bool = False  # dynamic quantization: activations quantized per batch at run time
    reference: bool = False  # convert_to_reference_fx: fp32 weight + qparams buffers

    @property
    def in_features(self) -> int:
        """Channels (conv: per group) or features the layer reads."""
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        """Output channels."""
        return int(self.weight.shape[0])


def fx_paths(name: str) -> list[str]:
    """The FX buffer prefixes that may name layer ``name``: its path with dots as
    underscores, and for the conv inside a fused reference module (``0.0`` in ``0``) the
    wrapper's path, which FX uses as the scope."""
    paths = [name.replace(".", "_")]
    parent, _, last = name.rpartition(".")
    if parent and last == "0":
        paths.append(parent.replace(".", "_"))
    return paths


_REFERENCE_LEAVES = (
    "weight_scale",
    "weight_zero_point",
    "weight_axis",
    "weight_qscheme",
    "weight_dtype",
)


def _split_packed(value: Any) -> tuple[QWeight | None, torch.Tensor | None]:
    tensors = value.tensors() if isinstance(value, PackedParamsState) else list(value)
    weight = next((t for t in tensors if isinstance(t, torch.Tensor) and t.is_quantized), None)
    bias = next((t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
    return (QWeight.from_qtensor(weight) if weight is not None else None), bias


def _module_weight(leaves: dict[str, tuple[int, Any]]) -> tuple[Any, QWeight | None, Any, bool]:
    """(weight entry, weight, bias, is_reference) of one module's entries."""

    def value(leaf: str) -> Any:
        return leaves[leaf][1].value if leaf in leaves else None

    bias = value("bias")
    if getattr(value("weight"), "is_quantized", False):
        return leaves["weight"][1], QWeight.from_qtensor(value("weight")), bias, False
    if "_packed_params._packed_params" in leaves:
        entry = leaves["_packed_params._packed_params"][1]
        return (entry, *_split_packed(entry.value), False)
    if "weight" in leaves and all(leaf in leaves for leaf in _REFERENCE_LEAVES):
        try:
            weight = QWeight.from_reference(
                value("weight"), *(value(leaf) for leaf in _REFERENCE_LEAVES)
            )
        except (ValueError, RuntimeError, TypeError):
            return None, None, None, False
        return leaves["weight"][1], weight, bias, True
    return None, None, None, False


def find_layers(entries: list) -> dict[str, Layer]:
    """Every module with a quantized weight (``.weight``, Linear's packed tuple, a reference
    module's qparams, or an FX root ``_packed_weight_<n>``), with its bias and output qparams."""
    by_module: dict[str, dict[str, tuple[int, Any]]] = {}
    for i, e in enumerate(entries):
        if e.fx is None and e.module:
            by_module.setdefault(e.module, {})[e.leaf] = (i, e)
    fx_outputs = _fx_outputs(entries)
    layers: dict[str, Layer] = {}
    for module, leaves in by_module.items():
        weight_entry, weight, bias, reference = _module_weight(leaves)
        if weight is None:
            continue
        scale = leaves.get("scale", (0, None))[1]
        zp = leaves.get("zero_point", (0, None))[1]
        if reference:  # FX keeps its output quantizer at the root, named after the module
            scale, zp = next(
                (fx_outputs[p] for p in fx_paths(module) if p in fx_outputs), (None, None)
            )
        # torch's dynamic Linear saves the unused defaults scale 1.0, zero point 0
        dynamic = (
            not reference
            and len(weight.shape) == 2
            and (
                scale is None
                or (float(scale.value) == 1.0 and zp is not None and int(zp.value) == 0)
            )
        )
        last = max(leaves.values(), key=lambda p: p[0])
        layers[module] = Layer(
            name=module,
            kind="linear" if len(weight.shape) == 2 else "conv",
            weight=weight,
            weight_key=weight_entry.key,
            bias=bias if isinstance(bias, torch.Tensor) else None,
            out_scale=float(scale.value) if scale is not None else None,
            out_zero_point=int(zp.value) if zp is not None else None,
            scale_key=scale.key if scale is not None else "",
            zero_point_key=zp.key if zp is not None else "",
            first_index=min(i for i, _ in leaves.values()),
            last_index=last[0],
            last_key=last[1].key,
            dynamic=dynamic,
            reference=reference,
        )
    for i, e in enumerate(entries):
        if e.fx is not None and "what" not in e.fx.groupdict():
            weight, bias = _split_packed(e.value)
            if weight is not None:
                name = functional_name(e, weight)
                kind = "linear" if len(weight.shape) == 2 else "conv"
                layers[name] = Layer(name, kind, weight, e.key, bias, None, None, "", "", i, i, e.key, functional=True)  # fmt: skip
    return layers


def _fx_outputs(entries: list) -> dict[str, tuple[Any, Any]]:
    """FX output quantizers by path: the first ``<path>_scale_<n>`` / ``_zero_point_<n>`` pair."""
    pairs: dict[tuple[str, int], dict[str, Any]] = {}
    for e in entries:
        if e.fx is not None and "what" in e.fx.groupdict() and not e.fx.group("input"):
            pairs.setdefault((e.fx.group("path"), int(e.fx.group("n"))), {})[e.fx.group("what")] = e
    out: dict[str, tuple[Any, Any]] = {}
    for (path, _), d in sorted(pairs.items()):
        if path and "scale" in d and "zero_point" in d:
            out.setdefault(path, (d["scale"], d["zero_point"]))
    return out


def functional_name(e: Any, weight: QWeight) -> str:
    """The layer name of an FX root packed weight, e.g. ``F.linear(_packed_weight_0)``."""
    op = "F.linear" if len(weight.shape) == 2 else "F.conv"
    return f"{op}({e.key.rsplit('/', 1)[-1]})"
