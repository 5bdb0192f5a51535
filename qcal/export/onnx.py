"""``to_onnx``: a calibrated graph-mode QuantizedModel as an ONNX QDQ model.

Written with ``onnx.helper`` from qcal's own integer program (``qcal.program``), so every
number in the file is one qcal computed: QuantizeLinear / DequantizeLinear around float
ops, int8 weights (per channel along axis 0 where the scheme says so; codes already within
a spec's quant_min..quant_max, activations saturating to their dtype as in torch), int32 biases at
scale ``f32(x_scale * w_scale_j)`` (``rint(f32(b / scale))``, onnxruntime's quantizer's rule),
one float32 input ``input`` with a dynamic batch dimension and one float32 output ``output``.

Each program step becomes (qparams ``(s, z)`` of the step's output observation point):

* quantize ``Q``; dequantize ``DQ``; conv ``DQ -> Conv -> [Relu] -> Q``; linear
  ``DQ -> Gemm(transB) -> [Relu] -> Q``; add ``DQ, DQ -> Add -> [Relu] -> Q``;
* max pool / average pool / ReLU / ReLU6-clamp / flatten / global average pool keep their input's qparams:
  ``DQ -> op -> Q`` with the same ``(s, z)``; float steps (``nn.Flatten`` after a dequantize)
  run on floats.

onnxruntime fuses these groups (see ``qcal.int8.backends.ort``); ``qm.with_backend("ort")`` computes
what it computes. Module-swap models are refused: their fp32 parts are arbitrary Python
(``forward`` code qcal never traced), which only ``torch.onnx.export`` of the float model
could write; export them by making the model fx-traceable (graph mode) instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qcal.graph.program import pool_params, run_float

__all__ = ["OPSET", "UnsupportedExport", "onnx_bytes", "to_onnx"]

#: ONNX opset of the written files (onnxruntime 1.32 runs up to 23).
OPSET = 21


class UnsupportedExport(ValueError):
    """The model holds something ``to_onnx`` cannot write; the message says what."""


class _Writer:
    """Accumulates nodes and initializers while walking the program."""

    def __init__(self, qm: Any) -> None:
        self.qm = qm
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.names: dict[str, str] = {}  # program value -> ONNX tensor (codes or floats)
        self.quantized: dict[str, int] = {}  # program value -> observation point of its codes
        self.debug: list[str] = []  # ONNX names of every Q output, in program order
        self.dtype = TensorProto.UINT8 if qm.scheme.activation.dtype == "quint8" else TensorProto.INT8
        self.np_dtype = np.uint8 if self.dtype == TensorProto.UINT8 else np.int8
        self.shapes: dict[str, tuple[int, ...]] = {}  # value -> shape on one sample (when the input's is known)

    def check_gemm_input(self, step: Any) -> None:
        """A linear layer is a Gemm, which takes (batch, features) only: refuse other ranks by name."""
        shape = self.shapes.get(step.args[0].name)
        if shape is not None and len(shape) != 2:
            raise _unsupported(step, self.qm.graph, f"a linear layer on a {len(shape)}-D input {tuple(shape)} has "
                               "no Gemm form (ONNX Gemm takes (batch, features)); flatten its input first")

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(value, name)
        return name

    def qparams(self, obs: int) -> tuple[str, str]:
        act = self.qm.activations[obs]
        s = self.const(f"act{obs}_scale", np.array(act.scale, dtype=np.float32))
        z = self.const(f"act{obs}_zero_point", np.array(act.zero_point, dtype=self.np_dtype))
        return s, z

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def quantize(self, src: str, obs: int, out: str) -> str:
        self.node("QuantizeLinear", [src, *self.qparams(obs)], out)
        self.debug.append(out)
        return out

    def floats(self, value: str) -> str:
        """The float tensor of a program value (a DequantizeLinear of its codes when quantized)."""
        if value not in self.quantized:
            return self.names[value]
        return self.node("DequantizeLinear", [self.names[value], *self.qparams(self.quantized[value])],
                         f"{self.names[value]}_dq_{len(self.nodes)}")


_EXPORTED = ("conv2d, linear on (batch, features), add, relu, relu6/hardtanh/clamp, nn.MaxPool2d, "
             "avg_pool2d (no divisor_override), adaptive_avg_pool2d to (1, 1), flatten(x, start_dim), eval-mode dropout")


def _unsupported(step: Any, graph: Any, why: str) -> UnsupportedExport:
    """An UnsupportedExport naming the op, the layer (module) or graph node, and what exports."""
    if step.op == "call_module":
        where = f"layer {step.target!r} ({type(graph.module.get_submodule(step.target)).__name__})"
    elif step.op in ("call_function", "call_method"):
        where = f"{getattr(step.target, '__name__', step.target)} at graph node {step.name!r}"
    else:
        where = f"graph node {step.name!r}"
    return UnsupportedExport(f"to_onnx cannot write {where}: {why}; exported ops: {_EXPORTED}")


def _layer_initializers(w: _Writer, layer: Any, x_scale: float) -> tuple[str, str | None]:
    """The DequantizeLinear'd weight and int32 bias of a conv/linear layer."""
    from qcal.int8 import requant_multipliers

    per_channel = layer.weight_scale.numel() > 1
    axis = {"axis": 0} if per_channel else {}
    scale = layer.weight_scale.float().numpy() if per_channel else np.array(float(layer.weight_scale), np.float32)
    zp = layer.weight_zero_point.numpy().astype(np.int8)
    zp = zp if per_channel else np.array(zp.reshape(-1)[0], np.int8)
    name = layer.name
    wq = w.const(f"{name}.weight_q", layer.weight_q.numpy())
    ws, wz = w.const(f"{name}.weight_scale", scale), w.const(f"{name}.weight_zero_point", zp)
    weight = w.node("DequantizeLinear", [wq, ws, wz], f"{name}.weight", **axis)
    if layer.bias is None:
        return weight, None
    w_scale = layer.weight_scale if per_channel else float(layer.weight_scale)
    rq = requant_multipliers(x_scale, w_scale, layer.output_scale, layer.bias, backend="ort")
    bq = w.const(f"{name}.bias_q", rq.bias_int32.numpy())
    bs = w.const(f"{name}.bias_scale", rq.act_times_w_scale.numpy())
    bz = w.const(f"{name}.bias_zero_point", np.zeros(rq.bias_int32.numel(), np.int32))
    bias = w.node("DequantizeLinear", [bq, bs, bz], f"{name}.bias", axis=0)
    return weight, bias


