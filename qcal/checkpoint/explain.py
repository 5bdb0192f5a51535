"""Explain a quantized state_dict: what each entry is, which scale converts what, and where
the requantization scale of each layer comes from.

Layouts torch 2.13 writes (``model.state_dict()`` after ``convert`` / ``convert_fx``):

* eager mode: ``quant.scale`` / ``quant.zero_point`` (the converted QuantStub, shape [1]);
  per Conv: ``conv.weight`` (qint8 qtensor), ``conv.bias`` (fp32), ``conv.scale`` /
  ``conv.zero_point`` (0-d: the conv's OUTPUT quantization); per Linear: ``fc.scale``,
  ``fc.zero_point``, ``fc._packed_params.dtype`` (torch.qint8) and
  ``fc._packed_params._packed_params`` = (weight qtensor, fp32 bias); add/cat
  (QFunctional) and quantized Hardswish/LeakyReLU: ``name.scale``, ``name.zero_point``.
* FX: the same module entries, plus root buffers listed first: ``<module>_input_scale_<n>``
  / ``<module>_input_zero_point_<n>`` (input quantizers, named after their first consumer
  with dots as underscores), ``<scope>_scale_<n>`` / ``<scope>_zero_point_<n>`` (outputs of
  graph ops such as a quantized add, or a re-quantize after an fp32 op like flatten) and,
  for functional ``F.linear`` / ``F.conv2d``, ``<scope>_packed_weight_<n>`` (a
  ``torch.ScriptObject``; see :mod:`qcal.io.safe_load`).
* FX reference (``convert_to_reference_fx``): fp32 ``<m>.weight`` with ``<m>.weight_scale``,
  ``weight_zero_point``, ``weight_axis``, ``weight_qscheme``, ``weight_dtype``; every
  activation quantizer is a root buffer, outputs named after their layer (``<m>_scale_0``).
* dynamic (``quantize_dynamic``): Linear entries as above with unused scale 1.0 / zero point 0.

The requant scale of a layer with per-output-channel weight scales ``s_w[c]`` is
``M[c] = s_in * s_w[c] / s_out``: the int32 accumulator ``acc = Σ (x_q - z_in)(w_q - z_w)``
becomes the output code ``y_q = clamp(round(M[c] * (acc + bias_term)) + z_out)``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from qcal.checkpoint.discover import find_state_dicts
from qcal.checkpoint.example import example_checkpoint
from qcal.checkpoint.layers import Layer, find_layers, fx_paths
from qcal.checkpoint.notes import entry_note
from qcal.checkpoint.requant import infer_inputs, requant_row
from qcal.checkpoint.schemes import activation_evidence, model_scheme, weight_evidence
from qcal.checkpoint.weights import PER_CHANNEL
from qcal.io.safe_load import DEFAULT_MAX_BYTES, PackedParamsState, load_checkpoint

__all__ = ["COLUMNS", "ROLES", "example_checkpoint", "explain", "explain_bytes"]

COLUMNS: list[str] = [
    "key", "layer", "role", "dtype", "qscheme", "scale", "zero_point",
    "requant_scale", "likely_scheme", "note",
]  # fmt: skip
ROLES: tuple[str, ...] = (
    "weight", "weight scale", "weight zero point", "bias", "output scale", "output zero point", "input scale", "input zero point",
    "packed params", "requant", "other",
)  # fmt: skip

_FX_QPARAM = re.compile(r"^(?P<path>.*?)(?P<input>_input)?_(?P<what>scale|zero_point)_(?P<n>\d+)$")
_FX_PACKED = re.compile(r"^(?P<path>.*?)_packed_weight_(?P<n>\d+)$")


@dataclass(frozen=True)
class Entry:
    """One state-dict entry, split into the module it belongs to and its leaf name."""

    key: str  # the full key in the file, with the container path for nested checkpoints
    module: str
    leaf: str
    value: Any
    fx: re.Match[str] | None = None  # an FX root buffer (input/output quantizer)


@torch.no_grad()
def explain(
    state_dict_or_path: Mapping[str, Any] | str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> pd.DataFrame:
    """One row per entry of a quantized state_dict, plus one "requant" row per layer.

    Files are untrusted data: they are read with ``torch.load(weights_only=True)`` (see
    :func:`qcal.io.safe_load.load_checkpoint`). Checkpoints that nest the state dict, such as
    ``{"model_state_dict": ..., "epoch": 3}``, are searched; keys then carry the path,
    e.g. ``model_state_dict/conv.weight``.

    Args:
        state_dict_or_path: a state dict (or checkpoint dict) in memory, or a file path.
        max_bytes: refuse files larger than this.

    Returns:
        DataFrame with columns ``COLUMNS``: key, layer, role (one of ``ROLES``), dtype,
        qscheme, scale (list), zero_point (list), requant_scale (list; on "requant" rows,
        one value per output channel or one for a per-tensor weight), likely_scheme
        (a qcal preset name where one fits) and a plain-language note.

    Raises:
        ValueError: unreadable or unsafe file, not a dict, or no quantized tensors.
        TypeError: neither a mapping nor a path.

    Example:
        >>> df = explain(example_checkpoint("qnnpack"))  # doctest: +SKIP
        >>> df.set_index("key").loc["conv_3x3_32a.scale", "role"]  # doctest: +SKIP
        'output scale'
    """
    obj = state_dict_or_path
    if isinstance(obj, (str, os.PathLike)):
        obj = load_checkpoint(Path(obj), max_bytes=max_bytes)
    elif not isinstance(obj, Mapping):
        raise TypeError(
            f"explain() takes a state_dict (a dict) or a file path, got {type(obj).__name__}"
        )
    groups, extra = find_state_dicts(obj)
    extra_rows = [_other_row(key, note) for key, note in extra]
    try:
        rows = [row for prefix, sd in groups for row in _explain_one(prefix, sd)]
    except RuntimeError as err:  # torch refusing an exotic quantized tensor: still a data problem
        raise ValueError(f"cannot explain this state_dict: {str(err).splitlines()[0]}") from None
    return pd.DataFrame(rows + extra_rows, columns=COLUMNS)


def explain_bytes(data: bytes, filename: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> pd.DataFrame:
    """``explain`` of an uploaded file given as bytes (the dashboard's upload).

    The bytes go to a private temporary file named after ``filename`` (sanitised, so that
    messages name the user's file) and are read as data only, like any path.

    Raises:
        ValueError: too large, or not a quantized checkpoint (the message says why).
    """
    if len(data) > max_bytes:
        raise ValueError(f"{filename} is {len(data) / 2**20:.1f} MiB, above the limit of "
                         f"{max_bytes / 2**20:.1f} MiB")
    name = Path(filename)
    suffix = name.suffix if name.suffix in (".pt", ".pth") else ".pt"
    stem = re.sub(r"[^\w.-]", "_", name.stem)[:80] or "upload"
    with tempfile.TemporaryDirectory(prefix="qcal-upload-") as tmp:
        path = Path(tmp) / f"{stem}{suffix}"
        path.write_bytes(data)
        return explain(path, max_bytes=max_bytes)


def _other_row(key: str, note: str, layer: str = "") -> dict:
    return dict.fromkeys(COLUMNS, "") | {
        "key": key, "layer": layer, "role": "other", "scale": [], "zero_point": [],
        "requant_scale": [], "note": note,
    }  # fmt: skip


def _entries(prefix: str, sd: Mapping) -> list[Entry]:
    out = []
    for name, value in sd.items():
        name = str(name)
        if isinstance(value, torch.ScriptObject):  # FX packed weights still in memory
            value = PackedParamsState.from_script_object(value)
        fx = None
        if "._packed_params." in name:
            module, leaf = name.split("._packed_params.", 1)
            leaf = "_packed_params." + leaf
        elif "." in name:
            module, leaf = name.rsplit(".", 1)
        else:
            fx = _FX_QPARAM.match(name) or _FX_PACKED.match(name)
            module, leaf = "", name
        out.append(Entry(prefix + name, module, leaf, value, fx))
    return out


def _explain_one(prefix: str, sd: Mapping) -> list[dict]:
    entries = _entries(prefix, sd)
    layers = find_layers(entries)
    act_zps = [
        int(e.value.flatten()[0])
        for e in entries
        if isinstance(e.value, torch.Tensor)
        and e.value.numel() == 1
        and not e.value.is_floating_point()
        and (
            e.leaf == "zero_point"
            or (e.fx is not None and e.fx.groupdict().get("what") == "zero_point")
        )
    ]
    acts = activation_evidence(act_zps)
    evidence = {name: weight_evidence(layer.weight) for name, layer in layers.items()}
    schemes = {name: model_scheme(ev, acts) for name, ev in evidence.items()}
    names = {name for name, _ in schemes.values()}
    overall = (
        names.pop() if len(names) == 1 else ("mixed" if names else model_scheme(None, acts)[0])
    )
    inputs = infer_inputs(entries, layers)

    rows: list[dict] = []
    for e in entries:
        layer = _layer_of(e, layers)
        row = _entry_row(e, layer, layers, acts, evidence, schemes, overall)
        rows.append(row)
        lay = layers.get(row["layer"])
        if lay is not None and e.key == lay.last_key:
            rows.append(requant_row(prefix, lay, inputs[lay.name], schemes[lay.name][0], COLUMNS))
    return rows


def _layer_of(e: Entry, layers: dict[str, Layer]) -> str:
    if e.fx is not None and "what" not in e.fx.groupdict():
        return next((n for n, lay in layers.items() if lay.weight_key == e.key), "")
    if e.fx is not None:
        path = e.fx.group("path")
        if e.fx.group("input"):
            return next(
                (n for n in layers if path in fx_paths(n)), path or f"<root>:input{e.fx.group('n')}"
            )
        owner = next(
            (n for n, lay in layers.items() if e.key in (lay.scale_key, lay.zero_point_key)), None
        )
        return owner or f"{path or '<root>'}:q{e.fx.group('n')}"  # an FX graph op's quantizer
    return e.module


def _entry_row(e, layer, layers, acts, evidence, schemes, overall) -> dict:
    role = _role(e, layer, layers)
    row = dict.fromkeys(COLUMNS, "") | {
        "key": e.key,
        "layer": layer,
        "role": role,
        "requant_scale": [],
    }
    row |= _describe(e.value, role)
    lay = layers.get(layer)
    if lay is not None and lay.reference and role == "weight":
        row["qscheme"] = lay.weight.qscheme  # the fp32 weight is quantized with these on the fly
    if role in ("weight", "packed params", "weight scale", "weight zero point") and lay is not None:
        row["likely_scheme"] = schemes[layer][0]
    elif role.startswith(("output", "input")) or role == "bias":
        row["likely_scheme"] = schemes[layer][0] if layer in schemes else overall
    row["note"] = entry_note(e, row, lay, acts, evidence.get(layer), schemes.get(layer))
    return row


def _role(e: Entry, layer: str, layers: dict[str, Layer]) -> str:
    if e.fx is not None:
        g = e.fx.groupdict()
        if "what" not in g:
            return "packed params"
        side = "input" if g.get("input") else "output"
        return f"{side} {g['what'].replace('_', ' ')}"
    if e.leaf in ("weight", "bias"):
        return e.leaf
    if e.leaf in ("weight_scale", "weight_zero_point") and layer in layers:  # a reference module
        return e.leaf.replace("_", " ")
    if e.leaf == "_packed_params._packed_params":
        return "packed params"
    if e.leaf in ("scale", "zero_point") and isinstance(e.value, torch.Tensor):
        # the converted QuantStub (nnq.Quantize) keeps shape [1]; every output quantizer is 0-d
        side = "input" if e.value.dim() == 1 and layer not in layers else "output"
        return f"{side} {e.leaf.replace('_', ' ')}"
    return "other"


def _describe(value: Any, role: str) -> dict:
    t = value
    if isinstance(value, (PackedParamsState, tuple, list)):
        tensors = (
            value.tensors()
            if isinstance(value, PackedParamsState)
            else [v for v in value if isinstance(v, torch.Tensor)]
        )
        t = next((x for x in tensors if x.is_quantized), tensors[0] if tensors else None)
    out: dict[str, Any] = {"scale": [], "zero_point": []}
    if not isinstance(t, torch.Tensor):
        kind = str(value) if isinstance(value, torch.dtype) else type(value).__name__
        return out | {"dtype": kind.removeprefix("torch.")}
    out["dtype"] = str(t.dtype).removeprefix("torch.")
    if t.is_quantized:
        out["qscheme"] = str(t.qscheme()).removeprefix("torch.")
        if t.qscheme() in PER_CHANNEL:
            out["scale"] = t.q_per_channel_scales().tolist()
            out["zero_point"] = t.q_per_channel_zero_points().tolist()
        else:
            out["scale"], out["zero_point"] = [t.q_scale()], [t.q_zero_point()]
    elif role.endswith("scale") and (t.numel() == 1 or role == "weight scale"):
        out["scale"] = t.flatten().tolist()
    elif role.endswith("zero point") and (t.numel() == 1 or role == "weight zero point"):
        out["zero_point"] = t.flatten().tolist()
    return out
