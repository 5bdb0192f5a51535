"""A ``convert_pt2e`` graph's quantization as qcal's own records: layers, activations, a scheme.

``read_pt2e(converted)`` reads the quantize/dequantize nodes around each fused conv2d/linear
(``dequantize(x) -> op(dequantize(w), bias) [-> relu] -> quantize``) into a ``QuantLayer``
(int8 weight codes, per-channel or per-tensor weight scales and zero points, float bias, input
and output qparams, fused ReLU, conv geometry), every activation quantize into an
``ActivationInfo``, and the whole into a ``Scheme`` describing what the graph holds. The graph
records qparams, not the observers that chose them, nor the float weights (``convert_pt2e``
freezes the weights as codes): a layer's weight range is that of its dequantized codes, and an
activation's range is the one its qparams represent (no histogram). ``fp32_values`` runs the
graph in float without quantizing activations (weights dequantized from their codes): the
nearest the converted graph holds to the float model, the reference ``Pt2eModel.trace`` shows.
Read only; ``qcal.export.pt2e`` runs the graph.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch

from qcal.calibration.model import ActivationInfo, LayerTrace, QuantLayer
from qcal.schemes import QSpec, Scheme

__all__ = ["Pt2eRead", "float_run", "fp32_values", "pt2e_traces", "read_pt2e", "target_name"]

_QD = "quantized_decomposed"
_KINDS = {"aten.conv2d.default": "conv", "aten.linear.default": "linear"}
_DTYPES = {torch.int8: "qint8", torch.uint8: "quint8"}


def target_name(target: Any) -> str:
    """``namespace.op.overload`` of an aten/quantized_decomposed target, else its name."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


@dataclass(frozen=True, eq=False)
class Pt2eRead:
    """What ``read_pt2e`` found: layers by name, each layer's conv/linear node, activations."""

    layers: dict[str, QuantLayer]
    nodes: dict[str, str]  # layer name -> its conv/linear node's name
    activations: list[ActivationInfo]
    scheme: Scheme


def read_pt2e(converted: torch.fx.GraphModule) -> Pt2eRead:
    """The layers, activations and scheme of a ``convert_pt2e`` graph (see the module doc)."""
    found = [(n, _layer(converted, n)) for n in converted.graph.nodes
             if n.op == "call_function" and target_name(n.target) in _KINDS]
    found = [(n, ly) for n, ly in found if ly is not None]  # other patterns: refused when run
    modules = [_module_of(n) for n, _ in found]
    layers, nodes = {}, {}
    for (node, layer), module in zip(found, modules, strict=True):
        name = module if module and modules.count(module) == 1 else node.name
        layers[name] = _renamed(layer, name)
        nodes[name] = node.name
    activations = [_activation(n) for n in converted.graph.nodes if _is_activation_quantize(n)]
    return Pt2eRead(layers, nodes, activations, _scheme(layers, activations, converted))


