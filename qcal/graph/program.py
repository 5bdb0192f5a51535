"""Running a planned graph (``qcal.graph.ir``) in fp32 or in integers.

``run_float`` executes the folded fp32 graph, calling ``tap(obs, value)`` wherever torch's
prepared model would call an observer (calibration), and optionally recording each value
(the fp32 reference of a trace). ``IntegerProgram`` executes the same steps on integer
tensors with the qcal engine: quantize at the inputs, conv/linear/add through
``qcal.int8``, pools and clamps on the codes, dequantize where an fp32 op or the output
needs it — the same program as torch's ``convert_fx`` output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from qcal.graph import capture
from qcal.graph.ir import NO_DEFAULT, Graph, Ref, Step
from qcal.graph.layouts import torch_layouts, torch_memory_format
from qcal.int8.backends.ort import ort_clip
from qcal.int8.backends.ort_fp32 import ort_float_layer, ort_fp32_kernels
from qcal.int8.backends.ort_s8 import ort_s8_float_add, ort_s8_program
from qcal.int8.layer_ops import (
    adaptive_avg_pool2d,
    add,
    avg_pool2d,
    clamp_codes,
    max_pool2d,
    quantize_codes,
    quantize_value,
)
from qcal.qparams import dequantize

__all__ = ["IntegerProgram", "bind_inputs", "pool_params", "release_plan", "run_float"]

Tap = Callable[[int, torch.Tensor], None]


def bind_inputs(graph: Graph, inputs: Any) -> dict[str, Any]:
    """Placeholder values for a batch: a Tensor, a tuple of positional args or a dict of kwargs."""
    holders = graph.inputs
    if isinstance(inputs, dict):
        args, kwargs = (), dict(inputs)
    elif isinstance(inputs, tuple | list):
        args, kwargs = tuple(inputs), {}
    else:
        args, kwargs = (inputs,), {}
    if len(args) > len(holders):
        raise ValueError(f"the model takes {len(holders)} inputs, got {len(args)}")
    env: dict[str, Any] = {}
    for i, (name, arg, default) in enumerate(holders):
        if i < len(args):
            env[name] = args[i]
        elif arg in kwargs:
            env[name] = kwargs.pop(arg)
        elif not (isinstance(default, str) and default == NO_DEFAULT):  # the default value fx recorded
            env[name] = default
        else:
            raise ValueError(f"missing model input {arg!r}")
    if kwargs:
        raise ValueError(f"unknown model inputs {sorted(kwargs)}; the model takes {[h[1] for h in holders]}")
    return env


def _load(a: Any, env: dict[str, Any]) -> Any:
    return fx.node.map_aggregate(a, lambda x: env[x.name] if isinstance(x, Ref) else x)


def _call(step: Step, graph: Graph, args: tuple, kwargs: dict) -> Any:
    """Run a step's original fx op on concrete values (fp32 path, shape and info ops)."""
    if step.op == "call_module":
        return graph.module.get_submodule(step.target)(*args, **kwargs)
    if step.op == "call_function":
        return step.target(*args, **kwargs)
    if step.op == "call_method":
        return getattr(args[0], step.target)(*args[1:], **kwargs)
    if step.op == "get_attr":
        obj: Any = graph.module
        for part in step.target.split("."):
            obj = getattr(obj, part)
        return obj
    raise AssertionError(f"no fx op for step {step.name} ({step.op})")


def _in_place(step: Step, graph: Graph) -> bool:
    """An fp32 module that writes its input (``nn.ReLU(inplace=True)``...)."""
    return step.op == "call_module" and bool(getattr(graph.module.get_submodule(step.target), "inplace", False))


def release_plan(graph: Graph) -> list[tuple[str, ...]]:
    """For each step, the values no later step reads: dropped right away, as torch's
    generated forward does (``x = None``), so big activations do not pile up."""
    cached = graph.__dict__.get("_release")
    if cached is None:
        last: dict[str, int] = {}
        for i, step in enumerate(graph.steps):
            for name in step.refs:
                last[name] = i
        cached = [[] for _ in graph.steps]
        for name, i in last.items():
            cached[i].append(name)
        cached = [tuple(names) for names in cached]
        graph.__dict__["_release"] = cached
    return cached


