"""A QuantizedModel of the xnnpack flavour as the PT2E model torchao would build for it.

``to_pt2e(qm, example_inputs)`` exports ``qm.float_model`` with ``torch.export``, prepares it
with ``XNNPACKQuantizer`` and the config matching ``qm.scheme`` (per channel or per tensor
weights, the code ranges; ``get_symmetric_quantization_config``), lets the weight observers
see the weights (one forward of the example), then sets every activation observer to qcal's
recorded clip range (a ``MinMaxObserver`` of the scheme's dtype, qscheme, code range and eps
that has seen exactly that range: torch's own formula turns it into the qparams) and runs
``convert_pt2e``. Every qparam, weight code and bias of the result is then checked against
qcal's (``qcal.export.pt2e_qparams``): a ValueError lists each differing entry.
Repaired models export the same way: equalization and bias correction changed the float
model itself; codes learned by AdaRound are written into the (BN-folded) float model as
``(code - zp) x scale`` (``qcal.repair.written``), which the weight observers turn back into
exactly those codes, or refused when they would not.

Refused with the reason: a backend other than "xnnpack", what XNNPACK cannot run
(``qcal.check_runnable``), module-swap models, recipes with per-layer schemes or fp32 layers,
weight observers other than minmax (XNNPACKQuantizer's), and an activation observer PT2E
places where qcal observes nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from qcal.export.pt2e import require_pt2e
from qcal.export.pt2e_qparams import module_of, pt2e_qparams, qcal_qparams, qparam_differences
from qcal.qparams import EPS
from qcal.repair.written import learned_layers, moved_codes, written_model
from qcal.runnable import check_runnable

__all__ = ["check_exportable", "to_pt2e"]

_THROUGH = ("aten.relu.default", "aten.relu_.default", "aten.flatten.using_ints", "aten.view.default",
            "aten.reshape.default", "aten.max_pool2d.default", "aten.squeeze.dims", "aten.unsqueeze.default")


def check_exportable(qm: Any) -> None:
    """ValueError naming what keeps ``qm`` from becoming an XNNPACK PT2E model (see the module doc)."""
    if getattr(qm, "backend", None) != "xnnpack":
        raise ValueError(f"to_executorch writes the 'xnnpack' flavour (ExecuTorch's XNNPACK delegate); got a "
                         f"{type(qm).__name__} of backend {getattr(qm, 'backend', None)!r}: calibrate with "
                         "backend='xnnpack' (xnnpack_default, xnnpack_per_tensor), or read a PT2E model "
                         "with qcal.from_pt2e")
    check_runnable(qm.scheme, "xnnpack")
    if qm.mode != "graph":
        raise ValueError(f"to_executorch needs a graph-mode QuantizedModel (torch.fx), got mode {qm.mode!r}"
                         + (f": {qm.fallback_reason}" if qm.fallback_reason else ""))
    recipe = qm.recipe
    if recipe is not None and (recipe.layers or recipe.default is None):
        raise ValueError(f"to_executorch takes one scheme for every layer; recipe {recipe.name!r} has per-layer "
                         "schemes or fp32 layers (XNNPACKQuantizer.set_module_name is not mapped yet)")
    if qm.scheme.weight.observer != "minmax":
        raise ValueError(f"to_executorch builds XNNPACKQuantizer's weight observers (minmax); scheme "
                         f"{qm.scheme.name!r} has {qm.scheme.weight.observer} weights")


def _quantizer(qm: Any) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    w, a = qm.scheme.weight, qm.scheme.activation
    (wmin, wmax), (amin, amax) = w.code_range(), a.code_range()
    config = get_symmetric_quantization_config(is_per_channel=w.per_channel, act_qmin=amin, act_qmax=amax,
                                               weight_qmin=wmin, weight_qmax=wmax)
    return XNNPACKQuantizer().set_global(config)


def _op(node: torch.fx.Node) -> str:
    t = node.target
    return f"{t.namespace}.{t._opname}.{t._overloadname}" if isinstance(t, torch._ops.OpOverload) else ""


def _is_observer(node: torch.fx.Node) -> bool:
    return node.op == "call_module" and "activation_post_process" in str(node.target)


def _source(node: torch.fx.Node, adds: dict[str, int]) -> str | None:
    """The qcal entry whose qparams an observed value carries ("input 0", "<layer> output", ...)."""
    while True:
        if node.op == "placeholder":
            return f"input {[n for n in node.graph.nodes if n.op == 'placeholder'].index(node)}"
        if _is_observer(node):
            node = node.args[0]
            continue
        name = _op(node)
        if name in ("aten.conv2d.default", "aten.linear.default"):
            return f"{module_of(node)} output"
        if name == "aten.add.Tensor":
            return f"add {adds[node.name]} output"
        if name not in _THROUGH:
            return None
        node = node.args[0]


def _clip_ranges(qm: Any) -> dict[str, tuple[float, float]]:
    """qcal's clip range (before widening to include 0) of each entry ``_source`` names."""
    acts, kinds = qm.activations, {s.name: s.kind for s in qm.graph.steps}
    out: dict[str, tuple[float, float]] = {}
    adds = inputs = 0
    for step in qm.graph.steps:
        if step.kind == "quantize" and kinds.get(step.args[0].name) == "input":
            key, inputs = f"input {inputs}", inputs + 1
        elif step.kind == "add":
            key, adds = f"add {adds} output", adds + 1
        elif step.kind in ("conv", "linear"):
            key = f"{step.target} output"
        else:
            continue
        out[key] = (acts[step.obs].clip_min, acts[step.obs].clip_max)
    return out


