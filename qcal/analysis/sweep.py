"""Evaluating many recipes of one model against one fp32 reference (sensitivity, recommend).

A ``Sweep`` holds one calibration pass (``Calibrated``), the evaluation batches and the fp32
model's outputs on them, computed once. ``scores`` evaluates a list of recipes: the metric
(top-1 accuracy with labels, else agreement with fp32 top-1) and, when asked, one layer's
SQNR on the first 64 samples.

With an executor the jobs build their quantized models themselves, from ``SharedEval``: the
calibration statistics (``Calibrated.without_data``: float model, observers, traced graph;
no calibration data), the eval batches and the fp32 outputs. On Dask
(``qcal.analysis.cluster``) it goes to each worker ONCE per Sweep, across every ``scores``
call (a recommend search's rounds), and again only when a recipe needed one more calibration
pass; a job carries one (recipe, SQNR layer) pair, a few hundred bytes. A worker keeps its
copy for the whole Sweep, so the quantized weights it builds (per layer and weight spec)
are built once per worker and reused by its later jobs. The results are the same values in
the same order as in-process.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import torch

from qcal.analysis import cluster
from qcal.analysis.cluster import SweepStats
from qcal.analysis.compare import _fp32_output
from qcal.analysis.metrics import top1_metric
from qcal.batching import as_eval_batches
from qcal.calibration.calibrate import Calibrated
from qcal.graph.memo import StepMemo
from qcal.qparams import dequantize
from qcal.recipes import Recipe

__all__ = ["Score", "SharedEval", "Sweep", "score_jobs"]

Progress = Callable[[float, str], None]
Job = tuple[Recipe, str | None]  # a recipe and the layer whose SQNR to report (or None)
_CHUNKS_PER_WORKER = 2  # plain executors: a few chunks per worker (each chunk pickles the shared state)
_SQNR_SAMPLES = 64  # samples of the first eval batch traced for a layer's SQNR
# Building mutates the shared pass (accepted recipes, their plans, the weight cache); jobs on
# the threads of one worker (or of a ThreadPoolExecutor) share it. Evaluation runs unlocked.
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class Score:
    """One recipe's result: metric value and (when asked) one layer's SQNR in dB."""

    value: float
    sqnr_db: float = math.nan


def _metric(outputs: list[torch.Tensor], batches: list[tuple[Any, Any]], fp32: list[torch.Tensor],
            labelled: bool) -> float:
    hit = total = 0
    for out, (_, labels), ref in zip(outputs, batches, fp32, strict=True):
        pred = out.reshape(out.shape[0], -1).argmax(dim=1)
        target = labels.reshape(-1) if labelled else ref.reshape(ref.shape[0], -1).argmax(dim=1)
        hit += int((pred == target).sum())
        total += pred.numel()
    return hit / max(total, 1)


def _head(inputs: Any, n: int) -> Any:
    """The first ``n`` samples of a batch (traces are heavier than inference)."""
    if isinstance(inputs, torch.Tensor):
        return inputs[:n]
    if isinstance(inputs, dict):
        return {k: _head(v, n) for k, v in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(_head(v, n) for v in inputs)
    return inputs


def _sqnr_db(qm: Any, inputs: Any, layer: str) -> float:
    trace = qm.trace(_head(inputs, _SQNR_SAMPLES)).get(layer)
    if trace is None:
        return math.nan
    return _sqnr(trace.fp32, trace.dequantized)


def _sqnr(fp32: torch.Tensor, dequantized: torch.Tensor) -> float:
    ref, err = fp32.double(), dequantized.double() - fp32.double()
    noise, signal = float((err * err).sum()), float((ref * ref).sum())
    return math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)


@dataclass(frozen=True, eq=False)
class SharedEval:
    """What every job of a Sweep reads: sent to each Dask worker once per Sweep.

    Attributes:
        calibrated: the calibration pass without its data (statistics, float model, traced
            graph, and the weight cache the worker fills as its jobs build).
        backend: the engine flavour.
        batches, fp32, labelled: the eval batches, the fp32 outputs on them, whether the
            metric is accuracy (labels) or agreement with fp32.
    """

    calibrated: Calibrated
    backend: str
    batches: list[tuple[Any, Any]]
    fp32: list[torch.Tensor]
    labelled: bool
    bases: tuple[Recipe, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_memo", None)  # stored values stay where they were computed
        return state


def _memo(shared: SharedEval) -> tuple[StepMemo, dict[str, torch.Tensor]] | None:
    """The step values of the shared base recipes on every eval batch and on the SQNR head,
    computed once per SharedEval copy (so once per Dask worker), or None (no bases, or a
    module-swap model: nothing to share)."""
    if not shared.bases:
        return None
    if "_memo" not in shared.__dict__:
        memo, fp32, head = StepMemo(), {}, _head_key(shared)
        for recipe in shared.bases:
            qm = shared.calibrated.build(recipe, shared.backend)
            if qm.mode != "graph":
                shared.__dict__["_memo"] = None
                return None
            keep = {s.name: None for s in qm.graph.steps if s.kind == "float" and s.target in qm.graph.layers}
            for i, (inputs, _) in enumerate(shared.batches):
                memo.run(qm, inputs, i, store=True, keep=keep if head == i else None)
            if head == "head":
                memo.run(qm, _head(shared.batches[0][0], _SQNR_SAMPLES), head, store=True, keep=keep)
            fp32.update({k: v for k, v in keep.items() if v is not None and k not in fp32})
        shared.__dict__["_memo"] = (memo, fp32)
    return shared.__dict__["_memo"]


def _head_key(shared: SharedEval) -> Any:
    """The memo's batch key of the SQNR head: the first batch itself when it has no more samples."""
    x = shared.batches[0][0]
    return 0 if isinstance(x, torch.Tensor) and x.shape[0] <= _SQNR_SAMPLES else "head"