@torch.no_grad()
def run_float(graph: Graph, inputs: Any, tap: Tap | None = None,
              record: dict[str, torch.Tensor] | None = None,
              on_value: Callable[[str, Any], None] | None = None) -> Any:
    """The folded fp32 model on one batch, observed where torch's prepared model observes.

    Args:
        graph: the planned graph.
        inputs: a Tensor, tuple of positional args or dict of kwargs.
        tap: ``tap(obs, value)`` at every observation (input observers, op outputs, and the
            shared observers' extra looks), in graph order.
        record: filled with each step's fp32 value when given.
        on_value: ``on_value(name, value)`` for each value the float model computes, as it
            is computed (the order torch's observers, placed right after each value, see).
    """
    env = bind_inputs(graph, inputs)
    release = release_plan(graph)
    for i, step in enumerate(graph.steps):
        if step.kind == "input":
            value = env[step.name]
        elif step.kind in ("quantize", "dequantize"):
            value = env[step.args[0].name]
        elif step.kind == "output":
            return _load(step.args, env)[0]
        else:
            args = _load(step.args, env)
            if record is not None and _in_place(step, graph):  # keep the recorded values as they were
                args = fx.node.map_aggregate(args, lambda a: a.clone() if isinstance(a, torch.Tensor) else a)
            value = _call(step, graph, args, _load(step.kwargs, env))
            if step.relu:
                # a conv/linear module's output is fresh: ReLU in place saves a pass
                value = value.relu_() if step.kind in ("conv", "linear") and step.op == "call_module" else F.relu(value)
        env[step.name] = value
        if on_value is not None and step.kind not in ("quantize", "dequantize"):
            on_value(step.name, value)
        if tap is not None and step.obs is not None and step.kind not in ("dequantize", "identity"):
            tap(step.obs, value)
        if record is not None:
            record[step.name] = value
        for name in release[i]:
            del env[name]
    raise AssertionError("the graph has no output step")


