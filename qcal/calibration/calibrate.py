"""Calibration: observers over data -> QuantizedModel, for many schemes and recipes in one pass.

``calibrate_many`` runs the model over the calibration data once (``qcal.observed``). Every
observation point (each sequence of tensors torch's prepared model would observe with one
observer) holds one observer per distinct activation QSpec asked of it, so the four generic
presets, which share one activation spec, share one observer, and a recipe shares the
points it has in common with the uniform schemes; weights are observed once per (layer,
weight QSpec). Then each (scheme or recipe, backend) gets a ``QuantizedModel``: the weights
quantized with their layer's scheme, the activation qparams read from its observers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from qcal.batching import count_nonfinite
from qcal.calibration.model import ActivationInfo, QuantizedModel, QuantLayer
from qcal.calibration.observation import ObservationPoint
from qcal.calibration.observed import Observed, as_recipe, warn_at_caller
from qcal.observers.observers import make_observer
from qcal.qparams import quantize
from qcal.recipes import Recipe, resolve_scheme_or_recipe
from qcal.runnable import check_runnable, preset_backends
from qcal.schemes import (
    BACKENDS,
    MODES,
    SCHEMES,
    QSpec,
    Scheme,
    check_backends,
    check_mode,
)

__all__ = ["MODES", "Calibrated", "calibrate", "calibrate_many", "check_backends", "default_backends"]

Progress = Callable[[float, str], None]


def default_backends(scheme: Scheme, backends: Sequence[str] | None) -> list[str]:
    """A *_default (or XNNPACK) preset on its own engine unless backends is given, the rest on
    each requested backend (default ["fbgemm"]); a preset runs on the requested backends it
    can run on, or on its own engine when none can (``qcal.runnable.preset_backends``)."""
    if backends is not None:
        if isinstance(backends, str):
            raise TypeError(f"backends must be a list of names, got the string {backends!r}; use [{backends!r}]")
        if not backends:
            raise ValueError(f"no backend given; pass None (the default rule) or some of: {', '.join(BACKENDS)}")
        return preset_backends(scheme, check_backends(backends))
    return preset_backends(scheme, None)


def _batches(calib_data: Any) -> Iterator[Any]:
    if isinstance(calib_data, torch.Tensor | dict):
        yield calib_data
        return
    yield from calib_data


def _check_batch(batch: Any) -> None:
    bad = count_nonfinite(batch)
    if bad:
        raise ValueError(f"calibration data holds {bad} NaN or Inf values; clean or drop those samples")


def _int8_modules(obs: Observed, recipe: Recipe) -> dict[str, tuple[nn.Module, bool, tuple[int, int]]]:
    """The recipe's int8 layers: name -> (float module, fused relu, (input obs, output obs))."""
    graph = obs.plan_for(recipe)
    if graph is not None:
        out = {}
        for step in graph.steps:
            if step.kind in ("conv", "linear"):
                x_obs = next(s.obs for s in graph.steps if s.name == step.args[0].name)
                out[step.target] = (graph.module.get_submodule(step.target), step.relu, (x_obs, step.obs))
        return out
    modules = dict(obs.model.named_modules())
    return {name: (modules[name], False, (2 * i, 2 * i + 1)) for i, name in enumerate(obs.int8_layers(recipe))}


def _quantized_weight(w: torch.Tensor, spec: QSpec) -> dict[str, Any]:
    o = make_observer(spec)
    o.update(w)
    scale, zp = o.qparams()
    axis = spec.ch_axis if spec.per_channel else None
    qmin, qmax = spec.code_range() if spec.custom_range else (None, None)  # codes within quant_min..quant_max
    q = quantize(w, scale, zp, spec.dtype, axis=axis, quant_min=qmin, quant_max=qmax)
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
                          point.min, point.max, edges, counts, float(lo.reshape(-1)[0]), float(hi.reshape(-1)[0]),
                          spec.observer)


def _representative(recipe: Recipe) -> Scheme:
    """The Scheme a QuantizedModel reports for a recipe: named after it, with the specs of
    its default (or first) scheme; a scheme passed as such is itself."""
    first = (recipe.schemes() or [SCHEMES["per_tensor_affine"]])[0]
    if recipe.layers == () and recipe.default is not None and recipe.name == recipe.default.name:
        return recipe.default
    return Scheme(recipe.name, first.weight, first.activation, f"recipe: {recipe.to_data(named=False)}")


def _refuse_repairs(recipe: Recipe) -> None:
    """Calibration builds no repair: a recipe recording some is refused, not silently unrepaired."""
    if recipe.repairs:
        raise ValueError(f"recipe {recipe.name!r} records repairs ({', '.join(n for n, _ in recipe.repairs)}), "
                         "which calibrate does not apply; build it with qcal.repair.apply_recipe(model, "
                         "calib_data, recipe, backend)")