def _layer(w: _Writer, step: Any) -> str:
    if step.kind == "linear":
        w.check_gemm_input(step)
    layer = w.qm.quant_layers[step.target]
    x = w.floats(step.args[0].name)
    weight, bias = _layer_initializers(w, layer, layer.input_scale)
    inputs = [x, weight] + ([bias] if bias else [])
    name = step.name
    if step.kind == "conv":
        (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
        y = w.node("Conv", inputs, f"{name}_conv", strides=[sh, sw], pads=[ph, pw, ph, pw],
                   dilations=[dh, dw], group=layer.groups)
    else:
        y = w.node("Gemm", inputs, f"{name}_gemm", transB=1)
    if step.relu:
        y = w.node("Relu", [y], f"{name}_relu")
    return w.quantize(y, step.obs, f"{name}_q")


def _float_layer(w: _Writer, step: Any, mod: nn.Module) -> str:
    """An fp32 layer of a recipe: float Conv / Gemm on the folded float weights (as a user
    ships a partly quantized model), its input a DequantizeLinear, its consumer's Q after it."""
    name = step.target
    weight = w.const(f"{name}.weight", mod.weight.detach().float().numpy())
    inputs = [w.names[step.args[0].name], weight]
    if mod.bias is not None:
        inputs.append(w.const(f"{name}.bias", mod.bias.detach().float().numpy()))
    if isinstance(mod, nn.Conv2d):
        (sh, sw), (ph, pw), (dh, dw) = mod.stride, mod.padding, mod.dilation
        y = w.node("Conv", inputs, f"{step.name}_conv", strides=[sh, sw], pads=[ph, pw, ph, pw],
                   dilations=[dh, dw], group=mod.groups)
    else:
        w.check_gemm_input(step)
        y = w.node("Gemm", inputs, f"{step.name}_gemm", transB=1)
    return w.node("Relu", [y], f"{step.name}_relu") if step.relu else y


def _float_step(w: _Writer, step: Any) -> str:
    """A step the program runs in fp32: a recipe's fp32 conv/linear layer or a flatten."""
    if step.op == "call_module":
        mod = w.qm.graph.module.get_submodule(step.target)
        if type(mod) in (nn.Conv2d, nn.Linear):
            return _float_layer(w, step, mod)
    return w.node("Flatten", [w.names[step.args[0].name]], step.name, axis=_flatten_axis(step, w.qm.graph))


def _same_qparams(w: _Writer, step: Any, op: str, extra: list[str] | None = None, **attrs: Any) -> str:
    """``DQ -> op -> Q`` keeping the input's qparams (pools, ReLU, clamps, flatten)."""
    x = w.floats(step.args[0].name)
    y = w.node(op, [x, *(extra or [])], f"{step.name}_{op.lower()}", **attrs)
    return w.quantize(y, w.quantized[step.args[0].name], f"{step.name}_q")


def _pair(v: Any) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def _pool_attrs(step: Any, graph: Any) -> dict[str, Any]:
    mod = graph.module.get_submodule(step.target) if step.op == "call_module" else None
    if mod is None or not isinstance(mod, nn.MaxPool2d):
        raise _unsupported(step, graph, "max pooling exports as an nn.MaxPool2d module only")
    k, s, p, d = _pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size), _pair(mod.padding), _pair(mod.dilation)
    return {"kernel_shape": k, "strides": s, "pads": p + p, "dilations": d, "ceil_mode": int(mod.ceil_mode)}