class IntegerProgram:
    """The planned graph on integer tensors, for one set of qparams and one backend flavour.

    Args:
        graph: the planned graph.
        act_qparams: (scale, zero_point) per observation point.
        backend: the engine flavour of the pools and adds.
        reproduce_torch_bugs: apply torch's qnnpack clamp scramble (see ``torch_layouts``).
        act_dtype: "quint8" or "qint8" activations.
        layers: layer name -> a callable ``(x_q, trace: bool) -> out_q or KernelResult`` that
            runs the prepacked int8 conv/linear with its output qparams bound.
    """

    def __init__(self, graph: Graph, act_qparams: list[tuple[float, int]], act_dtype: str,
                 layers: dict[str, Callable[..., Any]], backend: str = "fbgemm",
                 reproduce_torch_bugs: bool = True) -> None:
        self.graph = graph
        self.act = act_qparams
        self.act_dtype = act_dtype
        self.layers = layers
        self.backend = backend
        self.nhwc, scrambled = torch_layouts(graph, backend)
        self.scrambled = scrambled if reproduce_torch_bugs else frozenset()
        self.fused_clamps = _fusable_clamps(graph, act_qparams, act_dtype, backend, self.scrambled)
        # onnxruntime quantizes a recipe's fp32 layers that sit between a DQ and a Q (ort_fp32)
        self.ort_layers = ort_fp32_kernels(graph, act_qparams, act_dtype) if backend == "ort" else {}
        self.layers, self.ort_float_adds = ort_s8_program(graph, layers, backend, act_dtype)  # qint8 on ort: ort_s8
        self._captures: dict[tuple, capture.CapturedRun] = {}

    def qparams_of(self, step: Step) -> tuple[float, int]:
        """(scale, zero_point) of a quantized step's output."""
        assert step.obs is not None
        return self.act[step.obs]

    @torch.no_grad()
    def run(self, inputs: Any, results: dict[str, Any] | None = None) -> Any:
        """The integer pipeline on one batch; ``results`` (if given) receives each layer's
        kernel result and each value, for traces."""
        graph = self.graph
        env = bind_inputs(graph, inputs)
        key = capture.signature(env) if results is None and capture.enabled() and not self.ort_float_adds else None
        if key is not None:  # the steps prepared once per input signature (capture.py)
            return capture.run(self, key, env, release_plan(graph), self._own, _load)
        release = release_plan(graph) if results is None else None
        for i, step in enumerate(graph.steps):
            if step.kind == "input":
                continue
            if step.kind == "output":
                return _load(step.args, env)[0]
            value = _INTEGER_STEPS.get(step.kind, IntegerProgram._shared)(self, step, env, results)
            env[step.name] = value
            if results is not None:
                results.setdefault("__values__", {})[step.name] = value
            else:
                for name in release[i]:
                    del env[name]
        raise AssertionError("the graph has no output step")

    def _own(self, step: Step) -> Callable[[dict[str, Any]], Any]:
        """The step as this program runs it, as a call of the values (capture.py)."""
        run = _INTEGER_STEPS.get(step.kind, IntegerProgram._shared)
        return lambda env: run(self, step, env, None)

    def _layer(self, step: Step, env: dict[str, Any], results: dict[str, Any] | None) -> torch.Tensor:
        x = env[step.args[0].name]
        codes = self.fused_clamps.get(step.name)  # the clamp step passes these codes on as they are
        if results is None:
            out = self.layers[step.target](x, False)
            return out if codes is None else out.clamp_(*codes)  # the clamp that alone reads it, in place
        res = self.layers[step.target](x, True)
        results[step.name] = res
        return res.out if codes is None else res.out.clamp(*codes)  # a copy: the trace keeps the layer's own

    def _quantize(self, step: Step, env: dict[str, Any], results: Any = None) -> torch.Tensor:
        scale, zp = self.act[step.obs]
        return quantize_codes(env[step.args[0].name], scale, zp, self.act_dtype, backend=self.backend)

    def _dequantize(self, step: Step, env: dict[str, Any], results: Any = None) -> torch.Tensor:
        scale, zp = self.act[step.obs]
        return torch_memory_format(dequantize(env[step.args[0].name], scale, zp),
                                   self.nhwc.get(step.args[0].name, False))

    def _add(self, step: Step, env: dict[str, Any], results: Any = None) -> torch.Tensor:
        a, b = step.args
        if step.name in self.ort_float_adds:
            return ort_s8_float_add(env[a.name], self.act[self.obs_of(a)], env[b.name], self.act[self.obs_of(b)],
                                    self.act[step.obs], step.relu)
        return add(env[a.name], *self.act[self.obs_of(a)], env[b.name], *self.act[self.obs_of(b)],
                   *self.act[step.obs], relu=step.relu, backend=self.backend)

    def _fp32(self, step: Step, env: dict[str, Any], results: Any = None) -> Any:
        if step.name in self.ort_layers:
            return self.ort_layers[step.name](env[step.args[0].name])
        args = _load(step.args, env)
        value = None
        if self.backend == "ort" and step.op == "call_module" and args:  # onnxruntime's own float kernels
            value = ort_float_layer(self.graph.module.get_submodule(step.target), args[0])
        if value is None:
            value = _call(step, self.graph, args, _load(step.kwargs, env))
        return F.relu(value) if step.relu else value  # an fp32 layer of a recipe, with its fused ReLU

    def obs_of(self, ref: Ref) -> int:
        """The observation point whose qparams the value ``ref`` names carries."""
        return self._obs_by_name[ref.name]

    @property
    def _obs_by_name(self) -> dict[str, int]:
        cache = self.__dict__.get("_obs_cache")
        if cache is None:
            cache = {s.name: s.obs for s in self.graph.steps if s.obs is not None and s.kind != "dequantize"}
            self.__dict__["_obs_cache"] = cache
        return cache

    def keeps_qparams(self, step: Step) -> bool:
        """Whether a qparam-keeping step's output has its input's qparams (else ``_shared``
        requantizes: torch.cat re-pointed an observer)."""
        return self.obs_of(self._first(step)) == step.obs

    def input_qparams(self, step: Step) -> tuple[float, int]:
        """A qparam-keeping step's input qparams (a cat's: its first input's)."""
        return self.act[self.obs_of(self._first(step))]

    @staticmethod
    def _first(step: Step) -> Ref:
        return step.args[0][0] if step.kind == "cat" else step.args[0]

    def pool_kwargs(self, step: Step, env: dict[str, Any]) -> dict[str, Any]:
        """A pool step's parameters (``pool_params``) from the values it reads."""
        return pool_params(step, self.graph, _load(step.args, env), _load(step.kwargs, env))

    def _shared(self, step: Step, env: dict[str, Any], results: Any = None) -> torch.Tensor:
        """Ops that keep their input's qparams; requantized when torch.cat re-pointed the
        observer on either side (dequantize, then quantize with the output's qparams)."""
        out = self._shared_codes(step, env)
        if self.keeps_qparams(step):
            return out
        xs, xz = self.input_qparams(step)
        ys, yz = self.act[step.obs]
        ort = "ort" if self.backend == "ort" else "fbgemm"  # onnxruntime's Q divides; torch's engines multiply
        return quantize_codes(dequantize(out, xs, xz), ys, yz, self.act_dtype, backend=ort)

    def _shared_codes(self, step: Step, env: dict[str, Any]) -> torch.Tensor:
        args, kwargs = _load(step.args, env), _load(step.kwargs, env)
        scale, zp = self.input_qparams(step)
        return _SHARED_CODES[step.kind](self, step, _Codes(args[0], scale, zp, args, kwargs))

    def _clamp(self, step: Step, c: _Codes) -> torch.Tensor:
        if step.args[0].name in self.fused_clamps:  # applied to the layer's fresh output already
            return c.q
        if self.backend == "ort":
            # onnxruntime keeps DQ -> Clip -> Q in float when Q's range does not make the Clip redundant
            return ort_clip(c.q, c.scale, c.zp, *step.clamp)
        out = clamp_codes(c.q, c.scale, c.zp, *step.clamp)
        if step.name in self.scrambled and out.dim() == 4:
            n, ch, h, w = out.shape  # torch's bug: NHWC data read back as NCHW
            out = out.permute(0, 2, 3, 1).reshape(n, ch, h, w)
        return out

    def _average(self, step: Step, c: _Codes) -> torch.Tensor:
        # torch's average pools round differently on channels-last input: match its layout
        layout = torch.channels_last if self.nhwc.get(step.args[0].name) else torch.contiguous_format
        q = c.q.contiguous(memory_format=layout) if c.q.dim() == 4 else c.q
        pool = avg_pool2d if step.kind == "avg_pool2d" else adaptive_avg_pool2d
        return pool(q, c.scale, c.zp, **pool_params(step, self.graph, c.args, c.kwargs), backend=self.backend)