def _sqnr_from(memo: StepMemo, fp32: dict[str, torch.Tensor], qm: Any, shared: SharedEval, layer: str) -> float | None:
    """A layer's SQNR from a memo run on the head (the base's fp32 value at that step), or None
    where the base does not hold the fp32 value as the trace would see it."""
    step = next((s for s in qm.graph.steps if s.kind in ("conv", "linear") and s.target == layer), None)
    if step is None or step.name not in fp32:
        return None
    keep = {step.name: None}
    head = _head_key(shared)
    memo.run(qm, _head(shared.batches[0][0], _SQNR_SAMPLES), head, keep=keep, stop=True)  # nothing after the layer
    ql = qm.quant_layers[layer]
    return _sqnr(fp32[step.name], dequantize(keep[step.name], ql.output_scale, ql.output_zero_point))


@torch.no_grad()
def score_jobs(shared: SharedEval, jobs: Sequence[Job]) -> list[Score]:
    """Build each job's recipe from the shared pass and evaluate it on the shared eval data
    (reusing the base recipes' step values where a job computes the same, ``qcal.graph.memo``)."""
    out = []
    for recipe, layer in jobs:
        with _BUILD_LOCK:
            qm = shared.calibrated.build(recipe, shared.backend)
            memo = _memo(shared)
        if memo is None or qm.mode != "graph":
            outputs = [qm(inputs) for inputs, _ in shared.batches]
            sqnr = _sqnr_db(qm, shared.batches[0][0], layer) if layer else math.nan
        else:
            outputs = [memo[0].run(qm, inputs, i) for i, (inputs, _) in enumerate(shared.batches)]
            sqnr = _sqnr_from(*memo, qm, shared, layer) if layer else math.nan
            if sqnr is None:
                sqnr = _sqnr_db(qm, shared.batches[0][0], layer)
        out.append(Score(_metric(outputs, shared.batches, shared.fp32, shared.labelled), sqnr))
    return out


