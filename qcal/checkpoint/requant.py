"""The input scale each layer of a quantized state_dict most likely reads, and its
requant scale ``M[c] = s_in × s_w[c] / s_out``.

A state dict has no graph. Its order is the modules' registration order (eager) or, for FX,
root buffers first and then the modules: usually, but not always, the order data flows.
So the input of a layer is inferred only where the file leaves one reading:

1. an FX input quantizer named after the layer (``<layer>_input_scale_<n>``);
2. otherwise the nearest activation quantizer before it in state-dict order, when that is a
   QuantStub, or a layer / BatchNorm whose output channel count matches what this layer
   reads (a mismatch means a branch: the file order is not the data order);
3. nothing when the nearest quantizer belongs to a weightless op (an add, cat or activation
   with its own output scale: its inputs and readers are unknown), or when FX graph ops
   quantize activations with qparams no layer output has (e.g. a quantized add).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qcal.checkpoint.layers import Layer, fx_paths

__all__ = ["InputGuess", "infer_inputs", "requant_row"]


@dataclass(frozen=True)
class InputGuess:
    """The input quantization of a layer, or why it cannot be read from the file."""

    scale: float | None
    zero_point: int | None
    source: str  # the key it came from, or "" when unknown
    reason: str


@dataclass(frozen=True)
class _Point:
    index: int
    name: str
    kind: str  # "stub" | "layer" | "single" (BatchNorm-like) | "op" (add/cat/activation)
    scale: float
    zero_point: int
    key: str
    channels: int | None


def _points(entries: list, layers: dict[str, Layer]) -> list[_Point]:
    modules: dict[str, dict[str, tuple[int, Any]]] = {}
    for i, e in enumerate(entries):
        if e.fx is None and e.module:
            modules.setdefault(e.module, {})[e.leaf] = (i, e)
    points = [
        _Point(lay.last_index, lay.name, "layer", lay.out_scale, lay.out_zero_point, lay.scale_key, lay.out_features)
        for lay in layers.values()
        if lay.out_scale is not None and lay.out_zero_point is not None and not lay.dynamic
    ]  # fmt: skip
    for name, leaves in modules.items():
        if name in layers or "scale" not in leaves or "zero_point" not in leaves:
            continue
        s, z = leaves["scale"][1], leaves["zero_point"][1]
        if not isinstance(s.value, torch.Tensor) or s.value.numel() != 1:
            continue
        if s.value.dim() == 1:
            kind, channels = "stub", None
        elif "running_mean" in leaves:
            kind, channels = "single", int(leaves["running_mean"][1].value.numel())
        else:
            kind, channels = "op", None
        index = max(j for j, _ in leaves.values())
        scale, zp = float(s.value.flatten()[0]), int(z.value.flatten()[0])
        points.append(_Point(index, name, kind, scale, zp, s.key, channels))
    return sorted(points, key=lambda p: p.index)


def _fx_quantizers(entries: list) -> tuple[dict[str, tuple], list[tuple]]:
    pairs: dict[tuple, dict[str, Any]] = {}
    for e in entries:
        if e.fx is not None and "what" in e.fx.groupdict():
            g = e.fx.groupdict()
            pairs.setdefault((g["path"], bool(g["input"]), g["n"]), {})[g["what"]] = e
    inputs, free = {}, []
    for (path, is_input, _), d in pairs.items():
        if "scale" in d and "zero_point" in d:
            item = (float(d["scale"].value), int(d["zero_point"].value), d["scale"].key, path)
            if is_input:
                inputs.setdefault(path, item)
            else:
                free.append(item)
    return inputs, free


def _in_scope(free: list[tuple], before: str, name: str) -> list[tuple]:
    """The FX graph-op quantizers that could sit between two layers.

    FX names a graph op's buffers after the module whose forward runs it. Two layers in the
    same (non-root) parent are called one after the other by that parent's forward, so only
    ops of that parent's scope can come between them; otherwise any may.
    """
    parent = name.rpartition(".")[0]
    if parent and before.rpartition(".")[0] == parent:
        return [f for f in free if f[3] == parent.replace(".", "_")]
    return free


def _fits(layer: Layer, channels: int | None) -> bool:
    if channels is None:
        return True
    if layer.kind == "linear":  # a flatten of (C, H, W) reads C*H*W features
        return layer.in_features % channels == 0
    groups, rest = divmod(channels, layer.in_features)
    # equal: groups=1; in 1 and out == channels: depthwise; else a grouped conv
    return rest == 0 and layer.out_features % groups == 0


def infer_inputs(entries: list, layers: dict[str, Layer]) -> dict[str, InputGuess]:
    """The input (scale, zero point) of every layer where the file leaves one reading."""
    points = _points(entries, layers)
    fx_inputs, fx_free = _fx_quantizers(entries)
    outputs = {(p.scale, p.zero_point) for p in points if p.kind == "layer"}
    odd_free = [f for f in fx_free if (f[0], f[1]) not in outputs]  # e.g. a quantized add
    stubs = [p for p in points if p.kind == "stub"]
    first = min((lay for lay in layers.values() if not lay.functional), key=lambda lay: lay.first_index,
                default=None)
    guesses: dict[str, InputGuess] = {}
    for layer in layers.values():
        found = next((fx_inputs[p] for p in fx_paths(layer.name) if p in fx_inputs), None)
        if found is not None:
            guesses[layer.name] = InputGuess(found[0], found[1], found[2], f"FX input quantizer {found[2]}")
        elif layer.functional:
            guesses[layer.name] = _unknown(
                "a functional op in the FX graph: the graph's code, not the state dict, wires its input and output quantizers"
            )
        else:
            before = [p for p in points if p.index < layer.first_index and p.name != layer.name]
            is_first = first is not None and layer.name == first.name
            guesses[layer.name] = _guess_from_order(layer, before, stubs, is_first, odd_free)
    return guesses


def _guess_from_order(layer: Layer, before: list, stubs: list, is_first: bool, odd_free: list) -> InputGuess:
    """A layer's input read from the nearest activation quantizer before it in state-dict order."""
    if not before and len(stubs) == 1 and is_first:
        p = stubs[0]
        return InputGuess(
            p.scale, p.zero_point, p.key,
            f"the file's only QuantStub ({p.key}), registered after the layers as torchvision's "
            "quantizable models do; assumed to feed the first layer",
        )  # fmt: skip
    if not before:
        return _unknown("no QuantStub, FX input quantizer or earlier quantized layer precedes it in the state dict")
    p = before[-1]
    if p.kind == "op":
        return _unknown(
            f"the nearest quantizer before it is {p.key} of '{p.name}', a weightless op (an add, cat or "
            f"activation); after an add or a branch the state dict cannot say what {layer.name} reads "
            f"(it may be {p.name}'s output: scale {p.scale:.6g}, zero point {p.zero_point})"
        )
    if not _fits(layer, p.channels):
        return _unknown(
            f"the previous quantized layer '{p.name}' has {p.channels} output channels but {layer.name} reads "
            f"{layer.in_features}: a branch, so state-dict order is not the data order here"
        )
    if (near := _in_scope(odd_free, p.name, layer.name)) and p.kind != "stub":
        keys = ", ".join(f[2] for f in near[:3])
        return _unknown(
            f"FX graph ops also quantize activations ({keys}: e.g. a quantized add) with qparams no layer "
            f"output has; the graph, not the state dict, says whether {layer.name} reads one of them or "
            f"'{p.name}' (scale {p.scale:.6g}, zero point {p.zero_point})"
        )
    what = "the QuantStub" if p.kind == "stub" else f"the output of '{p.name}'"
    return InputGuess(
        p.scale, p.zero_point, p.key,
        f"{what}, the nearest activation quantizer before it in state-dict order ({p.key})",
    )  # fmt: skip


