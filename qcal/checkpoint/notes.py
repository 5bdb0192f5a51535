"""Plain-language notes for the rows of :func:`qcal.explain`: what an entry is, which real
values its scale converts, and what its numbers say about the observer behind it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qcal.checkpoint.layers import Layer
from qcal.checkpoint.schemes import ActivationEvidence, WeightEvidence, activation_reason

__all__ = ["entry_note"]

_OTHER = {
    "_packed_params.dtype": "the dtype Linear's weight was packed with (torch.qint8: int8 weights; "
    "torch.float16: dynamic fp16)",
    "running_mean": "BatchNorm running mean (fp32 statistics, not a quantization parameter)",
    "running_var": "BatchNorm running variance (fp32 statistics, not a quantization parameter)",
    "num_batches_tracked": "BatchNorm's batch counter (not a quantization parameter)",
    "weight_axis": "the channel axis of a reference module's per-channel weight qparams",
    "weight_qscheme": "the qscheme a reference module quantizes its fp32 weight with",
    "weight_dtype": "the integer dtype a reference module quantizes its fp32 weight to",
}


def _codes(dtype: str) -> str:
    return "0..255" if dtype == "quint8" else "-128..127"


@dataclass(frozen=True)
class _Entry:
    """One state-dict entry with what ``explain`` learned about it."""

    e: Any
    row: dict
    layer: Layer | None
    acts: ActivationEvidence
    weight: WeightEvidence | None
    scheme: tuple[str, str] | None

    @property
    def who(self) -> str:
        return self.row["layer"] or self.e.key


def _weight_qparam_note(x: _Entry) -> str | None:
    if x.layer is None:
        return None
    return (
        f"{x.layer.name}'s {x.row['role']} (a reference module from convert_to_reference_fx keeps the fp32 "
        f"weight and quantizes it on the fly: w_q = clamp(round(w / scale) + zero_point)); "
        f"{x.weight.reason if x.weight else ''}"
    )


def _weight_head(x: _Entry) -> str:
    """What the int8 weight entry is: packed params (module or functional), reference, plain."""
    layer, weight = x.layer, x.weight
    if x.row["role"] == "packed params" and layer.functional:
        return (
            "packed weights of a functional F.linear / F.conv in an FX graph (a torch.ScriptObject "
            f"{x.e.value.class_name.rsplit('.', 1)[-1]}, read as data without building the C++ object); "
            f"{weight.dtype} weight {layer.weight.shape}"
        )
    if x.row["role"] == "packed params":
        bias = "no bias" if layer.bias is None else f"fp32 bias [{layer.bias.numel()}]"
        return (
            f"{layer.name}'s packed (weight, bias): torch keeps a quantized Linear's weight here "
            f"instead of '.weight' ({weight.dtype} weight {layer.weight.shape}, {bias})"
        )
    if layer.reference:
        return (
            f"fp32 weight of reference {layer.kind} {layer.name} {layer.weight.shape}: quantized on "
            f"the fly to {weight.dtype} with its weight_scale / weight_zero_point"
        )
    return f"{layer.kind} weight {layer.weight.shape}, {weight.dtype} codes {_codes(weight.dtype)}"


def _weight_note(x: _Entry) -> str | None:
    if x.weight is None or x.layer is None:
        if x.row["role"] == "weight":
            return (f"float weight of {x.who} ({x.row['dtype']}): this module is not int8 "
                    "(e.g. a quantized BatchNorm's affine factor)")
        return None
    n, w = x.weight.channels, x.layer.weight
    how = (
        f"per output channel ({n} scales, axis {w.axis}): w ≈ scale[c] × (q − zero_point[c])"
        if w.axis is not None
        else f"per tensor: w ≈ {w.scales[0]:.6g} × (q − {w.zero_points[0]})"
    )
    reason = x.weight.reason
    why_scheme = f" Likely scheme: {x.scheme[1]}." if x.scheme else ""
    return f"{_weight_head(x)}; {how}. {reason[0].upper()}{reason[1:]}.{why_scheme}"


def _bias_note(x: _Entry) -> str:
    if x.layer is None:
        return f"float bias of {x.who} ({x.row['dtype']})"
    return (
        f"fp32 bias of {x.layer.name}: torch stores it in float, never as int32. FBGEMM adds "
        "bias[c] / (s_in × s_w[c]) to the accumulator in float; QNNPACK and ONNX round it to "
        "int32 at scale s_in × s_w[c] first"
    )


def _output_qparam_note(x: _Entry) -> str:
    if x.layer is not None and x.layer.dynamic:
        return (
            f"unused default of torch's dynamic Linear ({x.row['scale'] or x.row['zero_point']}): "
            f"{x.layer.name} quantizes its input per batch at run time and returns fp32"
        )
    return _output_note(x.e, x.row, x.layer, x.acts)


def _input_note(x: _Entry) -> str:
    value = x.row["scale"] or x.row["zero_point"]
    what = (
        f"FX input quantizer of {x.who}"
        if x.e.fx is not None
        else f"input quantizer '{x.who}' (a converted QuantStub, nn.quantized.Quantize)"
    )
    if x.row["role"] == "input scale":
        return (
            f"{what}: x_q = clamp(round(x / {value[0]:.6g}) + zero_point, 0, 255) turns the float "
            "input into quint8; this is s_in of the layer that reads it"
        )
    return f"{what}: the quint8 code of 0.0. {activation_reason(value[0], x.acts)}"


# role -> its note; None from a note function means "nothing specific": the _OTHER table decides
_NOTES: dict[str, Callable[[_Entry], str | None]] = {
    "weight scale": _weight_qparam_note,
    "weight zero point": _weight_qparam_note,
    "weight": _weight_note,
    "packed params": _weight_note,
    "bias": _bias_note,
    "output scale": _output_qparam_note,
    "output zero point": _output_qparam_note,
    "input scale": _input_note,
    "input zero point": _input_note,
}


def entry_note(
    e: Any,
    row: dict,
    layer: Layer | None,
    acts: ActivationEvidence,
    weight: WeightEvidence | None,
    scheme: tuple[str, str] | None,
) -> str:
    """The note for one state-dict entry, given its row (role, dtype, scale, zero_point)."""
    note_for = _NOTES.get(row["role"])
    note = note_for(_Entry(e, row, layer, acts, weight, scheme)) if note_for else None
    if note is not None:
        return note
    return _OTHER.get(e.leaf, f"{type(e.value).__name__} entry: not a quantization parameter qcal explains")


def _output_note(e: Any, row: dict, layer: Layer | None, acts: ActivationEvidence) -> str:
    if e.fx is not None and layer is None:
        scope = e.fx.group("path") or "the root module"
        owner = (
            f"an activation quantized by an FX graph op in {scope} (a quantized add / cat, or the "
            "re-quantization after an fp32 op such as flatten); the graph code says which layer reads it"
        )
    elif layer is not None:
        owner = (
            f"{layer.name}'s OUTPUT quantization (not its weight's): its result code y_q means "
            f"y ≈ s_out × (y_q − z_out); s_out is the denominator of the requant scale s_in × s_w / s_out "
            "and the s_in of the layer that reads this output"
        )
    else:
        owner = (
            f"output quantization of '{row['layer']}', a quantized op without int8 weights (an add / cat via "
            "QFunctional, an activation such as Hardswish, or a BatchNorm)"
        )
    if row["role"] == "output scale":
        return f"{owner}. s_out = {row['scale'][0]:.6g}"
    who = layer.name if layer is not None else row["layer"]
    return f"z_out: the quint8 code of 0.0 in {who}'s output. {activation_reason(row['zero_point'][0], acts)}"