class Sweep:
    """One model, one calibration pass, one eval set, one backend: recipes in, scores out.

    Args:
        model, calib_data, eval_data: as for ``compare``.
        recipes: recipes to observe for in the one pass (others are built later from it),
            or a function of the layer names returning them.
        backend: the engine flavour every recipe runs on.
        executor: a ``concurrent.futures.Executor`` or None (in process).
        mode: "auto" | "graph" | "modules".
        progress: ``progress(fraction, message)`` for the calibration pass.
        bases: recipes whose step values are computed once per Sweep (per worker) and reused
            by every recipe that computes the same steps (``qcal.graph.memo``): e.g. the
            all-int8 scheme and the all-fp32 recipe under one-layer variants. Same results,
            less time; the values are kept in memory (up to ``StepMemo``'s budget).

    Use as a context manager (``with Sweep(...) as sweep:``) with a Dask executor: leaving it
    releases the shared inputs held on the workers.

    Attributes:
        stats: what ``scores`` sent to Dask workers, over all its calls (``SweepStats``:
            the shared inputs once per worker, ``jobs`` one per evaluation); workers 0 in process.
    """

    def __init__(self, model: torch.nn.Module, calib_data: Any, eval_data: Any,
                 recipes: Sequence[Recipe] | Callable[[list[str]], Sequence[Recipe]], *,
                 backend: str = "fbgemm", executor: Executor | None = None, mode: str = "auto",
                 progress: Progress | None = None, bases: Sequence[Recipe] = ()) -> None:
        self.backend, self.executor = backend, executor
        self.batches = as_eval_batches(eval_data)
        if not self.batches:
            raise ValueError("eval_data is empty: pass (inputs, labels) batches")
        float_model = copy.deepcopy(model).eval()
        with torch.no_grad():
            self.fp32 = [_fp32_output(float_model, inputs) for inputs, _ in self.batches]
        self.metric, self.fp32_value = top1_metric(self.fp32, self.batches)
        self.labelled = self.metric == "accuracy"
        self.calibrated = Calibrated(model, calib_data, recipes, mode=mode, progress=progress)
        self.bases = tuple(self.calibrated.prepare(r) for r in bases)
        self.evaluations = 0
        self.stats = SweepStats(workers=0, shared_bytes=0, jobs=0, job_bytes=0)
        self._cluster: cluster.Sweep | None = None
        self._sent_passes = 0  # the calibration passes the workers' copy holds

    def __enter__(self) -> Sweep:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the shared inputs held on the workers (``stats`` stays)."""
        if self._cluster is not None:
            self._cluster.__exit__()
            self._cluster = None

    @property
    def layers(self) -> list[str]:
        """The quantizable layers, in model order."""
        return self.calibrated.layers

    def _shared_sweep(self) -> cluster.Sweep:
        """The cluster sweep holding the shared inputs, sent on first use and again only when
        the calibration pass has grown since (a recipe needed more observation points)."""
        if self._cluster is None or self._sent_passes != self.calibrated.passes:
            shared = SharedEval(self.calibrated.without_data(), self.backend, self.batches, self.fp32, self.labelled,
                                self.bases)
            if self._cluster is None:
                self._cluster = cluster.Sweep(self.executor, shared).__enter__()
            else:
                self._cluster.resend(shared)
            self._sent_passes = self.calibrated.passes
        return self._cluster

    def _chunk_size(self, n: int) -> int:
        if self.executor is None or cluster.is_distributed(self.executor):
            return 1  # on Dask one job per evaluation: spread evenly, a lost worker loses one
        workers = getattr(self.executor, "_max_workers", None) or 4
        return max(1, math.ceil(n / (workers * _CHUNKS_PER_WORKER)))

    def scores(self, recipes: Sequence[Recipe], sqnr_layers: Sequence[str | None] | None = None,
               progress: Progress | None = None) -> list[Score]:
        """Each recipe's Score, in order (``sqnr_layers``: per recipe, the layer to trace)."""
        layers = list(sqnr_layers) if sqnr_layers is not None else [None] * len(recipes)
        # accepted here, so that any further calibration pass runs on this machine, with the data
        jobs = [(self.calibrated.prepare(r), layer) for r, layer in zip(recipes, layers, strict=True)]
        self.evaluations += len(jobs)
        size = self._chunk_size(len(jobs))
        chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        sweep = self._shared_sweep()
        results = sweep.map(score_jobs, chunks, progress=progress, describe=lambda chunk: chunk[0][0].name)
        self.stats = sweep.stats
        return [score for chunk in results for score in chunk]

    @torch.no_grad()
    def score_model(self, qm: Any) -> float:
        """The metric of a QuantizedModel built elsewhere (a repaired one) on this sweep's eval data."""
        self.evaluations += 1
        return _metric([qm(inputs) for inputs, _ in self.batches], self.batches, self.fp32, self.labelled)

    @torch.no_grad()
    def score_on(self, recipe: Recipe | Any, data: Any) -> tuple[float, float]:
        """(the recipe's metric, fp32's metric) on other data (a held-out split); ``recipe`` may
        also be a QuantizedModel built elsewhere (a repaired one)."""
        batches = as_eval_batches(data)
        if not batches:
            raise ValueError("test_data is empty: pass (inputs, labels) batches")
        fp32 = [_fp32_output(self.calibrated.float_model, inputs) for inputs, _ in batches]
        metric, fp32_value = top1_metric(fp32, batches)
        qm = self.calibrated.build(recipe, self.backend) if isinstance(recipe, Recipe) else recipe
        return _metric([qm(inputs) for inputs, _ in batches], batches, fp32, metric == "accuracy"), fp32_value
