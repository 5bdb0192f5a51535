"""PT2E in: a ``convert_pt2e`` result run in integers, as ExecuTorch's XNNPACK delegate runs it.

``from_pt2e(converted, backend="xnnpack")`` reads the quantize/dequantize nodes torchao's
``convert_pt2e`` leaves around each annotated operator (XNNPACKQuantizer, or any quantizer
producing ``quantized_decomposed`` nodes: the graph does not record its quantizer, hence
``backend``) and runs the graph on plain integer codes with qcal's kernels
(``qcal.int8``; no quantized tensor types). Each ``dequantize -> op [-> relu] -> quantize``
group becomes one integer operator, as the delegate fuses it: conv2d (dense, grouped,
depthwise), linear, add, each with an optional fused ReLU, and global average pooling
(``adaptive_avg_pool2d`` to 1x1, ``mean`` over H and W keeping the dims: XNNPACK's qs8 mean,
``qcal.int8.backends.xnnpack_pool``); flatten/reshape/view, max pooling, ReLU and ``cat`` of
inputs sharing one quantization (as XNNPACKQuantizer annotates it) act on codes directly (what
XNNPACK computes for them is exact). The model's float
input is quantized as XNNPACK's convert does (``rint(f32(x * f32(1/s))) + zp``, torch's rule
too) and its output dequantized as ``f32(f32(q - zp) * s)``.

Refused with the reason: other operators between a dequantize and a quantize (``avg_pool2d``,
which XNNPACKQuantizer does not annotate, and adaptive pooling to other sizes among them), ``cat``
of inputs with different qparams, a quantize
changing the qparams of codes (a requantizing convert), per-channel activations, any backend
but "xnnpack" and graphs with uint8 activations (X86InductorQuantizer's: the delegate runs int8
activations only, and x86 inductor's fused int8 kernels are not modelled yet).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch

from qcal.calibration.model import QuantizedModel
from qcal.export.pt2e_read import pt2e_traces, read_pt2e
from qcal.export.pt2e_read import target_name as _target_name
from qcal.int8 import kernels, qadd
from qcal.int8.backends.xnnpack_pool import xnnpack_mean_hw

__all__ = ["Codes", "Pt2eModel", "from_pt2e", "fused", "require_pt2e"]

INSTALL = "pip install 'qcal[pt2e]' (executorch==1.5.1, which brings torchao 0.18.0)"
_QD = "quantized_decomposed"


def require_pt2e() -> None:
    """ImportError naming the install command unless torchao and executorch import."""
    try:
        import executorch.exir  # noqa: F401
        import torchao.quantization.pt2e  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"PT2E models and ExecuTorch need the pt2e extra: {INSTALL} ({exc})") from exc


@dataclass(frozen=True, eq=False)
class Codes:
    """Integer codes with their quantization: per tensor (``axis`` None) or per channel."""

    q: torch.Tensor
    scale: Any  # float, or float32 (C,) per channel
    zero_point: Any  # int, or int64 (C,)
    axis: int | None = None


@dataclass(eq=False)
class _Pending:
    """A conv/linear/add waiting for the quantize that gives its output qparams."""

    node: torch.fx.Node
    op: str
    args: tuple
    relu: bool = False


class Pt2eModel(QuantizedModel):
    """A ``convert_pt2e`` result run in ``backend``'s integer arithmetic (see the module doc).

    A ``QuantizedModel`` (mode "pt2e") whose layers, activations and scheme are read from the
    graph's quantize/dequantize nodes (``qcal.export.pt2e_read``): ``layers()``, ``scales()``,
    ``trace(x)`` and the Requant page's worked example work as for a calibrated model.
    ``model(x)`` returns what the delegate returns; ``model.codes(x)`` every fused operator's
    output codes by graph node name (the per-layer view); ``fused_nodes`` those nodes' names,
    ``layer_nodes`` each conv/linear layer's node.
    """

    def __init__(self, converted: torch.fx.GraphModule, backend: str = "xnnpack") -> None:
        read = read_pt2e(converted)
        super().__init__(float_model=converted, scheme=read.scheme, backend=backend, mode="pt2e",
                         fallback_reason=None, graph=None, layers=read.layers, activations=read.activations)
        self.converted = converted
        self.layer_nodes = read.nodes
        self.fused_nodes = [n.name for n in converted.graph.nodes if n.op == "call_function" and _is_layer(n)]

    def __call__(self, *inputs: torch.Tensor) -> Any:
        return self._run(_positional(inputs), None)

    def runtime(self) -> Pt2eModel:
        return self

    def trace(self, inputs: torch.Tensor) -> dict[str, Any]:
        """Per conv/linear layer and fused add: int8 input, int32 accumulator, int8 output, and
        the graph's float value there (activations unquantized: ``pt2e_read.fp32_values``)."""
        traces = pt2e_traces(self, inputs)
        self._saturated = {name: t.saturated_pairs for name, t in traces.items()}
        return traces

    def with_backend(self, backend: str, *, reproduce_torch_bugs: bool | None = None) -> Pt2eModel:
        if backend != self.backend:
            raise ValueError(f"a PT2E model runs as backend {self.backend!r} only: from_pt2e models 'xnnpack'")
        return self

    def codes(self, *inputs: torch.Tensor) -> dict[str, Codes]:
        """Each fused operator's output codes (keyed by its conv/linear/add node's name)."""
        return self.run_with_codes(*inputs)[1]

    def run_with_codes(self, *inputs: torch.Tensor) -> tuple[Any, dict[str, Codes]]:
        """``(model(*inputs), model.codes(*inputs))`` from one run."""
        seen: dict[str, Codes] = {}
        return self._run(_positional(inputs), seen), seen

    def run_detailed(self, inputs: tuple, detail: dict[str, tuple]) -> Any:
        """Run, recording per fused conv/linear/add node ``(input Codes, output Codes, KernelResult
        or None)`` in ``detail``."""
        return self._run(_positional(inputs), None, detail)

    @torch.no_grad()
    def _run(self, inputs: tuple, seen: dict[str, Codes] | None, detail: dict | None = None) -> Any:
        env: dict[str, Any] = {}
        feed = iter(inputs)
        out: Any = None
        for node in self.converted.graph.nodes:
            if node.op == "placeholder":
                env[node.name] = next(feed)
            elif node.op == "get_attr":
                env[node.name] = _attr(self.converted, node.target)
            elif node.op == "call_function":
                env[node.name] = self._step(node, _load(node.args, env), _load(node.kwargs, env), seen, detail)
            elif node.op == "output":
                out = _load(node.args[0], env)
            elif node.op == "call_module" and node.target == "_guards_fn":
                env[node.name] = None  # torch.export's shape guards: nothing to compute
            else:
                raise ValueError(f"PT2E node {node.name} ({node.op} {node.target}) is not supported")
        return _finish(out)

    def _step(self, node: torch.fx.Node, args: tuple, kwargs: dict, seen: dict | None, detail: dict | None) -> Any:
        name = _target_name(node.target)
        if name.startswith(_QD + ".quantize_per_tensor"):
            return self._quantize(node, args, seen, detail)
        if name.startswith(_QD + ".dequantize_per_"):
            return _dequantize(name, args)
        if any(isinstance(a, (Codes, _Pending)) for a in _flat_args(args)):
            return _on_codes(node, name, args, kwargs)
        return node.target(*args, **kwargs)  # float parts (none between q/dq in a lowered model)

    def _quantize(self, node: torch.fx.Node, args: tuple, seen: dict | None, detail: dict | None) -> Codes:
        x, scale, zp, qmin, qmax, dtype = args[:6]
        if isinstance(x, _Pending):
            out = self._compute(x, float(scale), int(zp), dtype, detail)
            if seen is not None:
                seen[x.node.name] = out
            return out
        if isinstance(x, Codes):
            if x.axis is None and float(x.scale) == float(scale) and int(x.zero_point) == int(zp):
                return x  # a dq -> q pair around a shape op: the same codes
            raise ValueError(f"{node.name}: requantizing codes to new qparams (XNNPACK's convert) is not supported yet")
        inv = torch.tensor(1.0 / float(scale), dtype=torch.float32)  # f32(1/s), XNNPACK's and torch's
        q = torch.round(x.float() * inv) + int(zp)
        return Codes(q.clamp(qmin, qmax).to(dtype), float(scale), int(zp))

    def _compute(self, p: _Pending, so: float, zo: int, dtype: torch.dtype, detail: dict | None) -> Codes:
        if detail is None or p.op not in ("conv2d", "linear", "add"):
            return Codes(fused(p.op, p.args, p.relu, so, zo, dtype, self.backend), so, zo)
        res = fused(p.op, p.args, p.relu, so, zo, dtype, self.backend, detailed=p.op != "add")
        out = Codes(res if p.op == "add" else res.out, so, zo)
        detail[p.node.name] = (p.args[0], out, None if p.op == "add" else res)
        return out


