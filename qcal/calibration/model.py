"""QuantizedModel: a calibrated model that runs in integers, with its traces and tables.

Built by ``qcal.calibrate``. In graph mode the whole forward is the integer program of
``qcal.graph.program`` (the same program as torch's ``convert_fx`` output); in module-swap mode
each Conv2d/Linear runs int8 between a quantize of its input and a dequantize of its
output, the rest of the model in fp32 (``qcal.graph.modules``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from qcal.batching import call_model
from qcal.graph.ir import Graph
from qcal.graph.layouts import torch_layouts
from qcal.graph.modules import SwappedModel
from qcal.graph.program import IntegerProgram, run_float
from qcal.int8 import requant_multipliers
from qcal.int8.backends.ort_fp32 import ort_fp32_notes
from qcal.int8.layer_ops import make_kernel
from qcal.qparams import dequantize
from qcal.schemes import Scheme, check_backends

__all__ = ["ActivationInfo", "LayerTrace", "QuantLayer", "QuantizedModel"]


@dataclass(frozen=True, eq=False)
class QuantLayer:
    """One int8 conv/linear: quantized (folded) weights, float bias, and its qparams."""

    name: str
    kind: str  # "conv" | "linear"
    weight_q: torch.Tensor  # int8 (O, I/groups, kh, kw) or (O, I)
    weight_scale: torch.Tensor  # float32 (O,) or (1,)
    weight_zero_point: torch.Tensor  # int64, like weight_scale
    weight_qscheme: str
    weight_min: torch.Tensor  # float32 per output channel: the observed weight range
    weight_max: torch.Tensor
    bias: torch.Tensor | None  # float32 (O,)
    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int
    relu: bool = False
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1


@dataclass(frozen=True, eq=False)
class ActivationInfo:
    """One observed activation: its qparams, observed range, display histogram, clip range."""

    label: str
    scale: float
    zero_point: int
    min: float
    max: float
    edges: torch.Tensor  # float64 (K+1,)
    counts: torch.Tensor  # float64 (K,)
    clip_min: float
    clip_max: float
    observer: str = ""  # the range estimator that chose the qparams


@dataclass(frozen=True, eq=False)
class LayerTrace:
    """What one layer computed on one batch, in integers and in fp32.

    ``acc`` is the int32 accumulator ``sum_k (a_k - za)(w_jk - zw_j)`` (None for ops without
    weights); ``fp32`` is what the float model computes at the same point for the same input.
    """

    name: str
    kind: str
    input_q: torch.Tensor
    input_scale: float
    input_zero_point: int
    weight_q: torch.Tensor | None
    weight_scale: torch.Tensor | None
    weight_zero_point: torch.Tensor | None
    acc: torch.Tensor | None
    output_q: torch.Tensor
    output_scale: float
    output_zero_point: int
    fp32: torch.Tensor
    saturated_pairs: int = 0

    @property
    def dequantized(self) -> torch.Tensor:
        """The int8 output in real units: ``(q - zp) * scale``."""
        return dequantize(self.output_q, self.output_scale, self.output_zero_point)


def _as_list(t: torch.Tensor) -> list:
    return t.reshape(-1).tolist()


class QuantizedModel:
    """A calibrated model under one scheme and one backend flavour (see the module doc).

    Attributes:
        scheme, backend, mode ("graph" | "modules"), fallback_reason (why "auto" fell back
        to module swap, else None), float_model (the eval copy used as fp32 reference),
        reproduce_torch_bugs (True: match torch's converted model even where torch's
        wrapper code is wrong; see ``notes``).
    """

    def __init__(self, *, float_model: nn.Module, scheme: Scheme, backend: str, mode: str,
                 fallback_reason: str | None, graph: Graph | None, layers: dict[str, QuantLayer],
                 activations: list[ActivationInfo], reproduce_torch_bugs: bool = True,
                 recipe: Any = None) -> None:
        self.float_model = float_model
        self.scheme = scheme
        self.backend = backend
        self.mode = mode
        self.fallback_reason = fallback_reason
        self.graph = graph
        self.quant_layers = layers
        self.activations = activations
        self.reproduce_torch_bugs = reproduce_torch_bugs
        self.recipe = recipe  # the qcal.Recipe when calibrated with one (scheme then carries its name)
        self._saturated: dict[str, int] = {}
        self._runtime: Any = None

    # -- execution ---------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_runtime"] = None  # prepacked kernels are rebuilt on first use
        return state

    def _kernels(self) -> dict[str, Any]:
        return {name: make_kernel(layer, self.backend) for name, layer in self.quant_layers.items()}

    def runtime(self) -> Any:
        """The prepacked executor (built once per QuantizedModel)."""
        if self._runtime is None:
            if self.mode == "graph":
                assert self.graph is not None
                act = [(a.scale, a.zero_point) for a in self.activations]
                self._runtime = IntegerProgram(self.graph, act, self.scheme.activation.dtype,
                                               _LazyKernels(self.quant_layers, self.backend),
                                               self.backend, self.reproduce_torch_bugs)
            else:
                self._runtime = SwappedModel(self.float_model, self.quant_layers, self._kernels(),
                                             self.scheme.activation.dtype)
        return self._runtime

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The fp32 (dequantized) output of the integer pipeline for one batch.

        Call it like the float model (``qm(x)``, ``qm(x, attention_mask=m)``) or with one batch
        in any calibration form (a Tensor, a tuple of positional args, a dict of kwargs).
        """
        inputs = self._batch(args, kwargs)
        return _fits(lambda: self.runtime().run(inputs), inputs)

    def _batch(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One batch from call arguments: a lone argument as is, else bound to forward's names."""
        if len(args) == 1 and not kwargs:
            return args[0]
        try:
            bound = inspect.signature(self.float_model.forward).bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"arguments do not fit the model's forward: {err}") from err
        return dict(bound.arguments)

    @torch.no_grad()
    def trace(self, inputs: Any) -> dict[str, LayerTrace]:
        """Per conv/linear layer (and quantized add): int8 input, int32 accumulator, int8
        output and the fp32 model's value at the same point, for one batch."""
        results: dict[str, Any] = {}
        _fits(lambda: self.runtime().run(inputs, results), inputs)
        traces = self._traces_graph(inputs, results) if self.mode == "graph" else self._traces_modules(inputs, results)
        self._saturated = {name: t.saturated_pairs for name, t in traces.items()}
        return traces

    def _traces_graph(self, inputs: Any, results: dict[str, Any]) -> dict[str, LayerTrace]:
        graph, values = self.graph, results["__values__"]
        fp32: dict[str, torch.Tensor] = {}
        run_float(graph, inputs, record=fp32)
        obs_of = {s.name: s.obs for s in graph.steps if s.obs is not None and s.kind != "dequantize"}
        traces: dict[str, LayerTrace] = {}
        for step in graph.steps:
            if step.kind in ("conv", "linear"):
                layer, res = self.quant_layers[step.target], results[step.name]
                traces[step.target] = LayerTrace(
                    step.target, step.kind, values[step.args[0].name], layer.input_scale, layer.input_zero_point,
                    layer.weight_q, layer.weight_scale, layer.weight_zero_point, res.acc, res.out,
                    layer.output_scale, layer.output_zero_point, fp32[step.name], int(res.saturated_pairs))
            elif step.kind == "add":
                a = self.activations[obs_of[step.args[0].name]]
                out = self.activations[step.obs]
                traces[step.name] = LayerTrace(
                    step.name, "add", values[step.args[0].name], a.scale, a.zero_point, None, None, None, None,
                    values[step.name], out.scale, out.zero_point, fp32[step.name])
        return traces

    def _traces_modules(self, inputs: Any, results: dict[str, Any]) -> dict[str, LayerTrace]:
        fp32: dict[str, torch.Tensor] = {}
        modules = dict(self.float_model.named_modules())
        hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: fp32.__setitem__(name, o))
                 for name in self.quant_layers]
        try:
            call_model(self.float_model, inputs)
        finally:
            for h in hooks:
                h.remove()
        traces = {}
        for name, (x_q, res) in results.items():
            layer = self.quant_layers[name]
            traces[name] = LayerTrace(
                name, layer.kind, x_q, layer.input_scale, layer.input_zero_point, layer.weight_q,
                layer.weight_scale, layer.weight_zero_point, res.acc, res.out, layer.output_scale,
                layer.output_zero_point, fp32[name].reshape(res.out.shape), int(res.saturated_pairs))
        return traces

    def with_backend(self, backend: str, *, reproduce_torch_bugs: bool | None = None) -> QuantizedModel:
        """The same qparams and int8 weights on another engine flavour.

        ``reproduce_torch_bugs=False`` gives the arithmetic the backend intends where torch's
        converted model departs from it (see ``notes``); None keeps this model's setting.
        """

        check_backends([backend])
        keep = self.reproduce_torch_bugs if reproduce_torch_bugs is None else reproduce_torch_bugs
        return QuantizedModel(float_model=self.float_model, scheme=self.scheme, backend=backend, mode=self.mode,
                              fallback_reason=self.fallback_reason, graph=self.graph,
                              layers=self.quant_layers, activations=self.activations, reproduce_torch_bugs=keep,
                              recipe=self.recipe)

    @property
    def notes(self) -> list[str]:
        """Plain-language caveats about this model's integer pipeline (empty when none)."""
        out = []
        if self.fallback_reason:
            out.append(f"module-swap mode: {self.fallback_reason}")
        if self.mode == "graph" and self.backend == "qnnpack":
            hit = sorted(torch_layouts(self.graph, "qnnpack")[1])
            if hit:
                what = "reproduced, as torch's converted model computes it" if self.reproduce_torch_bugs else \
                    "not reproduced (reproduce_torch_bugs=False): outputs follow the intended clamp"
                out.append(f"torch's qnnpack ReLU6/Hardtanh/clamp writes channels-last inputs back in the "
                           f"wrong order (torch 2.13 qnnpack_clamp); affects {', '.join(hit)}; {what}")
        if self.backend == "ort" and self.mode == "graph":
            out += ort_fp32_notes(self.graph)
        return out + self._cpu_notes()

    @property
    def instruction_set(self) -> str | None:
        """The x86 instruction set whose FBGEMM kernels this model emulates (fbgemm/x86), else None.

        ``qcal.int8.assumed_cpu()``: ``QCAL_CPU`` if set, else this machine's (avx2 off Linux x86).
        """
        from qcal.int8.cpu.isa import assumed_cpu

        return assumed_cpu().isa if self.backend in ("fbgemm", "x86") else None

    def _cpu_notes(self) -> list[str]:
        from qcal.int8.backends.onednn import x86_uses_onednn
        from qcal.int8.cpu.isa import assumed_cpu

        if self.backend not in ("fbgemm", "x86"):
            return []
        cpu, out = assumed_cpu(), []
        if cpu.source == "default":
            out.append(f"FBGEMM emulated for an {cpu.isa} CPU: this is not a Linux x86 machine "
                       "(set QCAL_CPU to emulate another)")
        onednn = [n for n, ly in self.quant_layers.items()
                  if self.backend == "x86" and ly.kind == "conv" and x86_uses_onednn(ly.weight_zero_point, ly.groups, cpu)]
        if onednn:
            out.append(f"x86 on {cpu.isa}: {len(onednn)} convolutions run oneDNN's requantization (zero point "
                       "before rounding); its AVX512-VNNI kernels were not run against torch by qcal's tests")
        return out

    # -- tables ------------------------------------------------------------------------------
    def layers(self) -> pd.DataFrame:
        """One row per int8 conv/linear layer: qparams and the backend's requant multipliers."""
        rows = []
        for name, layer in self.quant_layers.items():
            w_scale = layer.weight_scale if layer.weight_scale.numel() > 1 else float(layer.weight_scale)
            rq = requant_multipliers(layer.input_scale, w_scale, layer.output_scale, layer.bias, backend=self.backend)
            rows.append({
                "name": name, "kind": layer.kind, "input_scale": layer.input_scale,
                "input_zero_point": layer.input_zero_point, "weight_qscheme": layer.weight_qscheme,
                "weight_scale": _as_list(layer.weight_scale), "weight_zero_point": _as_list(layer.weight_zero_point),
                "output_scale": layer.output_scale, "output_zero_point": layer.output_zero_point,
                "requant_scale": _as_list(rq.multiplier), "saturated_pairs": int(self._saturated.get(name, 0)),
            })
        return pd.DataFrame(rows, columns=["name", "kind", "input_scale", "input_zero_point", "weight_qscheme",
                                           "weight_scale", "weight_zero_point", "output_scale",
                                           "output_zero_point", "requant_scale", "saturated_pairs"])

    def scales(self) -> pd.DataFrame:
        """Scale, zero point and observed range: per channel for weights, per observed
        activation tensor."""
        frames = []
        for name, layer in self.quant_layers.items():
            n = layer.weight_min.numel()
            scale = layer.weight_scale.expand(n) if layer.weight_scale.numel() == 1 else layer.weight_scale
            zp = layer.weight_zero_point.expand(n) if layer.weight_zero_point.numel() == 1 else layer.weight_zero_point
            frames.append(pd.DataFrame({
                "layer": name, "tensor": "weight", "channel": range(n), "scale": scale.double().numpy(),
                "zero_point": zp.numpy(), "min": layer.weight_min.double().numpy(),
                "max": layer.weight_max.double().numpy()}))
        frames.append(pd.DataFrame([
            {"layer": a.label, "tensor": "activation", "channel": 0, "scale": a.scale, "zero_point": a.zero_point,
             "min": a.min, "max": a.max} for a in self.activations]))
        out = pd.concat(frames, ignore_index=True)
        return out.astype({"channel": "int64", "zero_point": "int64"})

    def histograms(self) -> pd.DataFrame:
        """The display histogram of each observed activation, with the scheme's clip range."""
        frames = [pd.DataFrame({
            "layer": a.label, "observer": a.observer or self.scheme.activation.observer, "bin_left": a.edges[:-1].numpy(),
            "bin_right": a.edges[1:].numpy(), "count": a.counts.numpy(), "clip_min": a.clip_min,
            "clip_max": a.clip_max}) for a in self.activations]
        cols = ["layer", "observer", "bin_left", "bin_right", "count", "clip_min", "clip_max"]
        return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)

    @property
    def int8_bytes(self) -> int:
        """Bytes of the int8 weights, 32-bit biases and the qparams (4-byte scale + 4-byte
        zero point per channel and per activation)."""
        total = 8 * len(self.activations)
        for layer in self.quant_layers.values():
            total += layer.weight_q.numel() + 8 * layer.weight_scale.numel() + 8
            if layer.bias is not None:
                total += 4 * layer.bias.numel()
        return total

    def __repr__(self) -> str:
        return (f"QuantizedModel(scheme={self.scheme.name!r}, backend={self.backend!r}, mode={self.mode!r}, "
                f"layers={len(self.quant_layers)})")


class _LazyKernels(dict):
    """Each layer's prepacked kernel, packed on its first call: a program a sweep runs from
    stored values (``qcal.graph.memo``) never packs the layers it does not reach."""

    def __init__(self, layers: dict[str, QuantLayer], backend: str) -> None:
        super().__init__()
        self._layers, self._backend = layers, backend

    def __missing__(self, name: str) -> Any:
        kernel = self[name] = make_kernel(self._layers[name], self._backend)
        return kernel


def _fits(run: Any, inputs: Any) -> Any:
    """Run, turning shape errors into a ValueError that names the input shape."""
    try:
        return run()
    except RuntimeError as err:
        raise ValueError(f"input of shape {describe_shape(inputs)} does not fit the model: {err}") from err


def describe_shape(inputs: Any) -> str:
    """The shape(s) of a batch, for error messages."""
    if isinstance(inputs, torch.Tensor):
        return str(tuple(inputs.shape))
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k}: {describe_shape(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, tuple | list):
        return "(" + ", ".join(describe_shape(v) for v in inputs) + ")"
    return type(inputs).__name__