def _fixed_observer(spec: Any, lo: float, hi: float) -> torch.nn.Module:
    """torchao's MinMaxObserver for ``spec`` that has seen exactly ``lo`` and ``hi``."""
    from torchao.quantization.pt2e import MinMaxObserver

    qscheme = torch.per_tensor_symmetric if spec.symmetric else torch.per_tensor_affine
    qmin, qmax = spec.code_range()
    obs = MinMaxObserver(dtype=torch.int8, qscheme=qscheme, quant_min=qmin, quant_max=qmax,
                         eps=float(spec.option("eps", EPS)))
    obs(torch.tensor([lo, hi], dtype=torch.float32))
    return obs


def _set_activation_observers(prepared: torch.fx.GraphModule, qm: Any) -> None:
    ranges = _clip_ranges(qm)
    adds = {n.name: i for i, n in enumerate(n for n in prepared.graph.nodes if _op(n) == "aten.add.Tensor")}
    for node in prepared.graph.nodes:
        if not _is_observer(node) or node.args[0].op == "get_attr":
            continue  # weight observers keep what they saw of the weights
        source = node.args[0]
        entry = _source(source, adds)
        if entry not in ranges:
            raise ValueError(f"XNNPACKQuantizer observes {source.name} ({_op(source) or source.op}), where qcal's "
                             f"model has no observation point ({entry or 'an operator qcal does not quantize'}): "
                             "the two graphs are quantized differently")
        setattr(prepared, node.target, _fixed_observer(qm.scheme.activation, *ranges[entry]))


def _float_model(qm: Any) -> torch.nn.Module:
    """The float model whose weights XNNPACKQuantizer's observers turn into ``qm``'s codes:
    ``qm.float_model``, or for learned codes (AdaRound) the weights written as the codes."""
    if not learned_layers(qm):
        return qm.float_model
    moved = {name: n for name, n in moved_codes(qm).items() if n}
    if moved:
        raise ValueError("to_executorch writes learned weight codes as code x scale for XNNPACKQuantizer's minmax "
                         f"observers, which give other codes for {sum(moved.values())} weights ("
                         + ", ".join(f"{k}: {v}" for k, v in moved.items()) + "): codes past the code of their "
                         "channel's min or max weight, or a min or max weight's own code moved, change the range "
                         "the observer sees (qcal.adaround keeps within it)")
    return written_model(qm)


@torch.no_grad()
def to_pt2e(qm: Any, example_inputs: tuple) -> torch.fx.GraphModule:
    """The ``convert_pt2e`` model with ``qm``'s qparams, checked entry by entry (see the module doc).

    Raises:
        ValueError: what ``check_exportable`` refuses, or the entries (scale, zero point,
            weight codes, bias) where torchao's model differs from ``qm``.
    """
    require_pt2e()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    check_exportable(qm)
    exported = torch.export.export(_float_model(qm), tuple(example_inputs))
    prepared = prepare_pt2e(exported.module(), _quantizer(qm))
    prepared(*example_inputs)  # the weight observers see the weights; activation observers are replaced next
    _set_activation_observers(prepared, qm)
    converted = convert_pt2e(prepared)
    differing = qparam_differences(qcal_qparams(qm), pt2e_qparams(converted))
    if differing:
        raise ValueError(f"torchao's PT2E model of {qm.scheme.name!r} differs from qcal's in {len(differing)} "
                         f"entries: {'; '.join(differing[:6])}" + (" ..." if len(differing) > 6 else ""))
    return converted
