"""Calibration: observers over data -> QuantizedModel, for many schemes in one pass.

``calibrate_many`` runs the model over the calibration data once. Every observation point
(each tensor torch's prepared model would observe) holds one observer per distinct
activation QSpec, so the four generic presets, which share one activation spec, share one
observer; weights are observed once per distinct weight QSpec. Then each (scheme, backend)
gets a ``QuantizedModel``: the weights quantized with that scheme's qparams, the
activation qparams read from that scheme's observers.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from qcal.batching import call_model, count_nonfinite
from qcal.calibration.model import ActivationInfo, QuantizedModel, QuantLayer, describe_shape
from qcal.calibration.observation import ObservationPoint
from qcal.graph.ir import UnsupportedGraph
from qcal.graph.modules import observe_layers, swappable_layers
from qcal.graph.program import run_float
from qcal.graph.trace import build_graph
from qcal.int8.layer_ops import quantize_codes
from qcal.observers.observers import make_observer
from qcal.schemes import BACKENDS, MODES, QSpec, Scheme, check_backends, check_mode, resolve_scheme

__all__ = ["MODES", "calibrate", "calibrate_many", "check_backends", "default_backends"]

Progress = Callable[[float, str], None]
_OWN_ENGINE = {"fbgemm_default": "fbgemm", "qnnpack_default": "qnnpack"}


def default_backends(scheme: Scheme, backends: Sequence[str] | None) -> list[str]:
    """A *_default preset on its own engine unless backends is given, the rest on each
    requested backend (default ["fbgemm"])."""
    if backends is not None:
        if isinstance(backends, str):
            raise TypeError(f"backends must be a list of names, got the string {backends!r}; use [{backends!r}]")
        if not backends:
            raise ValueError(f"no backend given; pass None (the default rule) or some of: {', '.join(BACKENDS)}")
        return check_backends(backends)
    return [_OWN_ENGINE.get(scheme.name, "fbgemm")]


def _warn(message: str) -> None:
    """Warn at the caller's line: the first frame outside qcal and torch's decorators."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith(_QCAL_DIR)
                                 or frame.f_code.co_filename.endswith("_contextlib.py")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level + 1)


_QCAL_DIR = os.path.dirname(os.path.abspath(__file__))


def _batches(calib_data: Any) -> Iterator[Any]:
    if isinstance(calib_data, torch.Tensor | dict):
        yield calib_data
        return
    yield from calib_data


def _check_batch(batch: Any) -> None:
    bad = count_nonfinite(batch)
    if bad:
        raise ValueError(f"calibration data holds {bad} NaN or Inf values; clean or drop those samples")


class _Observed:
    """The one pass: observation points fed by the float model, batch after batch."""

    def __init__(self, model: nn.Module, mode: str, act_specs: list[QSpec]) -> None:
        self.model, self.mode, self.requested, self.act_specs = model, mode, mode, act_specs
        self.fallback_reason: str | None = None
        self.graph = None
        self.layer_names: list[str] = []
        if mode in ("auto", "graph"):
            try:
                self.graph = build_graph(model)
                self.mode = "graph"
            except UnsupportedGraph as err:
                if mode == "graph":
                    raise ValueError(f"graph mode is not possible for this model: {err}") from err
                self._fall_back(str(err))
        else:
            self._use_modules()

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        _warn(f"qcal: torch.fx graph mode is not possible ({reason}); using module-swap mode: "
              "each Conv2d/Linear runs int8, the rest fp32")
        self.graph = None
        self._use_modules()

    def _use_modules(self) -> None:
        self.mode = "modules"
        self.layer_names = swappable_layers(self.model)
        if not self.layer_names:
            raise ValueError("the model has no nn.Conv2d or nn.Linear layer to quantize")

    def start(self) -> None:
        labels = (self.graph.obs_names if self.graph is not None
                  else [f"{n}{suffix}" for n in self.layer_names for suffix in (".input", "")])
        self.points = [ObservationPoint(label, self.act_specs) for label in labels]

    def _tap(self, obs: int, value: torch.Tensor) -> None:
        self.points[obs].update(value)

    def feed(self, batch: Any, first: bool) -> None:
        if self.graph is not None:
            try:
                run_float(self.graph, batch, self._tap)
                return
            except (RuntimeError, TypeError, ValueError) as err:
                if not first:
                    raise ValueError(f"calibration batch of shape {describe_shape(batch)} does not fit the model: {err}") from err
                self._check_fits(batch)
                if self.requested == "graph":
                    raise ValueError(f"graph mode failed on the calibration data: {err}") from err
                self._fall_back(f"the traced graph failed on the data: {type(err).__name__}: {err}")
                self.start()
        with observe_layers(self.model, self.layer_names, self._tap):
            try:
                call_model(self.model, batch)
            except (RuntimeError, TypeError) as err:
                raise ValueError(f"calibration batch of shape {describe_shape(batch)} does not fit the model: {err}") from err

    def _check_fits(self, batch: Any) -> None:
        try:
            call_model(self.model, batch)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"calibration batch of shape {describe_shape(batch)} does not fit the model: {err}") from err


