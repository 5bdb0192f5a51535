"""Evaluating many recipes of one model against one fp32 reference (sensitivity, recommend).

A ``Sweep`` holds one calibration pass (``Calibrated``), the evaluation batches and the fp32
model's outputs on them, computed once. ``scores`` evaluates a list of recipes: the metric
(top-1 accuracy with labels, else agreement with fp32 top-1) and, when asked, one layer's
SQNR on the first 64 samples. With an executor (``qcal.analysis.cluster``: the data and fp32
outputs go to each Dask worker once) the recipes go out in a few chunks: each chunk's payload
holds its calibrated models, which share one float model (pickled once per chunk, not once
per recipe); the results are the same values in the same order as in-process.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import torch

from qcal.analysis.cluster import SweepStats, run_sweep
from qcal.analysis.compare import _fp32_output
from qcal.analysis.metrics import top1_metric
from qcal.batching import as_eval_batches
from qcal.calibration.calibrate import Calibrated
from qcal.schemes import Recipe

__all__ = ["Score", "Sweep"]

Progress = Callable[[float, str], None]
_CHUNKS_PER_WORKER = 2
_SQNR_SAMPLES = 64  # samples of the first eval batch traced for a layer's SQNR


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
    ref, err = trace.fp32.double(), trace.dequantized.double() - trace.fp32.double()
    noise, signal = float((err * err).sum()), float((ref * ref).sum())
    return math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)


@torch.no_grad()
def score_chunk(shared: tuple[list[tuple[Any, Any]], list[torch.Tensor], bool],
                models: list[tuple[Any, str | None]]) -> list[Score]:
    """Evaluate calibrated models (each with the layer whose SQNR to report, or None) on the
    shared (eval batches, fp32 outputs, labelled)."""
    batches, fp32, labelled = shared
    out = []
    for qm, layer in models:
        value = _metric([qm(inputs) for inputs, _ in batches], batches, fp32, labelled)
        out.append(Score(value, _sqnr_db(qm, batches[0][0], layer) if layer else math.nan))
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

    Attributes:
        stats: what ``scores`` sent to Dask workers, over all its calls (each call sends the
            shared eval data once per worker; ``jobs`` sums the chunks); workers 0 in process.
    """

    def __init__(self, model: torch.nn.Module, calib_data: Any, eval_data: Any,
                 recipes: Sequence[Recipe] | Callable[[list[str]], Sequence[Recipe]], *,
                 backend: str = "fbgemm", executor: Executor | None = None, mode: str = "auto",
                 progress: Progress | None = None) -> None:
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
        self.evaluations = 0
        self.stats = SweepStats(workers=0, shared_bytes=0, jobs=0, job_bytes=0)

    @property
    def layers(self) -> list[str]:
        """The quantizable layers, in model order."""
        return self.calibrated.layers

    def scores(self, recipes: Sequence[Recipe], sqnr_layers: Sequence[str | None] | None = None,
               progress: Progress | None = None) -> list[Score]:
        """Each recipe's Score, in order (``sqnr_layers``: per recipe, the layer to trace)."""
        layers = list(sqnr_layers) if sqnr_layers is not None else [None] * len(recipes)
        jobs = [(self.calibrated.build(r, self.backend), layer) for r, layer in zip(recipes, layers, strict=True)]
        self.evaluations += len(jobs)
        report = progress or (lambda fraction, message: None)
        workers = getattr(self.executor, "_max_workers", None) or 4
        size = 1 if self.executor is None else max(1, math.ceil(len(jobs) / (workers * _CHUNKS_PER_WORKER)))
        chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        results, stats = run_sweep(self.executor, score_chunk, (self.batches, self.fp32, self.labelled), chunks,
                                   progress=report, describe=lambda chunk: chunk[0][0].scheme.name)
        self.stats = SweepStats(max(self.stats.workers, stats.workers), max(self.stats.shared_bytes, stats.shared_bytes),
                                self.stats.jobs + stats.jobs, max(self.stats.job_bytes, stats.job_bytes))
        return [score for chunk in results for score in chunk]

    @torch.no_grad()
    def score_on(self, recipe: Recipe, data: Any) -> tuple[float, float]:
        """(the recipe's metric, fp32's metric) on other data (a held-out split)."""
        batches = as_eval_batches(data)
        if not batches:
            raise ValueError("test_data is empty: pass (inputs, labels) batches")
        fp32 = [_fp32_output(self.calibrated.float_model, inputs) for inputs, _ in batches]
        metric, fp32_value = top1_metric(fp32, batches)
        qm = self.calibrated.build(recipe, self.backend)
        return _metric([qm(inputs) for inputs, _ in batches], batches, fp32, metric == "accuracy"), fp32_value
