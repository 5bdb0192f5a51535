"""Which quantized values torch's converted model holds channels-last (its rounding depends on it).

torch's average pools round differently on channels-last input, and torch 2.13's qnnpack clamp
scrambles channels-last input; ``IntegerProgram`` follows torch's layouts to match it bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qcal.graph.ir import Graph, Ref, Step

__all__ = ["torch_layouts", "torch_memory_format"]


def torch_layouts(graph: Graph, backend: str) -> tuple[dict[str, bool], frozenset[str]]:
    """Which quantized values torch holds channels-last, and which clamps it scrambles.

    torch's quantized convs return channels-last tensors; relu, pools, add, Identity,
    (de)quantize and elementwise fp32 ops keep their input's memory format; reshapes give
    contiguous ones (as does the model input, assumed contiguous). The memory
    format matters twice: torch's average pools round differently on channels-last input,
    and torch 2.13's ``qnnpack_clamp`` (every quantized hardtanh/relu6/clamp under the
    qnnpack engine) clamps a channels-last input in NHWC memory order but allocates the
    output NCHW-contiguous, so the values land in the wrong positions (MobileNet's ReLU6
    after a conv is hit). qcal's "qnnpack" flavour reproduces torch's converted model, bug
    included.

    Returns:
        ({value name: channels-last}, names of the clamp steps torch scrambles).
    """
    nhwc: dict[str, bool] = {}
    hit: set[str] = set()
    for step in graph.steps:
        rule = _LAYOUT.get(step.kind)
        if rule is None or (step.kind == "shape" and step.op != "call_module"):
            continue  # reshapes (functional or method) give contiguous values: not recorded
        first = step.args[0].name if step.args and isinstance(step.args[0], Ref) else None
        nhwc[step.name], scrambled = rule(step, nhwc.get(first, False), nhwc, backend)
        if scrambled:
            hit.add(step.name)
    return nhwc, frozenset(hit)


def _keep_layout(step: Step, first: bool, nhwc: dict[str, bool], backend: str) -> tuple[bool, bool]:
    return first, False


def _clamp_layout(step: Step, first: bool, nhwc: dict[str, bool], backend: str) -> tuple[bool, bool]:
    scrambles = backend == "qnnpack" and first
    return first and not scrambles, scrambles


# step kind -> (channels-last?, scrambled?) of its output; Dropout, Identity, (de)quantize,
# elementwise fp32 ops and shape modules keep their input's memory format
_LAYOUT: dict[str, Callable[[Step, bool, dict[str, bool], str], tuple[bool, bool]]] = {
    "conv": lambda step, first, nhwc, backend: (True, False),
    "clamp": _clamp_layout,
    "cat": lambda step, first, nhwc, backend: (all(nhwc.get(r.name, False) for r in step.args[0]), False),
    **dict.fromkeys(("relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "add", "identity",
                     "quantize", "dequantize", "float", "shape"), _keep_layout),
}


def torch_memory_format(value: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A dequantized value in the memory format torch's would have: torch dequantizes a
    channels-last tensor to a channels-last one, and an fp32 conv rounds differently on
    channels-last input than on contiguous input (the next quantize then flips codes)."""
    if channels_last and value.dim() == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value