def _positional(inputs: tuple) -> tuple:
    """The graph's positional inputs: ``model(x, y)`` or one batch given as a tuple, ``model((x, y))``."""
    return tuple(inputs[0]) if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)) else inputs


def fused(op: str, args: tuple, relu: bool, so: float, zo: int, dtype: torch.dtype, backend: str = "xnnpack",
          *, detailed: bool = False) -> Any:
    """One fused operator (conv2d, linear, add) on ``Codes`` arguments, as ``backend`` computes it.

    Args:
        op: "conv2d" | "linear" | "add"; args: the aten node's arguments with ``Codes`` for the
            quantized ones (weights, activations) and the float bias; relu: a fused ReLU;
        so, zo, dtype: the output's quantization (from the quantize node that follows).
        detailed: conv2d/linear return ``qcal.int8``'s ``KernelResult`` (output, int32
            accumulator, requantization numbers) instead of the output codes.
    """
    zo_t = torch.tensor(zo, dtype=dtype)
    if op == "mean":
        if relu:
            raise ValueError("a ReLU fused after a global average pooling is not supported")
        x = args[0]
        return xnnpack_mean_hw(x.q, x.scale, x.zero_point, so, zo)
    if op == "add":
        a, b = args
        return qadd.add(a.q, a.scale, a.zero_point, b.q, b.scale, b.zero_point, so, zo, relu=relu, backend=backend)
    x, w = args[:2]
    bias = args[2] if len(args) > 2 else None  # aten.linear(x, w) without a bias
    wargs = (w.q, _scale_arg(w), _zp_arg(w), None if bias is None else bias.float())
    if op == "linear":
        call = kernels.linear_detailed if detailed else kernels.linear
        return call(x.q, x.scale, x.zero_point, *wargs, so, zo_t, relu=relu, backend=backend)
    stride, padding, dilation, groups = _conv_args(args)
    call = kernels.conv2d_detailed if detailed else kernels.conv2d
    return call(x.q, x.scale, x.zero_point, *wargs, so, zo_t, stride=stride, padding=padding,
                dilation=dilation, groups=groups, relu=relu, backend=backend)


