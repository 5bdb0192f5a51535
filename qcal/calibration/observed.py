"""The one calibration pass: every observation point of every scheme and recipe, fed once.

Each scheme or recipe has its own plan (``qcal.planner``): which values are int8, and which
values each of its observers sees, in order. An observer's statistics are determined by
that sequence of values and its activation spec; histogram and moving-average results
depend on the order, so they cannot be merged afterwards. The pass therefore keeps one
``ObservationPoint`` per distinct sequence, holding one observer per activation spec that
any plan asks of it, and feeds each fp32 value, as the float model computes it (the order
torch's observers, placed right after each value, see it), to every point that observes it.
A uniform scheme and a recipe that agree on a value share its statistics.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from qcal.batching import call_model
from qcal.calibration.model import describe_shape
from qcal.calibration.observation import ObservationPoint
from qcal.graph.ir import Graph, UnsupportedGraph
from qcal.graph.modules import observe_layers, swappable_layers
from qcal.graph.planner import plan
from qcal.graph.program import run_float
from qcal.graph.trace import trace_folded
from qcal.recipes import Recipe
from qcal.schemes import QSpec, Scheme

__all__ = ["Observed", "as_recipe", "observe_activation_specs", "warn_at_caller"]

_QCAL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Key = tuple[str, ...]  # the values an observer sees per batch, in order


def warn_at_caller(message: str) -> None:
    """Warn at the caller's line: the first frame outside qcal and torch's decorators."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith(_QCAL_DIR)
                                 or frame.f_code.co_filename.endswith("_contextlib.py")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level + 1)


def as_recipe(config: Scheme | Recipe) -> Recipe:
    """A scheme as the recipe using it for every layer (same name)."""
    return config if isinstance(config, Recipe) else Recipe(config, name=config.name)


def _observed_sequences(graph: Graph) -> list[Key]:
    """For each observation point of a plan, the values it observes, in order."""
    seqs: list[list[str]] = [[] for _ in graph.obs_names]
    for step in graph.steps:
        if step.obs is None or step.kind in ("dequantize", "identity"):
            continue
        seqs[step.obs].append(step.args[0].name if step.kind == "quantize" else step.name)
    return [tuple(s) for s in seqs]