def _layer(gm: torch.fx.GraphModule, node: torch.fx.Node) -> QuantLayer | None:
    """One conv/linear's QuantLayer, or None when its pattern is not dq -> op [-> relu] -> q."""
    x_dq, w_dq = node.args[0], node.args[1]
    if not (_is_dq(x_dq, "per_tensor") and _is_dq(w_dq, "per_")):
        return None
    relu, out = _output_quantize(node)
    if out is None:
        return None
    codes, scale, zp = (_value(gm, a) for a in w_dq.args[:3])
    per_channel = "per_channel" in target_name(w_dq.target)
    scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    zp = torch.as_tensor(zp, dtype=torch.int64).reshape(-1)
    shape = (-1,) + (1,) * (codes.dim() - 1)
    real = (codes.float() - zp.float().reshape(shape)) * scale.reshape(shape)
    flat = real.reshape(real.shape[0], -1)
    bias = _value(gm, node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
    symmetric = bool((zp == 0).all())
    qscheme = f"{'per_channel' if per_channel else 'per_tensor'}_{'symmetric' if symmetric else 'affine'}"
    kind = _KINDS[target_name(node.target)]
    geometry = _conv_geometry(node.args) if kind == "conv" else {}
    return QuantLayer(
        name=node.name, kind=kind, weight_q=codes, weight_scale=scale, weight_zero_point=zp, weight_qscheme=qscheme,
        weight_min=flat.min(1).values, weight_max=flat.max(1).values,
        bias=None if bias is None else bias.detach().float(), input_scale=float(x_dq.args[1]),
        input_zero_point=int(x_dq.args[2]), output_scale=float(out.args[1]), output_zero_point=int(out.args[2]),
        relu=relu, **geometry)


def _renamed(layer: QuantLayer, name: str) -> QuantLayer:
    fields = {k: getattr(layer, k) for k in layer.__dataclass_fields__}
    return QuantLayer(**{**fields, "name": name})


def _output_quantize(node: torch.fx.Node) -> tuple[bool, torch.fx.Node | None]:
    """(fused ReLU, the quantize giving the output's qparams) after ``node``, through single users."""
    users = list(node.users)
    relu = False
    if len(users) == 1 and target_name(users[0].target) in ("aten.relu.default", "aten.relu_.default"):
        relu, users = True, list(users[0].users)
    if len(users) == 1 and target_name(users[0].target).startswith(_QD + ".quantize_per_tensor"):
        return relu, users[0]
    return relu, None


def _conv_geometry(args: tuple) -> dict[str, Any]:
    defaults = ([1, 1], [0, 0], [1, 1], 1)
    stride, padding, dilation, groups = (tuple(args[3:]) + defaults[len(args) - 3:])[:4]
    return {"stride": tuple(stride), "padding": tuple(padding), "dilation": tuple(dilation), "groups": int(groups)}


def _is_dq(node: Any, kind: str) -> bool:
    return isinstance(node, torch.fx.Node) and target_name(node.target).startswith(f"{_QD}.dequantize_{kind}")


def _is_activation_quantize(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and target_name(node.target).startswith(_QD + ".quantize_per_tensor")


def _activation(node: torch.fx.Node) -> ActivationInfo:
    """A quantize node's qparams and the range they represent (the graph keeps no histogram)."""
    scale, zp, qmin, qmax = float(node.args[1]), int(node.args[2]), int(node.args[3]), int(node.args[4])
    src = node.args[0]
    label = src.name if isinstance(src, torch.fx.Node) else node.name
    lo, hi = (qmin - zp) * scale, (qmax - zp) * scale
    empty = torch.zeros(0, dtype=torch.float64)
    return ActivationInfo(label, scale, zp, lo, hi, empty, empty, lo, hi, observer="read from the PT2E graph")


def _scheme(layers: dict[str, QuantLayer], activations: list[ActivationInfo], gm: torch.fx.GraphModule) -> Scheme:
    """A Scheme saying what the graph holds: weight granularity/symmetry, code ranges, dtypes."""
    qschemes = sorted({ly.weight_qscheme for ly in layers.values()}) or ["per_channel_symmetric"]
    w_q = [n for n in gm.graph.nodes if _is_dq(n, "per_") and n.args and _is_frozen(gm, n.args[0])]
    w_min, w_max = (int(w_q[0].args[-3]), int(w_q[0].args[-2])) if w_q else (None, None)
    a_q = next((n for n in gm.graph.nodes if _is_activation_quantize(n)), None)
    a_dtype = _DTYPES.get(a_q.args[5], "qint8") if a_q is not None else "qint8"
    weight = QSpec("qint8", qschemes[0], "minmax", quant_min=w_min, quant_max=w_max)
    activation = QSpec(a_dtype, "per_tensor_affine", "minmax")
    what = ", ".join(qschemes)
    return Scheme("pt2e", weight, activation,
                  f"read from a convert_pt2e graph ({what} weights, {a_dtype} activations): its own qparams; "
                  "the observers that chose them are not recorded (shown as minmax)")


def _is_frozen(gm: torch.fx.GraphModule, node: Any) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "get_attr" and _value(gm, node).dtype in _DTYPES


def _value(gm: torch.fx.GraphModule, a: Any) -> Any:
    return operator.attrgetter(a.target)(gm) if isinstance(a, torch.fx.Node) else a


def _module_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


class _Float(torch.fx.Interpreter):
    """The converted graph with activation quantize/dequantize pairs as identities."""

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        name = target_name(target)
        if name.startswith(_QD + ".quantize_per_tensor"):
            return args[0]
        if name.startswith(_QD + ".dequantize_per_tensor") and args[0].is_floating_point():
            return args[0]
        return super().call_function(target, args, kwargs)

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if target == "_guards_fn":  # torch.export's shape guards (the integer run skips them too)
            return None
        return super().call_module(target, args, kwargs)


@torch.no_grad()
def float_run(converted: torch.fx.GraphModule, *inputs: torch.Tensor) -> Any:
    """The graph's output with activations left in float (``_Float``)."""
    return _Float(converted).run(*inputs)


@torch.no_grad()
def fp32_values(converted: torch.fx.GraphModule, nodes: list[str], *inputs: torch.Tensor) -> dict[str, Any]:
    """Each named node's value with activations left in float (weights dequantized codes)."""
    interp, wanted = _Float(converted, garbage_collect_values=False), set(nodes)
    interp.run(*inputs)
    return {node.name: interp.env[node] for node in converted.graph.nodes if node.name in wanted}


def pt2e_traces(pm: Any, inputs: torch.Tensor) -> dict[str, LayerTrace]:
    """``Pt2eModel.trace``: per conv/linear layer (by layer name) and per fused add (by node)."""
    detail: dict[str, tuple] = {}
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    pm.run_detailed(args, detail)
    at = {name: _fp32_node(pm.converted, node) for name, node in pm.layer_nodes.items()}
    adds = [n for n in detail if n not in pm.layer_nodes.values()]
    fp32 = fp32_values(pm.converted, [*at.values(), *(_fp32_node(pm.converted, a) for a in adds)], *args)
    traces: dict[str, LayerTrace] = {}
    for name, node in pm.layer_nodes.items():
        layer, (x, out, res) = pm.quant_layers[name], detail[node]
        traces[name] = LayerTrace(
            name, layer.kind, x.q, x.scale, x.zero_point, layer.weight_q, layer.weight_scale, layer.weight_zero_point,
            res.acc, out.q, out.scale, out.zero_point, fp32[at[name]], int(res.saturated_pairs))
    for node in adds:
        x, out, _ = detail[node]
        traces[node] = LayerTrace(node, "add", x.q, x.scale, x.zero_point, None, None, None, None, out.q, out.scale,
                                  out.zero_point, fp32[_fp32_node(pm.converted, node)])
    return traces


def _fp32_node(gm: torch.fx.GraphModule, name: str) -> str:
    """The node whose value the layer's output quantize reads (the op, or its fused ReLU)."""
    node = next(n for n in gm.graph.nodes if n.name == name)
    users = list(node.users)
    if len(users) == 1 and target_name(users[0].target) in ("aten.relu.default", "aten.relu_.default"):
        return users[0].name
    return name
