"""The qparams of a PT2E model beside a QuantizedModel's, entry by entry.

``pt2e_qparams(converted)`` reads a ``convert_pt2e`` result; ``qcal_qparams(qm)`` reads a
graph-mode QuantizedModel; both give the same entries, so ``qparam_differences`` lists every
one that differs:

- ``"<layer> input"``, ``"<layer> output"``: (scale, zero point) of each conv/linear's input
  and (fused-ReLU) output, the layer named by its module (``qm.layers()``'s names; a PT2E node
  by the last module of its ``nn_module_stack``);
- ``"<layer> weight"``: the per-channel (or one) scales and zero points; ``"<layer> weight
  codes"``, ``"<layer> bias"``: the int8 codes and the float bias, as bytes;
- ``"add <k> output"``: the k-th quantized add (graph order), ``"input <i>"``: the i-th input.

Scales compare as the float32 values both sides store, exactly.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["pt2e_qparams", "qcal_qparams", "qparam_differences"]

_WEIGHTED = ("aten.conv2d.default", "aten.linear.default")
_QUANTIZE = "quantized_decomposed.quantize_per_tensor"


def _name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def _f32(x: Any) -> float:
    return float(torch.tensor(float(x), dtype=torch.float32))


def _tensor_entry(t: Any) -> tuple:
    t = torch.as_tensor(t).reshape(-1)
    return tuple(t.to(torch.float32).tolist()) if t.is_floating_point() else tuple(t.to(torch.int64).tolist())


def _bytes(t: torch.Tensor | None) -> bytes | None:
    return None if t is None else t.detach().contiguous().numpy().tobytes()


def _attr(gm: torch.fx.GraphModule, node: Any) -> Any:
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        obj: Any = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj
    return node


def _output_quantize(node: torch.fx.Node) -> torch.fx.Node | None:
    """The quantize that gives ``node``'s (ReLU-fused) output its qparams."""
    for _ in range(2):
        users = list(node.users)
        quant = [u for u in users if _name(u.target).startswith(_QUANTIZE)]
        if quant:
            return quant[0]
        if len(users) != 1 or _name(users[0].target) not in ("aten.relu.default", "aten.relu_.default"):
            return None
        node = users[0]
    return None


def _dequantized(node: Any) -> bool:
    return isinstance(node, torch.fx.Node) and _name(node.target).startswith("quantized_decomposed.dequantize_per_")


def _qparams_of(q: torch.fx.Node | None) -> tuple | None:
    return None if q is None else (_f32(q.args[1]), int(q.args[2]))


def module_of(node: torch.fx.Node) -> str:
    """The module path of a PT2E node (``nn_module_stack``'s innermost entry), e.g. "features.0"."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else node.name


def pt2e_qparams(converted: torch.fx.GraphModule) -> dict[str, Any]:
    """The entries of a ``convert_pt2e`` result (see the module doc)."""
    out: dict[str, Any] = {}
    adds = inputs = 0
    for node in converted.graph.nodes:
        name = _name(node.target) if node.op == "call_function" else ""
        if node.op == "placeholder":
            quant = [u for u in node.users if _name(u.target).startswith(_QUANTIZE)]
            if quant:
                out[f"input {inputs}"] = _qparams_of(quant[0])
            inputs += 1
        elif name == "aten.add.Tensor":
            out[f"add {adds} output"] = _qparams_of(_output_quantize(node))
            adds += 1
        elif name in _WEIGHTED:
            layer, x, w = module_of(node), node.args[0], node.args[1]
            if not (_dequantized(x) and _dequantized(w)):
                out[f"{layer} input"] = None  # an fp32 layer: no qparams to compare
                continue
            out[f"{layer} input"] = (_f32(x.args[1]), int(x.args[2]))
            codes, scale, zp = (_attr(converted, a) for a in w.args[:3])
            out[f"{layer} weight"] = (_tensor_entry(scale), _tensor_entry(zp))
            out[f"{layer} weight codes"] = _bytes(codes)
            bias = _attr(converted, node.args[2]) if len(node.args) > 2 else None
            out[f"{layer} bias"] = _bytes(None if bias is None else bias.float())
            out[f"{layer} output"] = _qparams_of(_output_quantize(node))
    return out


def qcal_qparams(qm: Any) -> dict[str, Any]:
    """The same entries for a graph-mode QuantizedModel."""
    if qm.mode != "graph" or qm.graph is None:
        raise ValueError(f"PT2E qparams need a graph-mode QuantizedModel (torch.fx), got mode {qm.mode!r}"
                         + (f": {qm.fallback_reason}" if qm.fallback_reason else ""))
    out: dict[str, Any] = {}
    acts, adds, inputs = qm.activations, 0, 0
    kinds = {s.name: s.kind for s in qm.graph.steps}
    for step in qm.graph.steps:
        if step.kind == "quantize" and kinds.get(step.args[0].name) == "input":
            out[f"input {inputs}"] = (_f32(acts[step.obs].scale), acts[step.obs].zero_point)
            inputs += 1
        elif step.kind == "add":
            out[f"add {adds} output"] = (_f32(acts[step.obs].scale), acts[step.obs].zero_point)
            adds += 1
    for name, layer in qm.quant_layers.items():
        out[f"{name} input"] = (_f32(layer.input_scale), layer.input_zero_point)
        out[f"{name} weight"] = (_tensor_entry(layer.weight_scale), _tensor_entry(layer.weight_zero_point))
        out[f"{name} weight codes"] = _bytes(layer.weight_q)
        out[f"{name} bias"] = _bytes(layer.bias)
        out[f"{name} output"] = (_f32(layer.output_scale), layer.output_zero_point)
    return out


def qparam_differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Each entry that differs (or is on one side only), with both values, in ``mine``'s order."""
    keys = list(mine) + [k for k in theirs if k not in mine]
    return [f"{k}: qcal {_show(mine.get(k))}, PT2E {_show(theirs.get(k))}" for k in keys if mine.get(k) != theirs.get(k)]


def _show(v: Any) -> str:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."