def _weighted_modules(obs: _Observed) -> dict[str, tuple[nn.Module, bool, tuple[int, int]]]:
    """layer name -> (float module, fused relu, (input obs, output obs))."""
    if obs.graph is not None:
        out = {}
        for step in obs.graph.steps:
            if step.kind in ("conv", "linear"):
                x_obs = next(s.obs for s in obs.graph.steps if s.name == step.args[0].name)
                out[step.target] = (obs.graph.module.get_submodule(step.target), step.relu, (x_obs, step.obs))
        return out
    modules = dict(obs.model.named_modules())
    return {name: (modules[name], False, (2 * i, 2 * i + 1)) for i, name in enumerate(obs.layer_names)}


def _quantized_weight(w: torch.Tensor, spec: QSpec) -> dict[str, Any]:
    o = make_observer(spec)
    o.update(w)
    scale, zp = o.qparams()
    axis = spec.ch_axis if spec.per_channel else None
    q = quantize_codes(w, scale, zp, spec.dtype, axis=axis)
    flat = w.detach().transpose(0, spec.ch_axis).reshape(w.shape[spec.ch_axis], -1)  # (O, ...) -> (O, K)
    lo, hi = torch.aminmax(flat, dim=1)
    return {"weight_q": q, "weight_scale": scale.float(), "weight_zero_point": zp.long(),
            "weight_qscheme": spec.qscheme, "weight_min": lo, "weight_max": hi}


def _activation(point: ObservationPoint, spec: QSpec) -> ActivationInfo:
    o = point.observers[spec]
    scale, zp = o.qparams()
    lo, hi = o.clip_range()
    edges, counts = point.histogram.trimmed(min(point.min, 0.0), max(point.max, 0.0))
    return ActivationInfo(point.label, float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]),
                          point.min, point.max, edges, counts, float(lo.reshape(-1)[0]), float(hi.reshape(-1)[0]))