_FUSED = {"aten.conv2d.default": "conv2d", "aten.linear.default": "linear", "aten.add.Tensor": "add"}
_POOLS = ("aten.adaptive_avg_pool2d.default", "aten.mean.dim")  # global average pooling, when to 1x1
_SHAPE_OPS = ("aten.flatten.using_ints", "aten.view.default", "aten.reshape.default", "aten.max_pool2d.default",
              "aten.squeeze.dims", "aten.squeeze.dim", "aten.unsqueeze.default")


def _on_codes(node: torch.fx.Node, name: str, args: tuple, kwargs: dict) -> Any:
    """An aten operator reading codes: a fused operator's start, its ReLU, or a shape op."""
    if name in _FUSED:
        if kwargs or (name == "aten.add.Tensor" and len(args) > 2):
            raise ValueError(f"{node.name}: {name} with {kwargs or args[2:]} is not supported")
        return _Pending(node, _FUSED[name], args)
    if name in ("aten.relu.default", "aten.relu_.default"):
        x = args[0]
        if isinstance(x, _Pending):
            x.relu = True
            return x
        return Codes(x.q.clamp_min(x.zero_point), x.scale, x.zero_point)  # XNNPACK's clamp at q(0)
    if name in _SHAPE_OPS and isinstance(args[0], Codes) and args[0].axis is None:
        x = args[0]
        return Codes(node.target(x.q, *args[1:], **kwargs), x.scale, x.zero_point)
    if name in _POOLS and isinstance(args[0], Codes) and args[0].axis is None:
        _check_global_pool(node, name, args, kwargs)
        return _Pending(node, "mean", args[:1])  # requantized by the quantize that follows
    if name == "aten.cat.default":
        return _cat(node, args, kwargs)
    if name == "aten.avg_pool2d.default":
        raise ValueError(f"{node.name}: avg_pool2d runs in float on dequantized values (XNNPACKQuantizer does not "
                         "annotate it) and XNNPACK's float average pooling is not modelled; adaptive_avg_pool2d "
                         "to 1x1 and max pooling are read")
    raise ValueError(f"{node.name}: {name} on quantized values is not supported by qcal's PT2E reader")


def _check_global_pool(node: torch.fx.Node, name: str, args: tuple, kwargs: dict) -> None:
    """ValueError unless the pool averages all of H and W of a 4-D input, keeping the dims."""
    x = args[0].q
    if name == "aten.adaptive_avg_pool2d.default":
        ok = x.dim() == 4 and [int(v) for v in args[1]] == [1, 1]
    else:
        dims = sorted(int(d) % x.dim() for d in args[1])
        ok = x.dim() == 4 and dims == [2, 3] and len(args) > 2 and bool(args[2]) and not kwargs
    if not ok:
        raise ValueError(f"{node.name}: {name}{tuple(args[1:])} is not a global average pooling to 1x1 (keeping "
                         "the dims), the only pooling qcal reads: XNNPACK runs other sizes as its own avgpool, "
                         "not modelled yet")