@dataclass(frozen=True)
class _Codes:
    """A qparam-keeping op's input codes, their qparams and the op's loaded arguments."""

    q: Any
    scale: float
    zp: int
    args: tuple
    kwargs: dict


def _fusable_clamps(graph: Graph, act: list[tuple[float, int]], act_dtype: str, backend: str,
                    scrambled: frozenset[str]) -> dict[str, tuple[int, int]]:
    """{conv/linear step: the codes of the clamp (ReLU6, hardtanh) that is its only reader}:
    clamping the layer's fresh output in place is the clamp step's own result (same qparams,
    same bounds), without a second tensor. Not for onnxruntime (its Clip runs in float) or a
    clamp torch scrambles."""
    if backend == "ort":
        return {}
    readers: dict[str, list[Step]] = {}
    for step in graph.steps:
        for name in step.refs:
            readers.setdefault(name, []).append(step)
    by_name = {s.name: s for s in graph.steps}
    out: dict[str, tuple[int, int]] = {}
    for name, users in readers.items():
        layer, clamp = by_name[name], users[0]
        if (len(users) != 1 or clamp.kind != "clamp" or layer.kind not in ("conv", "linear")
                or clamp.name in scrambled or clamp.obs != layer.obs or layer.obs is None):
            continue
        scale, zp = act[layer.obs]
        dtype = torch.uint8 if act_dtype == "quint8" else torch.int8
        out[name] = (quantize_value(clamp.clamp[0], scale, zp, dtype), quantize_value(clamp.clamp[1], scale, zp, dtype))
    return out


IntegerStep = Callable[[IntegerProgram, Step, dict[str, Any], Any], Any]
# how each step kind runs on integers; the kinds not listed keep their input's qparams (_shared)
_INTEGER_STEPS: dict[str, IntegerStep] = {
    "conv": IntegerProgram._layer,
    "linear": IntegerProgram._layer,
    "quantize": IntegerProgram._quantize,
    "dequantize": IntegerProgram._dequantize,
    "add": IntegerProgram._add,
    "float": IntegerProgram._fp32,
    "info": IntegerProgram._fp32,
}
# the qparam-keeping kinds, on codes
_SHARED_CODES: dict[str, Callable[[IntegerProgram, Step, _Codes], torch.Tensor]] = {
    "relu": lambda p, step, c: torch.clamp_min(c.q, c.zp),  # torch's quantized relu: max(q, zero_point)
    "clamp": IntegerProgram._clamp,
    "shape": lambda p, step, c: _call(step, p.graph, c.args, c.kwargs),
    "identity": lambda p, step, c: c.q,
    # every input already carries the shared qparams: a plain concatenation
    "cat": lambda p, step, c: torch.cat(c.q, c.args[1]),
    "max_pool2d": lambda p, step, c: max_pool2d(c.q, **pool_params(step, p.graph, c.args, c.kwargs)),
    "avg_pool2d": IntegerProgram._average,
    "adaptive_avg_pool2d": IntegerProgram._average,
}


_POOL_ARGS = {
    "max_pool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "avg_pool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "adaptive_avg_pool2d": ("output_size",),
}


def pool_params(step: Step, graph: Graph, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A pool's parameters, from its module or from the functional call's arguments."""
    names = _POOL_ARGS[step.kind]
    if step.op == "call_module":
        mod = graph.module.get_submodule(step.target)
        return {n: getattr(mod, n) for n in names if hasattr(mod, n)}
    params = dict(zip(names, args[1:], strict=False))
    params.update({k: v for k, v in kwargs.items() if k in names})
    if kwargs.get("return_indices"):
        raise ValueError("max_pool2d with return_indices is not supported")
    return params