def _unknown(reason: str) -> InputGuess:
    return InputGuess(None, None, "", reason)


def requant_row(
    prefix: str, layer: Layer, guess: InputGuess, scheme: str, columns: list[str]
) -> dict:
    """The layer-level row: requant scale M[c] = s_in * s_w[c] / s_out and where it applies."""
    sw = list(layer.weight.scales)
    row = dict.fromkeys(columns, "") | {
        "key": prefix + layer.name, "layer": layer.name, "role": "requant", "scale": [],
        "zero_point": [], "requant_scale": [], "likely_scheme": scheme,
    }  # fmt: skip
    channels = f"{len(sw)} per-channel values" if len(sw) > 1 else "one value for all channels"
    if layer.dynamic:
        row["note"] = (
            f"{layer.name} is dynamically quantized (its scale 1.0 / zero point 0 are unused defaults): "
            "activations are quantized per batch at run time and the output stays fp32, so the "
            "file holds no fixed requant scale"
        )
        return row
    if guess.scale is None or layer.out_scale is None:
        row["note"] = (
            f"requant scale not inferred: {guess.reason}. With the scale s_in of the tensor "
            f"{layer.name} reads: M[c] = s_in × s_w[c] / s_out"
            + (f" (s_out = {layer.out_scale:.6g}, {layer.scale_key})" if layer.out_scale else "")
        )
        return row
    row["requant_scale"] = [guess.scale * s / layer.out_scale for s in sw]
    zw = "z_w[c]" if len(sw) > 1 else "z_w"
    row["note"] = (
        f"requant M[c] = s_in × s_w[c] / s_out, {channels}: s_in = {guess.scale:.6g} from {guess.reason}; "
        f"s_w from {layer.weight_key}; s_out = {layer.out_scale:.6g} ({layer.scale_key}). Applied after "
        f"the int32 accumulation acc[c] = Σ (x_q − {guess.zero_point})(w_q − {zw}): "
        f"y_q = clamp(round(M[c] × (acc[c] + bias[c] / (s_in × s_w[c]))) + {layer.out_zero_point}, 0, 255). "
        "FBGEMM adds the bias in float like this; QNNPACK first rounds it to int32 at scale s_in × s_w[c]"
    )
    return row
