"""The observer plan and program of a folded fx graph: what torch's prepare_fx/convert_fx build.

``plan`` walks the folded graph once, node by node, deciding for each value whether it is
int8 (and which observation point gives its qparams), fp32, or not a tensor, exactly as
torch's native (fbgemm/qnnpack) backend config does:

* conv2d / linear (a directly following ReLU fused in) and add (a following ReLU fused
  in) get their own output observer;
* ops that only move or clamp values share their input's observer: the same observer
  instance also sees their output (one more ``tap`` on the same point, in graph order);
* everything else runs in fp32; a quantized op fed by an fp32 value gets one input
  observer per value (a quantize step), an fp32 op fed by int8 values a dequantize step.

With qint8 activations (XNNPACK's; no torch engine takes them) ``torch.relu`` is fused or
shared as ``F.relu`` is, as XNNPACKQuantizer annotates it; torch's native config keeps it fp32.

Under a ``Recipe`` each conv/linear takes its layer's scheme (None: fp32, with a fused ReLU)
and every other op the recipe's default, as torch's module-name qconfigs do (functional ops
and ReLU/pool modules never carry a conv/linear's name). At the boundaries, torch's rules:
an int8 input keeps its producer's observer whatever the consumer's activation spec (only
the dtype counts); an fp32 input is observed with the consumer's spec, and a second int8
consumer of the same fp32 value reuses that observer when its observer class and dtype
match (its other settings, e.g. reduce_range, are ignored).
"""

from __future__ import annotations

import operator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qcal.graph.ir import NO_DEFAULT, Graph, Ref, Step, UnsupportedGraph, only_user
from qcal.recipes import Recipe
from qcal.schemes import SCHEMES, QSpec

__all__ = ["plan"]

_RELU_MODULES = (nn.ReLU,)
_RELU_FUNCTIONS = (F.relu,)
# qint8 activations run on no torch engine (check_runnable refuses them there): their plan follows
# XNNPACKQuantizer where it departs from torch's native config, which leaves torch.relu in fp32
_QINT8_RELU_FUNCTIONS = (F.relu, torch.relu)
_SHAPE_FUNCTIONS = (torch.flatten, torch.transpose, torch.squeeze, torch.unsqueeze)
_SHAPE_METHODS = {"view", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "detach"}
_INFO_METHODS = {"size", "dim", "numel"}
_POOL_MODULES = {nn.MaxPool2d: "max_pool2d", nn.AvgPool2d: "avg_pool2d", nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d"}
_POOL_FUNCTIONS = {F.max_pool2d: "max_pool2d", torch._C._nn.avg_pool2d: "avg_pool2d",
                   F.adaptive_avg_pool2d: "adaptive_avg_pool2d"}
# Ops torch's native backend config would quantize but qcal's engine does not mirror: a
# graph holding one of them falls back to module-swap mode rather than differ from torch.
_UNMIRRORED_MODULES = (nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.Hardswish, nn.ELU,
                       nn.LeakyReLU, nn.PReLU, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.Sigmoid, nn.Tanh,
                       nn.Softmax, nn.Hardsigmoid, nn.ConvTranspose2d, nn.Conv1d, nn.Conv3d, nn.Embedding,
                       nn.AdaptiveAvgPool1d, nn.AvgPool1d, nn.MaxPool1d, nn.PixelShuffle, nn.Upsample,
                       nn.LSTM, nn.GRU, nn.MultiheadAttention)
_UNMIRRORED_FUNCTIONS = {torch.stack, torch.mean, torch.narrow, torch.repeat_interleave,
                         F.interpolate, F.dropout, F.conv2d, F.linear, F.layer_norm, F.hardswish, F.elu,
                         F.leaky_relu, torch.sigmoid, torch.tanh, F.hardsigmoid, operator.mul, torch.mul,
                         F.pixel_shuffle, F.max_pool1d, F.adaptive_avg_pool1d, operator.floordiv,
                         F.group_norm, torch.matmul}
_UNMIRRORED_METHODS = {"mean", "repeat", "repeat_interleave", "resize_", "squeeze_", "unsqueeze_",
                       "detach_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardsigmoid", "hardsigmoid_"}



def _plain_module(gm: fx.GraphModule, steps: list[Step]) -> nn.Module:
    """The GraphModule's children, parameters, buffers and get_attr values in a plain Module."""
    root = nn.Module()
    root._modules = dict(gm._modules)
    root._parameters = dict(gm._parameters)
    root._buffers = dict(gm._buffers)
    for step in steps:
        if step.op == "get_attr":
            head = step.target.split(".")[0]
            if not hasattr(root, head):
                setattr(root, head, getattr(gm, head))
    return root



def _is_relu(node: fx.Node, modules: dict[str, nn.Module], functions: tuple) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) in _RELU_MODULES
    return node.op == "call_function" and node.target in functions