def _avg_pool_attrs(step: Any, graph: Any) -> dict[str, Any]:
    params = pool_params(step, graph, step.args, step.kwargs)
    if params.get("divisor_override") is not None:
        raise _unsupported(step, graph, "avg_pool2d with divisor_override has no ONNX AveragePool form")
    k = _pair(params["kernel_size"])
    s = _pair(params.get("stride") or params["kernel_size"])
    p = _pair(params.get("padding", 0))
    return {"kernel_shape": k, "strides": s, "pads": p + p, "ceil_mode": int(bool(params.get("ceil_mode", False))),
            "count_include_pad": int(bool(params.get("count_include_pad", True)))}


def _flatten_axis(step: Any, graph: Any) -> int:
    if step.op == "call_module":
        mod = graph.module.get_submodule(step.target)
        if isinstance(mod, nn.Flatten) and mod.end_dim == -1:
            return int(mod.start_dim)
    elif step.target is torch.flatten and len(step.args) >= 2 and not step.kwargs and len(step.args) == 2:
        return int(step.args[1])
    raise _unsupported(step, graph, "reshapes export as flatten(x, start_dim) to the last dim only")


def _shared(w: _Writer, step: Any) -> str:
    kind, graph = step.kind, w.qm.graph
    if kind == "max_pool2d":
        return _same_qparams(w, step, "MaxPool", **_pool_attrs(step, graph))
    if kind == "avg_pool2d":
        return _same_qparams(w, step, "AveragePool", **_avg_pool_attrs(step, graph))
    if kind == "adaptive_avg_pool2d":
        mod = graph.module.get_submodule(step.target) if step.op == "call_module" else None
        size = getattr(mod, "output_size", None)
        if size not in (1, (1, 1)):
            raise _unsupported(step, graph, f"adaptive_avg_pool2d exports to (1, 1) only (got output_size {size})")
        return _same_qparams(w, step, "GlobalAveragePool")
    if kind == "relu":
        return _same_qparams(w, step, "Relu")
    if kind == "clamp":
        lo, hi = step.clamp
        bounds = [w.const(f"clip_{lo!r}", np.array(lo, np.float32)), w.const(f"clip_{hi!r}", np.array(hi, np.float32))]
        return _same_qparams(w, step, "Clip", bounds)
    if kind == "shape":
        return _same_qparams(w, step, "Flatten", axis=_flatten_axis(step, graph))
    why = {"cat": "torch.cat has no export (QLinearConcat is not reproduced by the ort flavour)",
           "info": "reading a tensor's shape (x.shape, x.size()) has no export; flatten(x, 1) needs none"}
    raise _unsupported(step, graph, why.get(kind, f"{kind} steps have no export"))