def _configs(schemes: Sequence[str | Scheme | Recipe], backends: Sequence[str] | None) -> dict[Recipe, list[str]]:
    """Each scheme or recipe as a recipe, with its backends; names must be unique."""
    resolved = [as_recipe(resolve_scheme_or_recipe(s)) for s in schemes]
    for recipe in resolved:
        _refuse_repairs(recipe)
    if not resolved:
        raise ValueError("no scheme given; pass preset names, qcal.Scheme or qcal.Recipe objects")
    names = [r.name for r in resolved]
    clash = sorted({n for n in names if names.count(n) > 1 and len({r for r in resolved if r.name == n}) > 1})
    if clash:
        raise ValueError(f"two different schemes or recipes are named {clash}; give each its own name")
    plan = {r: default_backends(r.default or SCHEMES["per_tensor_affine"], backends) for r in resolved}
    for recipe, names in plan.items():
        for scheme in recipe.schemes():
            for backend in names:
                check_runnable(scheme, backend)  # e.g. a built scheme with qint8 activations on fbgemm
    return plan


def _observe(observed: Observed, calib_data: Any, report: Progress) -> None:
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


def _build(observed: Observed, recipe: Recipe, weights: dict, float_model: nn.Module,
           backends: list[str]) -> dict[tuple[str, str], QuantizedModel]:
    """The recipe's QuantizedModel per backend, from the observed statistics."""
    acts = [_activation(observed.points[key], spec) for key, spec in observed.observers_of(recipe)]
    layers = {}
    for name, (mod, relu, (x_obs, y_obs)) in _int8_modules(observed, recipe).items():
        spec = recipe.scheme_for(name).weight
        if (name, spec) not in weights:
            weights[(name, spec)] = _quantized_weight(mod.weight, spec)
        conv = {"stride": mod.stride, "padding": mod.padding, "dilation": mod.dilation,
                "groups": mod.groups} if isinstance(mod, nn.Conv2d) else {}
        layers[name] = QuantLayer(
            name=name, kind="conv" if isinstance(mod, nn.Conv2d) else "linear", **weights[(name, spec)],
            bias=None if mod.bias is None else mod.bias.detach().float().clone(),
            input_scale=acts[x_obs].scale, input_zero_point=acts[x_obs].zero_point,
            output_scale=acts[y_obs].scale, output_zero_point=acts[y_obs].zero_point, relu=relu, **conv)
    scheme = _representative(recipe)
    return {(recipe.name, backend): QuantizedModel(
        float_model=float_model, scheme=scheme, backend=backend, mode=observed.mode,
        fallback_reason=observed.fallback_reason, graph=observed.plan_for(recipe), layers=layers,
        activations=acts, recipe=recipe if scheme is not recipe.default else None) for backend in backends}


class Calibrated:
    """One calibration pass kept live, so that more recipes can be built from it later.

    ``sensitivity`` and ``recommend`` ask for recipes as their search goes; every recipe
    whose observation points were observed is built without touching the data again. A
    recipe that needs a point nobody observed (rare: a value seen through a new chain of
    ops) costs one more pass over the calibration data, counted in ``passes``.

    Args:
        model: the fp32 model (never modified; an eval copy is used).
        calib_data: as for ``calibrate``.
        recipes: the recipes (schemes as uniform recipes) to observe for, or a function of
            the model's layer names returning them.
        mode: "auto" | "graph" | "modules".
        progress: ``progress(fraction, message)`` for the pass.
    """

    def __init__(self, model: nn.Module, calib_data: Any,
                 recipes: Sequence[Recipe] | Callable[[list[str]], Sequence[Recipe]], *, mode: str = "auto",
                 progress: Progress | None = None) -> None:
        check_mode(mode)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, torch.fx.GraphModule) and any("quantized_decomposed" in str(n.target)
                                                            for n in model.graph.nodes):
            raise ValueError("the model is already quantized (a convert_pt2e result): its qparams are its own, "
                             "read it with qcal.from_pt2e(model) (scheme 'pt2e'), not calibrate it")
        if model.training:
            warn_at_caller("qcal: the model is in training mode; calibrating an eval-mode copy "
                           "(BatchNorm running statistics, dropout off). Your model is unchanged.")
        self.calib_data = calib_data
        self.float_model = copy.deepcopy(model).eval()
        self.observed = Observed(self.float_model, mode, [] if callable(recipes) else list(recipes))
        for recipe in recipes(self.observed.layer_names) if callable(recipes) else ():
            self.observed.add(recipe)
        report = progress or (lambda fraction, message: None)
        _observe(self.observed, calib_data, report)
        report(1.0, "calibrated")
        self.passes = 1
        self.weights: dict[tuple[str, QSpec], dict[str, Any]] = {}

    @property
    def layers(self) -> list[str]:
        """The quantizable layers (conv/linear module names), in model order."""
        return list(self.observed.layer_names)

    @property
    def mode(self) -> str:
        """"graph" or "modules"."""
        return self.observed.mode

    def prepare(self, recipe: Scheme | Recipe | str) -> Recipe:
        """Accept a recipe (or scheme) for building, observing more if it needs unobserved points.

        After ``prepare``, building the recipe reads only the statistics, never the data:
        what lets a copy ``without_data`` build it elsewhere.
        """
        recipe = as_recipe(resolve_scheme_or_recipe(recipe))
        _refuse_repairs(recipe)
        self.observed.add(recipe)
        points = self.observed.points
        missing = [(k, spec) for k, spec in self.observed.observers_of(recipe)
                   if k not in points or spec not in points[k].observers]
        if missing:
            if self.calib_data is None:
                raise RuntimeError(f"recipe {recipe.name!r} needs observation points this copy of the "
                                   "calibration pass has not seen, and its calibration data stayed behind; "
                                   "call prepare() on the original first")
            self._observe_more(recipe)
        return recipe

    def build(self, recipe: Scheme | Recipe | str, backend: str = "fbgemm") -> QuantizedModel:
        """The QuantizedModel of a recipe (or scheme) on one backend."""
        check_backends([backend])
        recipe = self.prepare(recipe)
        for scheme in recipe.schemes():
            check_runnable(scheme, backend)  # sensitivity and recommend build here
        ((_, qm),) = _build(self.observed, recipe, self.weights, self.float_model, [backend]).items()
        return qm

    def without_data(self) -> Calibrated:
        """A view sharing the statistics, float model and weight cache, without the calibration
        data: what a sweep sends to its workers (they build the recipes ``prepare`` accepted)."""
        view = copy.copy(self)
        view.calib_data = None
        return view

    def _observe_more(self, recipe: Recipe) -> None:
        extra = Observed(self.float_model, self.observed.mode, [recipe])
        _observe(extra, self.calib_data, lambda f, m: None)
        self.passes += 1
        for key, point in extra.points.items():
            mine = self.observed.points.setdefault(key, point)
            for spec, obs in point.observers.items():
                mine.observers.setdefault(spec, obs)