def _clamp_bounds(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[float, float] | None:
    """(min, max) of a ReLU6 / Hardtanh / clamp node, or None if it is not one."""
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
            return float(mod.min_val), float(mod.max_val)
        return None
    args, kw = node.args, node.kwargs
    if node.op == "call_function" and node.target is F.relu6:
        return 0.0, 6.0
    if node.op == "call_function" and node.target in (F.hardtanh, F.hardtanh_):
        lo = args[1] if len(args) > 1 else kw.get("min_val", -1.0)
        hi = args[2] if len(args) > 2 else kw.get("max_val", 1.0)
        return float(lo), float(hi)
    if (node.op == "call_function" and node.target is torch.clamp) or (node.op == "call_method" and node.target == "clamp"):
        lo = args[1] if len(args) > 1 else kw.get("min")
        hi = args[2] if len(args) > 2 else kw.get("max")
        if any(isinstance(v, fx.Node) for v in (lo, hi)) or lo is None or hi is None:
            raise UnsupportedGraph(f"clamp {node.name} needs constant min and max")
        return float(lo), float(hi)
    return None



class _Planner:
    """Walks the folded graph once, emitting steps and observation points like prepare_fx."""

    def __init__(self, gm: fx.GraphModule, recipe: Recipe) -> None:
        self.gm = gm
        self.recipe = recipe
        self.default_act = None if recipe.default is None else recipe.default.activation
        self.obs_specs: list[QSpec] = []
        self.modules = dict(gm.named_modules())
        self.steps: list[Step] = []
        self.obs_names: list[str] = []
        self.layers: list[str] = []
        self.state: dict[str, str] = {}  # value name -> "q" (int8), "f" (fp32 tensor), "n" (non-tensor)
        self.obs_of: dict[str, int] = {}
        self.alias: dict[str, str] = {}  # fused-away nodes -> the step carrying their value
        self.quantized_from: dict[tuple[str, str, str], str] = {}  # (value, observer, dtype) -> step
        self.dequantized_from: dict[str, str] = {}

    def new_obs(self, label: str, spec: QSpec) -> int:
        self.obs_names.append(label)
        self.obs_specs.append(spec)
        return len(self.obs_names) - 1

    def ref(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: Ref(self.alias.get(n.name, n.name)))

    def emit(self, step: Step, state: str) -> None:
        self.steps.append(step)
        self.state[step.name] = state
        if step.obs is not None and state == "q":
            self.obs_of[step.name] = step.obs

    def quantized(self, r: Ref, spec: QSpec) -> Ref:
        """A quantized version of value ``r`` for a consumer observing with ``spec``: itself
        (int8 already), or a quantize step shared by consumers of the same observer class
        and dtype (torch reuses the first such observer of a value)."""
        st = self.state[r.name]
        if st == "q":
            return r
        if st != "f":
            raise UnsupportedGraph(f"{r.name} is not a tensor but feeds a quantized op")
        key = (r.name, spec.observer, spec.dtype)
        if key not in self.quantized_from:
            name = f"{r.name}_quantized" + ("" if not any(k[0] == r.name for k in self.quantized_from)
                                            else f"_{len(self.quantized_from)}")
            self.emit(Step(name, "quantize", args=(r,), obs=self.new_obs(r.name, spec)), "q")
            self.quantized_from[key] = name
        return Ref(self.quantized_from[key])

    def floats(self, a: Any) -> Any:
        """``a`` with each quantized value replaced by a (deduplicated) dequantize step."""

        def deq(x: Any) -> Any:
            if not isinstance(x, Ref) or self.state.get(x.name) != "q":
                return x
            if x.name not in self.dequantized_from:
                name = f"{x.name}_dequantized"
                self.emit(Step(name, "dequantize", args=(x,), obs=self.obs_of[x.name]), "f")
                self.dequantized_from[x.name] = name
            return Ref(self.dequantized_from[x.name])

        return fx.node.map_aggregate(a, deq)

    def tensor_args(self, node: fx.Node) -> list[Ref]:
        refs = [r for r in self.ref(node.args) if isinstance(r, Ref)] if isinstance(node.args, tuple) else []
        return [r for r in refs if self.state[r.name] in ("q", "f")]

    def plan(self) -> Graph:
        inputs = []
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                inputs.append((node.name, node.target, node.args[0] if node.args else NO_DEFAULT))
            if node.name in self.alias:
                continue
            getattr(self, f"_on_{node.op}")(node)
        self._compact_observation_points()
        return Graph(_plain_module(self.gm, self.steps), self.steps, self.obs_names, self.layers, inputs,
                     self.obs_specs)

    def _compact_observation_points(self) -> None:
        """Renumber the points still in use (torch.cat merges some) as 0..n-1, in order."""
        used = list(dict.fromkeys(s.obs for s in self.steps if s.obs is not None))
        if used == list(range(len(self.obs_names))):
            return
        new = {old: i for i, old in enumerate(used)}
        self.obs_names = [self.obs_names[old] for old in used]
        self.obs_specs = [self.obs_specs[old] for old in used]
        self.steps = [replace(s, obs=new[s.obs]) if s.obs is not None else s for s in self.steps]

    def _on_placeholder(self, node: fx.Node) -> None:
        self.emit(Step(node.name, "input", op="placeholder", target=node.target), "f")

    def _on_get_attr(self, node: fx.Node) -> None:
        self.emit(Step(node.name, "float", op="get_attr", target=node.target), "f")

    def _on_output(self, node: fx.Node) -> None:
        self.emit(Step(node.name, "output", op="output", args=self.floats(self.ref(node.args))), "n")

    def _float_step(self, node: fx.Node) -> None:
        args, kwargs = self.ref(node.args), self.ref(node.kwargs)
        refs: list[Ref] = []
        fx.node.map_aggregate((args, kwargs), lambda a: refs.append(a) if isinstance(a, Ref) else a)
        tensors = any(self.state[r.name] in ("q", "f") for r in refs)
        info = not tensors or (node.op == "call_method" and node.target in _INFO_METHODS) or (
            node.op == "call_function" and node.target is getattr and args[1] in ("shape", "dtype", "device"))
        if info:  # sizes and shapes: the same on int8 and fp32 tensors, no (de)quantize needed
            self.emit(Step(node.name, "info", op=node.op, target=node.target, args=args, kwargs=kwargs), "n")
            return
        self._check_mirrored(node)
        self.emit(Step(node.name, "float", op=node.op, target=node.target,
                       args=self.floats(args), kwargs=self.floats(kwargs)), "f")

    def _check_mirrored(self, node: fx.Node) -> None:
        if node.op == "call_module":
            mod = self.modules[node.target]
            if isinstance(mod, _UNMIRRORED_MODULES):
                raise UnsupportedGraph(f"{node.target} ({type(mod).__name__}) would be quantized by torch; qcal's engine does not mirror it")
        elif node.op == "call_function" and node.target in _UNMIRRORED_FUNCTIONS:
            raise UnsupportedGraph(f"{node.name} ({getattr(node.target, '__name__', node.target)}) would be quantized by torch; qcal's engine does not mirror it")
        elif node.op == "call_method" and node.target in _UNMIRRORED_METHODS:
            raise UnsupportedGraph(f"{node.name} (.{node.target}()) would be quantized by torch; qcal's engine does not mirror it")

    def _fuse_relu(self, node: fx.Node, functions: tuple) -> bool:
        user = only_user(node)
        if user is not None and _is_relu(user, self.modules, functions):
            self.alias[user.name] = node.name
            return True
        return False

    def _weighted(self, node: fx.Node, kind: str) -> None:
        mod = self.modules[node.target]
        if kind == "conv" and (mod.padding_mode != "zeros" or isinstance(mod.padding, str)):
            raise UnsupportedGraph(f"{node.target}: padding {mod.padding!r} / padding_mode {mod.padding_mode!r} "
                                   "is not supported (numeric zero padding only)")
        scheme = self.recipe.scheme_for(node.target)
        self.layers.append(node.target)
        if scheme is None:  # fp32 layer: torch fuses the ReLU all the same (conv-relu module)
            relu = self._fuse_relu(node, _RELU_FUNCTIONS)
            self.emit(Step(node.name, "float", op="call_module", target=node.target,
                           args=self.floats(self.ref(node.args)), kwargs=self.floats(self.ref(node.kwargs)),
                           relu=relu), "f")
            return
        x = self.quantized(self.ref(node.args[0]), scheme.activation)
        relu = self._fuse_relu(node, _QINT8_RELU_FUNCTIONS if scheme.activation.signed else _RELU_FUNCTIONS)
        self.emit(Step(node.name, kind, op="call_module", target=node.target, args=(x,),
                       obs=self.new_obs(node.target, scheme.activation), relu=relu), "q")

    def _on_call_module(self, node: fx.Node) -> None:
        mod = self.modules[node.target]
        if type(mod) is nn.Conv2d:
            return self._weighted(node, "conv")
        if type(mod) is nn.Linear:
            return self._weighted(node, "linear")
        if type(mod) in _RELU_MODULES:
            return self._shared(node, "relu")
        if _clamp_bounds(node, self.modules) is not None:
            return self._shared(node, "clamp")
        if type(mod) in _POOL_MODULES:
            return self._shared(node, _POOL_MODULES[type(mod)])
        if type(mod) is nn.Identity:
            return self._shared(node, "shape")
        if type(mod) is nn.Dropout:  # eval: torch's QuantizedDropout passes codes and qparams through
            return self._shared(node, "identity")
        return self._float_step(node)

    def _on_call_function(self, node: fx.Node) -> None:
        t = node.target
        if t in (operator.add, torch.add) and not node.kwargs:
            tensors = self.tensor_args(node)
            if len(tensors) == 2 and len(node.args) == 2:
                return self._add(node)
            if len(tensors) == 1:
                raise UnsupportedGraph(f"{node.name}: adding a scalar to a tensor (quantized add_scalar) is not mirrored")
        if t in _RELU_FUNCTIONS or (t is torch.relu and self.default_act is not None and self.default_act.signed):
            return self._shared(node, "relu")
        if t in _POOL_FUNCTIONS:
            return self._shared(node, _POOL_FUNCTIONS[t])
        if t in _SHAPE_FUNCTIONS:
            return self._shared(node, "shape")
        if t in (F.relu6, F.hardtanh, F.hardtanh_, torch.clamp):
            return self._shared(node, "clamp")
        if t is torch.cat:
            return self._cat(node)
        return self._float_step(node)

    def _cat(self, node: fx.Node) -> None:
        """torch.cat: every input and the output share the first input's observer.

        prepare_fx points the observer node right after each later input at the first
        input's observer instance: that value is then observed by, and quantized with, the
        first input's observer. Ops that had shared the later input's old observer keep it,
        so they requantize (see ``IntegerProgram``); a shared op producing the later input
        requantizes its output likewise.
        """
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, list | tuple) or isinstance(dim, fx.Node) or self.default_act is None:
            return self._float_step(node)
        refs = [self.quantized(r, self.default_act) for r in self.ref(list(tensors))]
        first = self.obs_of[refs[0].name]
        for r in refs[1:]:
            own = self.obs_of[r.name]
            if own == first:
                continue
            for i, step in enumerate(self.steps):  # the producer and any dequantize of its value
                if step.name == r.name or (step.kind == "dequantize" and step.args[0].name == r.name):
                    self.steps[i] = replace(step, obs=first)
            self.obs_of[r.name] = first
        self.emit(Step(node.name, "cat", op=node.op, target=node.target, args=(refs, dim), obs=first), "q")

    def _on_call_method(self, node: fx.Node) -> None:
        if node.target in ("relu", "relu_"):
            return self._shared(node, "relu")
        if node.target in _SHAPE_METHODS:
            return self._shared(node, "shape")
        if node.target == "clamp":
            return self._shared(node, "clamp")
        return self._float_step(node)

    def _add(self, node: fx.Node) -> None:
        if self.default_act is None:
            return self._float_step(node)
        a, b = (self.quantized(r, self.default_act) for r in self.ref(node.args))
        relu = self._fuse_relu(node, (F.relu, torch.relu))
        self.emit(Step(node.name, "add", op=node.op, target=node.target, args=(a, b),
                       obs=self.new_obs(node.name, self.default_act), relu=relu), "q")

    def _shared(self, node: fx.Node, kind: str) -> None:
        """An op whose output shares its input's observer (and so its qparams)."""
        args = self.ref(node.args)
        if (not args or not isinstance(args[0], Ref) or self.state[args[0].name] not in ("q", "f")
                or self.default_act is None):
            return self._float_step(node)
        x = self.quantized(args[0], self.default_act)
        self.emit(Step(node.name, kind, op=node.op, target=node.target, args=(x, *args[1:]),
                       kwargs=self.ref(node.kwargs), obs=self.obs_of[x.name],
                       clamp=_clamp_bounds(node, self.modules) if kind == "clamp" else None), "q")



def plan(gm: fx.GraphModule, recipe: Recipe | None = None) -> Graph:
    """The program for a traced, BN-folded GraphModule (see the module doc).

    Args:
        gm: the folded GraphModule.
        recipe: which layers are int8 under which scheme; None: every layer int8 under
            one scheme (the structure every uniform scheme shares).

    Raises:
        UnsupportedGraph: an op qcal's engine does not mirror bit for bit (named).
    """
    return _Planner(gm, recipe if recipe is not None else Recipe(SCHEMES["per_tensor_affine"])).plan()
