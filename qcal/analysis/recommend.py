"""Recommend a per-layer recipe: within ``max_drop`` of fp32 with as few fp32 layers as found.

The search (greedy, guided by sensitivity), all on ``eval_data``:

1. every candidate scheme uniformly (S evaluations); the best is the starting recipe;
2. if it is within ``max_drop``, stop: no fp32 layer is needed;
3. rank layers by what returning each one alone to fp32 recovers (N evaluations);
4. walk the ranking: for each layer try every other scheme and fp32 (at most S
   evaluations), keep the best choice if it improves the metric, until the recipe is
   within ``max_drop`` or ``max_fp32_layers`` is reached (at most N x S evaluations);
5. try to give each fp32 layer a scheme back without leaving ``max_drop`` (at most S per
   fp32 layer).

Between 2 and 3, repairs come before fp32 layers (``qcal.analysis.repair_search``): each chain
of ``repairs``, cheapest first (equalize, data-free; correct_bias; both), under every scheme;
the first chain under which a scheme meets ``max_drop`` is the recommendation (every layer
int8, the recipe recording the repair's settings) and steps 3-5 are skipped. At most C x S
more calibration passes and evaluations (C chains).

Cost: one calibration pass (plus one more for a rare recipe needing an unobserved point),
one fp32 evaluation, and at most S + N + N*S + F*S int8 evaluations (S schemes, N layers,
F fp32 layers kept); digits_mobilenet with 2 schemes: typically 10-25. ``test_data`` (a
held-out split) is evaluated once, on the final recipe, so the quoted number was not
searched on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch

from qcal.analysis.repair_search import try_repairs
from qcal.analysis.sweep import Sweep
from qcal.recipes import Recipe
from qcal.repair.apply import CHEAP_CHAINS
from qcal.repair.stats import as_batches
from qcal.runnable import presets_for
from qcal.schemes import Scheme, resolve_scheme

__all__ = ["STEP_COLUMNS", "Recommendation", "recommend"]

STEP_COLUMNS = ["step", "layer", "choice", "value", "drop", "accepted"]
Progress = Callable[[float, str], None]
_ALL = "(all layers)"
_FP32 = "fp32"


@dataclass(frozen=True, eq=False)
class Recommendation:
    """The recommended recipe and how it was found.

    Attributes:
        recipe: the Recipe (name "recommended").
        metric: "accuracy" or "agreement".
        value, fp32_value, drop: on ``eval_data``, where the search ran (drop a fraction).
        test_value, test_fp32_value: on ``test_data`` when given, else None.
        steps: one row per evaluation: step, layer, choice (scheme name or "fp32"), value,
            drop, accepted.
        evaluations: int8 evaluations the search made; passes: calibration passes.
        dask: on a Dask executor, the bytes sent to the workers (``SweepStats`` as a dict),
            else None.
        repair: the repair chain the recipe records (e.g. "equalize") when a repair met
            ``max_drop`` before any fp32 layer, else None; reason: why (or why none did).
    """

    recipe: Recipe
    metric: str
    value: float
    fp32_value: float
    drop: float
    test_value: float | None = None
    test_fp32_value: float | None = None
    steps: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=STEP_COLUMNS))
    evaluations: int = 0
    passes: int = 1
    dask: dict[str, int] | None = None
    repair: str | None = None
    reason: str = ""

    @property
    def fp32_layers(self) -> list[str]:
        """The layers the recipe keeps in fp32."""
        return [name for name, scheme in self.recipe.layers if scheme is None]


class _Search:
    """The state of one search: the current recipe, its value, and the log of steps."""

    def __init__(self, sweep: Sweep, schemes: list[Scheme], report: Progress) -> None:
        self.sweep, self.schemes, self.report = sweep, schemes, report
        self.steps: list[dict[str, Any]] = []
        self.choices: dict[str, Scheme | None] = {}
        self.base: Scheme = schemes[0]
        self.value = 0.0

    def recipe(self, choices: dict[str, Scheme | None] | None = None) -> Recipe:
        return Recipe(self.base, choices if choices is not None else self.choices, name="recommended")

    def drop(self, value: float) -> float:
        return self.sweep.fp32_value - value

    def log(self, layer: str, choice: str, value: float, accepted: bool) -> None:
        self.steps.append({"step": len(self.steps), "layer": layer, "choice": choice, "value": value,
                           "drop": self.drop(value), "accepted": accepted})

    def uniform(self) -> None:
        scores = self.sweep.scores([Recipe(s, name=s.name) for s in self.schemes])
        best = max(range(len(scores)), key=lambda i: scores[i].value)  # first of equals: given order
        for i, (s, sc) in enumerate(zip(self.schemes, scores, strict=True)):
            self.log(_ALL, s.name, sc.value, i == best)
        self.base, self.value = self.schemes[best], scores[best].value

    def ranking(self) -> list[str]:
        layers = self.sweep.layers
        recipes = [Recipe(self.base, {layer: None}, name=f"all but {layer}") for layer in layers]
        scores = self.sweep.scores(recipes)
        for layer, sc in zip(layers, scores, strict=True):
            self.log(layer, f"{_FP32} (ranking)", sc.value, False)
        gains = {layer: sc.value for layer, sc in zip(layers, scores, strict=True)}
        return sorted(layers, key=lambda layer: -gains[layer])

    def try_choices(self, layer: str, options: list[Scheme | None], keep_if: Callable[[float], bool]) -> None:
        if not options:
            return
        trials = [{**self.choices, layer: o} for o in options]
        scores = self.sweep.scores([self.recipe(t) for t in trials])
        best = max(range(len(scores)), key=lambda i: scores[i].value)
        accept = keep_if(scores[best].value)
        for i, (o, sc) in enumerate(zip(options, scores, strict=True)):
            self.log(layer, _FP32 if o is None else o.name, sc.value, accept and i == best)
        if accept:
            self.choices, self.value = trials[best], scores[best].value


@torch.no_grad()
def _checked_args(schemes: Sequence[str | Scheme] | None, max_drop: float,
                  max_fp32_layers: int | None, backend: str) -> list[Scheme]:
    """The distinct candidate schemes, after refusing a bad budget or an empty candidate list."""
    if not 0 <= max_drop <= 1:
        raise ValueError(f"max_drop is a fraction between 0 and 1 (0.01 = 1 point), got {max_drop!r}")
    if max_fp32_layers is not None and max_fp32_layers < 0:
        raise ValueError(f"max_fp32_layers must be >= 0 or None, got {max_fp32_layers!r}")
    resolved = list(dict.fromkeys(resolve_scheme(s) for s in (schemes or presets_for(backend))))
    if not resolved:
        raise ValueError("no candidate scheme given; pass preset names or qcal.Scheme objects")
    return resolved


def _greedy(search: _Search, resolved: list[Scheme], max_drop: float, limit: int, report: Progress,
            n_layers: int) -> None:
    """Change layers, most sensitive first, until the drop fits; then give fp32 layers a scheme
    back where the budget still allows."""
    if search.drop(search.value) > max_drop:
        for i, layer in enumerate(search.ranking()):
            if search.drop(search.value) <= max_drop:
                break
            report(0.3 + 0.5 * i / n_layers, f"choosing for {layer}")
            n_fp32 = sum(v is None for v in search.choices.values())
            options = [s for s in resolved if s != search.base] + ([None] if n_fp32 < limit else [])
            search.try_choices(layer, options, lambda v: v > search.value)
    if search.drop(search.value) <= max_drop:
        for layer in [n for n, v in reversed(search.choices.items()) if v is None]:
            search.try_choices(layer, list(resolved), lambda v: search.drop(v) <= max_drop)


def recommend(
    model: torch.nn.Module,
    calib_data: Any,
    eval_data: Any,
    *,
    schemes: Sequence[str | Scheme] | None = None,
    backend: str = "fbgemm",
    max_drop: float = 0.01,
    max_fp32_layers: int | None = None,
    test_data: Any = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
    mode: str = "auto",
    repairs: Sequence[str] = CHEAP_CHAINS,
) -> Recommendation:
    """A recipe within ``max_drop`` of fp32 on ``eval_data`` using as few fp32 layers as the
    search finds, choosing per layer among ``schemes`` (see the module doc for the search
    and its cost in evaluations).

    Args:
        model, calib_data, eval_data: as for ``compare``.
        schemes: candidate presets or Schemes (None: every preset ``backend`` can run).
        backend: the engine flavour.
        max_drop: the accepted drop against fp32, a fraction (0.01 = 1 point).
        max_fp32_layers: at most this many fp32 layers (None: no limit).
        test_data: a held-out split, evaluated once on the final recipe.
        executor: any ``concurrent.futures.Executor`` for the evaluations (same result).
        progress: ``progress(fraction, message)``.
        mode: "auto" | "graph" | "modules".
        repairs: repair chains to try before fp32 layers, cheapest first (() : none).

    Raises:
        ValueError: max_drop outside [0, 1], a negative max_fp32_layers, unknown schemes.
    """
    resolved = _checked_args(schemes, max_drop, max_fp32_layers, backend)
    report = progress or (lambda fraction, message: None)
    calib_data = as_batches(calib_data)  # read again by each repair tried

    def observe_for(layers: list[str]) -> list[Recipe]:
        return [Recipe(s, {layer: None}, name=f"all but {layer}") for s in resolved for layer in layers] + [
            Recipe(s, name=s.name) for s in resolved]

    with Sweep(model, calib_data, eval_data, observe_for, backend=backend, executor=executor, mode=mode,
               progress=lambda f, m: report(0.2 * f, m)) as sweep:
        search = _Search(sweep, resolved, report)
        search.uniform()
        choice, reason, passes = try_repairs(search, model, calib_data, repairs, max_drop, where=_ALL, mode=mode,
                                             report=report) if search.drop(search.value) > max_drop else (None, "", 0)
        if choice is None:
            limit = len(sweep.layers) if max_fp32_layers is None else max_fp32_layers
            _greedy(search, resolved, max_drop, limit, report, len(sweep.layers))
    return _result(sweep, search, choice, reason, passes, test_data, report)


def _result(sweep: Sweep, search: _Search, choice: Any, reason: str, repair_passes: int, test_data: Any,
            report: Progress) -> Recommendation:
    """The Recommendation: the repaired recipe when a repair met max_drop, else the search's."""
    recipe, value = (choice.recipe, choice.value) if choice else (search.recipe(), search.value)
    test_value = test_fp32 = None
    if test_data is not None:
        report(0.95, "evaluating the recipe on test_data")
        test_value, test_fp32 = sweep.score_on(choice.model if choice else recipe, test_data)
    report(1.0, "done")
    return Recommendation(recipe, sweep.metric, value, sweep.fp32_value, search.drop(value),
                          test_value, test_fp32, pd.DataFrame(search.steps, columns=STEP_COLUMNS),
                          sweep.evaluations, sweep.calibrated.passes + repair_passes,
                          asdict(sweep.stats) if sweep.stats.workers else None,
                          choice.chain if choice else None, reason)