def _cat(node: torch.fx.Node, args: tuple, kwargs: dict) -> Codes:
    """XNNPACK's concatenate copies codes: exact when every input has the same qparams."""
    parts, dim = args[0], (args[1] if len(args) > 1 else kwargs.get("dim", 0))
    if not all(isinstance(p, Codes) and p.axis is None for p in parts):
        raise ValueError(f"{node.name}: cat of values that are not all per-tensor quantized codes")
    qparams = {(float(p.scale), int(p.zero_point)) for p in parts}
    if len(qparams) != 1:
        raise ValueError(f"{node.name}: cat of inputs with different qparams {sorted(qparams)}: XNNPACKQuantizer "
                         "shares one quantization among them, requantizing inputs is not modelled")
    return Codes(torch.cat([p.q for p in parts], dim), parts[0].scale, parts[0].zero_point)


def _is_layer(node: torch.fx.Node) -> bool:
    """A fused conv/linear/add, or a pool reading dequantized codes (both requantize)."""
    name = _target_name(node.target)
    if name in _FUSED:
        return True
    src = node.args[0] if node.args else None
    return name in _POOLS and isinstance(src, torch.fx.Node) and _target_name(src.target).startswith(_QD + ".dequantize")


def _flat_args(args: tuple) -> list:
    return [b for a in args for b in (a if isinstance(a, (list, tuple)) else (a,))]


def _dequantize(name: str, args: tuple) -> Codes:
    if "per_channel" in name:
        q, scale, zp, axis = args[:4]
        return Codes(q, scale.float(), zp.to(torch.int64), int(axis))
    x = args[0]
    if isinstance(x, Codes):  # the codes a quantize produced (activation)
        return x
    return Codes(x, float(args[1]), int(args[2]))  # a frozen per-tensor weight


def _finish(out: Any) -> Any:
    """Outputs back to float: codes that reach the output are dequantized as XNNPACK does."""
    if isinstance(out, (tuple, list)):
        items = [_finish(o) for o in out]
        return items[0] if len(items) == 1 else type(out)(items)
    if isinstance(out, Codes):
        return (out.q.float() - out.zero_point) * torch.tensor(out.scale, dtype=torch.float32)
    return out


def _scale_arg(w: Codes) -> Any:
    return w.scale if w.axis is None else w.scale.reshape(-1)


def _zp_arg(w: Codes) -> Any:
    return w.zero_point if w.axis is None else w.zero_point.reshape(-1)


def _conv_args(args: tuple) -> tuple:
    defaults = ([1, 1], [0, 0], [1, 1], 1)
    rest = tuple(args[3:]) + defaults[len(args) - 3:]
    return tuple(tuple(v) if isinstance(v, list) else v for v in rest[:4])


def _attr(module: torch.nn.Module, target: str) -> Any:
    return operator.attrgetter(target)(module)


def _load(a: Any, env: dict[str, Any]) -> Any:
    return torch.fx.node.map_arg(a, lambda n: env[n.name])


def from_pt2e(converted: torch.fx.GraphModule, *, backend: str = "xnnpack") -> Pt2eModel:
    """A ``convert_pt2e`` result as a ``Pt2eModel`` (a ``QuantizedModel``) computing what
    ``backend``'s runtime does.

    Args:
        converted: ``convert_pt2e(prepare_pt2e(exported, quantizer))`` (a GraphModule).
        backend: the runtime it will run on; only "xnnpack" (ExecuTorch's XNNPACK delegate).
    """
    require_pt2e()
    if backend != "xnnpack":
        raise ValueError(f"from_pt2e models backend 'xnnpack' only, got {backend!r}: x86 inductor's "
                         "fused int8 kernels are not modelled yet")
    if not isinstance(converted, torch.fx.GraphModule):
        raise TypeError(f"from_pt2e takes convert_pt2e's GraphModule, got {type(converted).__name__}")
    model = Pt2eModel(converted, backend)
    if model.scheme.activation.dtype != "qint8":  # e.g. X86InductorQuantizer's graphs
        raise ValueError(f"from_pt2e: this graph quantizes activations to {model.scheme.activation.dtype} (as "
                         "X86InductorQuantizer does); ExecuTorch's XNNPACK delegate runs int8 activations only, "
                         "and x86 inductor's fused int8 kernels are not modelled yet")
    return model