class Observed:
    """The pass over the calibration data for a set of recipes (schemes as uniform recipes)."""

    def __init__(self, model: nn.Module, mode: str, recipes: Sequence[Recipe]) -> None:
        self.model, self.mode, self.requested, self.recipes = model, mode, mode, list(recipes)
        self.fallback_reason: str | None = None
        self.graph: Graph | None = None
        self.fx_module: Any = None
        self.layer_names: list[str] = []
        self.plans: dict[Recipe, Graph] = {}
        if mode in ("auto", "graph"):
            try:
                self.fx_module = trace_folded(model)
                self.graph = plan(self.fx_module)
                if not self.graph.layers:
                    raise UnsupportedGraph("the model has no nn.Conv2d or nn.Linear layer to quantize")
                self.layer_names = list(self.graph.layers)
                self.mode = "graph"
            except UnsupportedGraph as err:
                if mode == "graph":
                    raise ValueError(f"graph mode is not possible for this model: {err}") from err
                self._fall_back(str(err))
        else:
            self._use_modules()
        self._check_recipes()

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        warn_at_caller(f"qcal: torch.fx graph mode is not possible ({reason}); using module-swap mode: "
                       "each Conv2d/Linear runs int8, the rest fp32")
        self.graph = self.fx_module = None
        self.plans = {}
        self._use_modules()
        self._check_recipes()

    def _use_modules(self) -> None:
        self.mode = "modules"
        self.layer_names = swappable_layers(self.model)
        if not self.layer_names:
            raise ValueError("the model has no nn.Conv2d or nn.Linear layer to quantize")

    def _check_recipes(self) -> None:
        """Refuse recipe names that are no quantizable layer (BN, ReLU: folded/fused away)."""
        others = {n: type(m).__name__ for n, m in self.model.named_modules() if n and n not in self.layer_names}
        for recipe in self.recipes:
            recipe.check_layers(self.layer_names, others)

    def add(self, recipe: Recipe) -> None:
        """Accept one more recipe after the pass (its names checked against the model)."""
        if recipe not in self.recipes:
            self.recipes.append(recipe)
            self._check_recipes()

    def __getstate__(self) -> dict[str, Any]:
        # torch.fx's GraphModule does not pickle (its generated code's globals), and the plans
        # made so far do (``Graph.module``); a copy sent to a Dask worker re-traces the model
        # the first time it plans a recipe of its own.
        return {**self.__dict__, "fx_module": None}

    def plan_for(self, recipe: Recipe) -> Graph | None:
        """The recipe's program (graph mode), else None."""
        if self.graph is None:
            return None
        if recipe not in self.plans:
            if self.fx_module is None:  # an unpickled copy: tracing and folding are deterministic
                self.fx_module = trace_folded(self.model)
            self.plans[recipe] = plan(self.fx_module, recipe)
        return self.plans[recipe]

    def int8_layers(self, recipe: Recipe) -> list[str]:
        """The recipe's int8 layers, in model order."""
        return [n for n in self.layer_names if recipe.scheme_for(n) is not None]

    def observers_of(self, recipe: Recipe) -> list[tuple[Key, QSpec]]:
        """Per observation point of the recipe's program: (observed values, spec)."""
        graph = self.plan_for(recipe)
        if graph is not None:
            return list(zip(_observed_sequences(graph), graph.obs_specs, strict=True))
        out = []
        for name in self.int8_layers(recipe):
            spec = recipe.scheme_for(name).activation
            out += [((f"{name}.input",), spec), ((name,), spec)]
        return out

    def start(self) -> None:
        """Create the observation points every recipe needs, and who feeds them."""
        wanted: dict[Key, dict[QSpec, None]] = {}
        labels: dict[Key, str] = {}
        for recipe in self.recipes:
            graph = self.plan_for(recipe)
            for i, (key, spec) in enumerate(self.observers_of(recipe)):
                wanted.setdefault(key, {})[spec] = None
                labels.setdefault(key, graph.obs_names[i] if graph is not None else key[0])
        self.points = {key: ObservationPoint(labels[key], list(specs)) for key, specs in wanted.items()}
        self.feeds: dict[str, list[ObservationPoint]] = {}
        for key, point in self.points.items():
            for value in key:
                self.feeds.setdefault(value, []).append(point)
        self.labels = [f"{n}{suffix}" for n in self.layer_names for suffix in (".input", "")]

    def _on_value(self, name: str, value: Any) -> None:
        for point in self.feeds.get(name, ()):
            point.update(value)

    def _tap(self, index: int, value: torch.Tensor) -> None:
        self._on_value(self.labels[index], value)

    def feed(self, batch: Any, first: bool) -> None:
        """Run the float model on one batch, feeding every observation point."""
        if self.graph is not None:
            try:
                run_float(self.graph, batch, on_value=self._on_value)
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
            self._check_fits(batch)

    def _check_fits(self, batch: Any) -> None:
        try:
            call_model(self.model, batch)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"calibration batch of shape {describe_shape(batch)} does not fit the model: {err}") from err


def observe_activation_specs(model: nn.Module, mode: str, specs: Sequence[QSpec]) -> Observed:
    """A started pass whose observation points hold one observer per activation spec.

    Each spec rides on a uniform recipe (its weight spec is irrelevant to observation), so
    the points are exactly those ``calibrate`` observes for these activation specs.
    """
    weight = QSpec("qint8", "per_tensor_affine", "minmax")
    recipes = [Recipe(Scheme(f"activation-{i}", weight, spec, ""), name=f"activation-{i}")
               for i, spec in enumerate(specs)]
    observed = Observed(model, mode, recipes)
    observed.start()
    return observed