@torch.no_grad()
def calibrate_many(
    model: nn.Module,
    calib_data: Any,
    schemes: Sequence[str | Scheme],
    backends: Sequence[str] | None = None,
    *,
    mode: str = "auto",
    progress: Progress | None = None,
) -> dict[tuple[str, str], QuantizedModel]:
    """Calibrate many schemes in ONE pass over the data; a QuantizedModel per (scheme, backend).

    Args:
        model: the fp32 model; never modified (qcal works on an eval-mode deep copy and warns
            once if the model was in training mode).
        calib_data: a Tensor (one batch) or an iterable of batches, each a Tensor, a tuple of
            positional args or a dict of keyword args.
        schemes: preset names or Schemes.
        backends: engine flavours for every scheme; None: each *_default preset on its own
            engine, the rest on "fbgemm".
        mode: "auto" (graph, falling back to module swap with one warning saying why),
            "graph" (torch.fx) or "modules" (module swap).
        progress: ``progress(fraction, message)``.

    Returns:
        {(scheme_name, backend): QuantizedModel}.

    Raises:
        ValueError: unknown scheme/backend/mode names, empty data, NaN/Inf values, batches
            whose shape does not fit the model.
    """
    resolved = [resolve_scheme(s) for s in schemes]
    if not resolved:
        raise ValueError("no scheme given; pass preset names or qcal.Scheme objects")
    check_mode(mode)
    plan = {s.name: default_backends(s, backends) for s in resolved}
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        _warn("qcal: the model is in training mode; calibrating an eval-mode copy "
              "(BatchNorm running statistics, dropout off). Your model is unchanged.")
    report = progress or (lambda fraction, message: None)
    float_model = copy.deepcopy(model).eval()
    observed = _Observed(float_model, mode, [s.activation for s in resolved])
    _observe(observed, calib_data, report)
    report(0.9, "quantizing weights")
    modules = _weighted_modules(observed)
    weights = {(name, spec): _quantized_weight(mod.weight, spec)
               for name, (mod, _, _) in modules.items() for spec in dict.fromkeys(s.weight for s in resolved)}
    out: dict[tuple[str, str], QuantizedModel] = {}
    for scheme in resolved:
        acts = [_activation(p, scheme.activation) for p in observed.points]
        layers = {name: _quant_layer(name, mod, relu, points, weights[(name, scheme.weight)], acts)
                  for name, (mod, relu, points) in modules.items()}
        for backend in plan[scheme.name]:
            out[(scheme.name, backend)] = QuantizedModel(
                float_model=float_model, scheme=scheme, backend=backend, mode=observed.mode,
                fallback_reason=observed.fallback_reason, graph=observed.graph, layers=layers,
                activations=acts)
    report(1.0, "calibrated")
    return out


def _observe(observed: _Observed, calib_data: Any, report: Progress) -> None:
    """One pass over the calibration batches through every observer."""
    observed.start()
    total = len(calib_data) if isinstance(calib_data, Sequence) and not isinstance(calib_data, tuple) else None
    seen = 0
    report(0.0, "calibrating")
    for batch in _batches(calib_data):
        _check_batch(batch)
        observed.feed(batch, seen == 0)
        seen += 1
        report(0.9 * seen / total if total else min(0.9, 0.9 * (1 - 0.5 ** (seen / 8))),
               f"observed batch {seen}" + (f"/{total}" if total else ""))
    if seen == 0:
        raise ValueError("calibration data is empty: pass a Tensor or an iterable of at least one batch")


def _quant_layer(name: str, mod: nn.Module, relu: bool, points: tuple[int, int], weight: dict[str, Any],
                 acts: list[ActivationInfo]) -> QuantLayer:
    """One conv/linear's QuantLayer: its quantized weight and the qparams of its input and output."""
    x_obs, y_obs = points
    conv = {"stride": mod.stride, "padding": mod.padding, "dilation": mod.dilation,
            "groups": mod.groups} if isinstance(mod, nn.Conv2d) else {}
    return QuantLayer(
        name=name, kind="conv" if isinstance(mod, nn.Conv2d) else "linear", **weight,
        bias=None if mod.bias is None else mod.bias.detach().float().clone(),
        input_scale=acts[x_obs].scale, input_zero_point=acts[x_obs].zero_point,
        output_scale=acts[y_obs].scale, output_zero_point=acts[y_obs].zero_point, relu=relu, **conv)


@torch.no_grad()
def calibrate(
    model: nn.Module,
    calib_data: Any,
    scheme: str | Scheme,
    backend: str = "fbgemm",
    *,
    mode: str = "auto",
    progress: Progress | None = None,
) -> QuantizedModel:
    """Calibrate ``model`` under one scheme for one backend flavour.

    See ``calibrate_many`` for the arguments and errors. Example::

        qm = qcal.calibrate(model, calib_batches, "fbgemm_default")
        y = qm(x)            # fp32 output of the integer pipeline
        qm.layers()          # per-layer qparams and requant multipliers
    """
    scheme = resolve_scheme(scheme)
    (qm,) = calibrate_many(model, calib_data, [scheme], [backend], mode=mode, progress=progress).values()
    return qm