def _add(w: _Writer, step: Any) -> str:
    a, b = (w.floats(r.name) for r in step.args)
    y = w.node("Add", [a, b], f"{step.name}_add")
    if step.relu:
        y = w.node("Relu", [y], f"{step.name}_relu")
    return w.quantize(y, step.obs, f"{step.name}_q")


def _identity_module(w: _Writer, step: Any) -> bool:
    return step.kind == "shape" and step.op == "call_module" and \
        type(w.qm.graph.module.get_submodule(step.target)) is nn.Identity


def _step(w: _Writer, step: Any) -> None:
    kind = step.kind
    if kind == "quantize":
        w.names[step.name] = w.quantize(w.names[step.args[0].name], step.obs, f"{step.name}_q")
        w.quantized[step.name] = step.obs
        return
    if kind == "dequantize":
        w.names[step.name] = w.floats(step.args[0].name)
        return
    if kind == "identity" or _identity_module(w, step):  # nn.Identity (a ResNet's empty shortcut): its input
        w.names[step.name] = w.names[step.args[0].name]
        if step.args[0].name in w.quantized:
            w.quantized[step.name] = w.quantized[step.args[0].name]
        return
    if kind == "float":
        w.names[step.name] = _float_step(w, step)
        return
    if kind in ("conv", "linear"):
        out = _layer(w, step)
    elif kind == "add":
        out = _add(w, step)
    else:
        out = _shared(w, step)
    w.names[step.name] = out
    w.quantized[step.name] = step.obs if kind in ("conv", "linear", "add") else w.quantized[step.args[0].name]


def build_model(qm: Any, input_shape: tuple[int, ...] | None = None, *, debug: bool = False) -> onnx.ModelProto:
    """The ONNX QDQ model of ``qm`` (see the module doc); ``debug`` adds every quantized
    value's codes as an extra graph output (which changes onnxruntime's fusions)."""
    if qm.mode != "graph":
        raise UnsupportedExport(
            "to_onnx exports graph-mode models only; this one runs in module-swap mode "
            f"({qm.fallback_reason or 'mode=modules'}): its fp32 parts are Python code qcal did not trace")
    w = _Writer(qm)
    graph = qm.graph
    if len(graph.inputs) != 1:
        raise UnsupportedExport(f"to_onnx exports models with one tensor input, this one takes {len(graph.inputs)}")
    w.names[graph.inputs[0][0]] = "input"
    if input_shape is not None:  # each value's shape on one zero sample (the float program)
        record: dict[str, Any] = {}
        run_float(graph, torch.zeros(1, *input_shape), record=record)
        w.shapes = {k: tuple(v.shape) for k, v in record.items() if isinstance(v, torch.Tensor)}
    result = None
    for step in graph.steps:
        if step.kind == "input":
            continue
        if step.kind == "output":
            result = step.args[0]
            break
        _step(w, step)
    if result is None or not hasattr(result, "name") or result.name in w.quantized:
        raise UnsupportedExport("to_onnx needs a model with one float tensor output")
    w.node("Identity", [w.names[result.name]], "output")
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)]
    if debug:
        outputs += [helper.make_tensor_value_info(n, w.dtype, None) for n in w.debug]
    g = helper.make_graph(w.nodes, "qcal", [_input_info(["batch", *input_shape] if input_shape else None)],
                          outputs, list(w.inits.values()))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qcal")
    model.ir_version = 10
    if input_shape is None:
        model.graph.input[0].CopyFrom(_input_info(_dynamic_dims(model)))
    return _typed_outputs(model)


