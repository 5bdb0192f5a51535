"""One output element of one int8 layer, worked from int8 inputs to the final 8-bit value.

The dashboard's Requant math page shows ``element_report``: the layer's scales and each
backend's multipliers (``qcal.reporting.elements``), the element's requantization step by step
(``qcal.reporting.requant_steps``), the same element from qcal's engine and from torch's own
quantized engine (``backend_reference_element``, an oracle for display, never used for
inference), whether they agree, and FBGEMM's int16 pair saturation for it
(``qcal.reporting.pair_saturation``), which is why its default activation observer uses
``reduce_range``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from qcal.int8.cpu.isa import assumed_cpu
from qcal.reporting.elements import (
    channel_of,
    channel_requant,
    element_grid,
    element_index,
    requant_table,
)
from qcal.reporting.pair_saturation import pair_saturation
from qcal.reporting.requant_steps import requant_beside, requant_steps

__all__ = [
    "ElementReport",
    "backend_reference_element",
    "channel_of",
    "channel_requant",
    "element_grid",
    "element_index",
    "element_report",
    "pair_saturation",
    "requant_beside",
    "requant_steps",
    "requant_table",
]

_ENGINE_LOCK = threading.Lock()  # torch's quantized engine is process-global state


@torch.no_grad()
def backend_reference_element(layer: Any, trace: Any, index: tuple[int, ...], backend: str) -> int | None:
    """The same element computed by torch's own quantized engine (an oracle for display).

    Returns None for flavours torch has no engine for ("onnx", "q31") or inputs it cannot
    take (int8 activations).
    """
    if backend not in ("fbgemm", "qnnpack", "x86") or trace.input_q.dtype != torch.uint8:
        return None
    x = torch._make_per_tensor_quantized_tensor(trace.input_q, float(layer.input_scale),
                                                int(layer.input_zero_point))
    w_scale, w_zp = layer.weight_scale.reshape(-1), layer.weight_zero_point.reshape(-1)
    if w_scale.numel() > 1 or layer.weight_qscheme.startswith("per_channel"):
        w = torch._make_per_channel_quantized_tensor(layer.weight_q, w_scale.double(), w_zp.long(), 0)
    else:
        w = torch._make_per_tensor_quantized_tensor(layer.weight_q, float(w_scale[0]), int(w_zp[0]))
    ops = torch.ops.quantized
    with _ENGINE_LOCK:
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = backend
        try:  # prepack afresh each time: QNNPACK caches the output scale in its packed weights
            if layer.kind == "conv":
                packed = ops.conv2d_prepack(w, layer.bias, list(layer.stride), list(layer.padding),
                                            list(layer.dilation), int(layer.groups))
                run = ops.conv2d_relu if layer.relu else ops.conv2d
            else:
                packed = ops.linear_prepack(w, layer.bias)
                run = ops.linear_relu if layer.relu else ops.linear
            out = run(x, packed, float(layer.output_scale), int(layer.output_zero_point))
        finally:
            torch.backends.quantized.engine = previous
    return int(out.int_repr()[index])


@dataclass(frozen=True, eq=False)
class ElementReport:
    """Everything the Requant page shows for one output element of one layer.

    Attributes:
        layer, backend, channel, index: which element, on which backend.
        table: ``requant_table`` of the layer (one row per output channel).
        channel_numbers: ``requant_table``'s row for ``channel`` as a dict.
        requant: ``channel_requant`` (multiplier, q31_multiplier, q31_shift, q31_error, bias_int32).
        steps: ``requant_steps``; its last value is ``worked``.
        worked: the worked steps' final value.
        engine: the value qcal's integer engine produced (the traced output).
        reference: torch's own engine's value, None where torch has no such engine.
        agrees: worked == engine, and == reference when there is one.
        verdict: one sentence saying whether they agree.
        pairs, saturation: ``pair_saturation`` of the element (rows, counts).
        reduce_range: whether the scheme's activations use codes 0..127.
        vnni: whether the CPU qcal emulates has AVX512-VNNI (``qcal.int8.assumed_cpu``).
        cpu: that CPU in words, e.g. "avx2 (from /proc/cpuinfo)".
    """

    layer: str
    backend: str
    channel: int
    index: tuple[int, ...]
    table: pd.DataFrame
    channel_numbers: dict[str, Any]
    requant: dict[str, Any]
    steps: pd.DataFrame
    worked: int
    engine: int
    reference: int | None
    agrees: bool
    verdict: str
    pairs: pd.DataFrame
    saturation: dict[str, Any]
    reduce_range: bool
    vnni: bool
    cpu: str = ""


def _verdict(worked: int, engine: int, reference: int | None, backend: str) -> tuple[bool, str]:
    agrees = worked == engine and reference in (None, worked)
    if agrees:
        return True, "The worked steps, qcal's engine and the real backend agree on this element."
    seen = f"worked {worked}, qcal engine {engine}" + ("" if reference is None else f", torch {reference}")
    return False, (f"The values differ on {backend} ({seen}): the worked steps follow qcal's "
                   "engine; docs/requant.md lists the known differences from torch's kernels.")


@torch.no_grad()
def element_report(qm: Any, layer_name: str, trace: Any, index: tuple[int, ...], backend: str) -> ElementReport:
    """The Requant page's numbers for one output element (see ``ElementReport``).

    Args:
        qm: the ``QuantizedModel`` (its scheme says whether activations use reduce_range).
        layer_name: a key of ``qm.quant_layers``.
        trace: that layer's ``LayerTrace`` (``qm.trace(x)[layer_name]``).
        index: the element, from ``element_index``.
        backend: "fbgemm" | "qnnpack" | "onnx" | "q31" | "x86".
    """
    layer = qm.quant_layers[layer_name]
    channel = channel_of(index, layer.kind)
    table = requant_table(layer)
    steps = requant_steps(layer, trace, index, backend)
    worked, engine = int(steps["value"].iloc[-1]), int(trace.output_q[index])
    reference = backend_reference_element(layer, trace, index, backend)
    agrees, verdict = _verdict(worked, engine, reference, backend)
    reduce_range = bool(qm.scheme.activation.reduce_range)
    pairs, saturation = pair_saturation(layer, trace, index, reduce_range=reduce_range)
    cpu = assumed_cpu()
    return ElementReport(
        layer=layer_name, backend=backend, channel=channel, index=tuple(index), table=table,
        channel_numbers=table.iloc[channel].to_dict(), requant=channel_requant(layer, backend, channel),
        steps=steps, worked=worked, engine=engine, reference=reference, agrees=agrees, verdict=verdict,
        pairs=pairs, saturation=saturation, reduce_range=reduce_range, vnni=cpu.vnni, cpu=cpu.describe())