@torch.no_grad()
def calibrate_many(
    model: nn.Module,
    calib_data: Any,
    schemes: Sequence[str | Scheme | Recipe],
    backends: Sequence[str] | None = None,
    *,
    mode: str = "auto",
    progress: Progress | None = None,
) -> dict[tuple[str, str], QuantizedModel]:
    """Calibrate many schemes and recipes in ONE pass over the data; a QuantizedModel per
    (scheme or recipe name, backend).

    Args:
        model: the fp32 model; never modified (qcal works on an eval-mode deep copy and warns
            once if the model was in training mode).
        calib_data: a Tensor (one batch) or an iterable of batches, each a Tensor, a tuple of
            positional args or a dict of keyword args.
        schemes: preset names, Schemes or Recipes (per-layer schemes; fp32 layers).
        backends: engine flavours for every scheme; None: each *_default preset (or recipe
            with such a default) and each XNNPACK preset on its own engine, the rest on
            "fbgemm". A preset runs on those of ``backends`` it can run on, on its own engine
            when it can run on none (``qcal.runnable.preset_backends``).
        mode: "auto" (graph, falling back to module swap with one warning saying why),
            "graph" (torch.fx) or "modules" (module swap).
        progress: ``progress(fraction, message)``.

    Returns:
        {(name, backend): QuantizedModel}.

    Raises:
        ValueError: unknown scheme/backend/mode names, recipe layer names that are no
            quantizable layer of the model, empty data, NaN/Inf values, batches whose shape
            does not fit the model.
    """
    check_mode(mode)
    configs = _configs(schemes, backends)
    session = Calibrated(model, calib_data, list(configs), mode=mode, progress=progress)
    return {(r.name, b): session.build(r, b) for r, backends_of in configs.items() for b in backends_of}


@torch.no_grad()
def calibrate(
    model: nn.Module,
    calib_data: Any,
    scheme: str | Scheme | Recipe,
    backend: str | None = None,
    *,
    mode: str = "auto",
    progress: Progress | None = None,
) -> QuantizedModel:
    """Calibrate ``model`` under one scheme (or per-layer Recipe) for one backend flavour.

    ``backend`` None is "fbgemm", or the engine of a preset made only for its own
    (xnnpack_default and xnnpack_per_tensor: "xnnpack"); a backend given that cannot run the
    scheme is refused (``qcal.check_runnable``). See ``calibrate_many`` for the other
    arguments and errors. Example::

        qm = qcal.calibrate(model, calib_batches, "fbgemm_default")
        y = qm(x)            # fp32 output of the integer pipeline
        qm.layers()          # per-layer qparams and requant multipliers
    """
    scheme = resolve_scheme_or_recipe(scheme)
    recipe = as_recipe(scheme)
    if backend is None:
        backend = preset_backends(recipe.default, ["fbgemm"])[0]
    for part in recipe.schemes():
        check_runnable(part, backend)
    (qm,) = calibrate_many(model, calib_data, [scheme], [backend], mode=mode, progress=progress).values()
    return qm