def _input_info(dims: list[Any] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)


def _dynamic_dims(model: onnx.ModelProto, ranks: range = range(1, 7)) -> list[str]:
    """Symbolic dims ``batch, dim_1, ...`` for an input of unspecified shape.

    ONNX's checker wants a rank for every graph input, so the rank is the one the graph's
    ops accept (strict shape inference with every dimension symbolic): 4 for a 2-D conv.

    Raises:
        UnsupportedExport: the graph takes inputs of several ranks (e.g. Flatten first) or none.
    """
    fits = []
    for rank in ranks:
        dims = ["batch", *(f"dim_{i}" for i in range(1, rank))]
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        trial.graph.input[0].CopyFrom(_input_info(dims))
        try:
            onnx.shape_inference.infer_shapes(trial, check_type=True, strict_mode=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
            continue
        fits.append(dims)
    if len(fits) != 1:
        took = f"inputs of rank {', '.join(str(len(d)) for d in fits)}" if fits else "no input rank up to 6"
        raise UnsupportedExport(f"to_onnx: the graph's first ops take {took}, and an ONNX input needs one rank; "
                                "pass input_shape= (the shape of one sample, without the batch dimension)")
    return fits[0]


def _typed_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Graph outputs with the shapes onnx's shape inference finds (the checker wants them)."""
    done = onnx.shape_inference.infer_shapes(model)
    inferred = {v.name: v for v in [*done.graph.value_info, *done.graph.output]}
    for out in model.graph.output:
        if inferred.get(out.name) is not None and inferred[out.name].type.tensor_type.HasField("shape"):
            out.type.CopyFrom(inferred[out.name].type)
    return model


def to_onnx(qm: Any, path: str | Path, *, input_shape: tuple[int, ...] | None = None,
            debug: bool = False) -> Path:
    """Write ``qm`` as an ONNX QDQ model; checked with ``onnx.checker`` (full check).

    Args:
        qm: a graph-mode QuantizedModel (any scheme).
        path: the ``.onnx`` file to write.
        input_shape: the input's shape without the batch dimension (e.g. ``(1, 8, 8)``);
            None leaves the input's shape unspecified: every dimension dynamic (symbolic
            ``batch, dim_1, ...``), the rank being the one the graph's ops accept (4 for a
            2-D conv; a graph that takes several ranks, e.g. Flatten first, needs input_shape).
        debug: also output every quantized value's codes (``<program step>_q``);
            onnxruntime then fuses differently, so never ship this file.
    Returns:
        The path written.
    Raises:
        UnsupportedExport: module-swap models, ops with no ONNX form here (named), and
            ``input_shape=None`` on a graph that takes inputs of several ranks.

    Example::

        qm = qcal.calibrate(model, calib, "fbgemm_default")
        qcal.to_onnx(qm, "model.onnx", input_shape=(1, 8, 8))
    """
    data = onnx_bytes(qm, input_shape=input_shape, debug=debug)
    path = Path(path)
    path.write_bytes(data)
    return path


def onnx_bytes(qm: Any, *, input_shape: tuple[int, ...] | None = None, debug: bool = False) -> bytes:
    """The bytes ``to_onnx`` writes (checked the same way), e.g. for a download button."""
    model = build_model(qm, input_shape, debug=debug)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
