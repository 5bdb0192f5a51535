"""Benchmarks as ratios: qcal against torch's own pipeline, measured in the same process.

For each model and batch size:

* ``calib_minmax`` / ``calib_histogram``: ``qcal.calibrate`` vs torch's ``prepare_fx`` +
  the same calibration batches + ``convert_fx`` (per_tensor_affine and fbgemm_default);
* ``int8_inference``: qcal's integer engine vs torch's converted model under fbgemm;
* ``six_presets``: one qcal pass calibrating all six presets vs six torch calibrations;
* ``schemes``: int8 inference under each of the six presets (``int8 <scheme>``);
* ``sensitivity``: a per-layer sensitivity scan against one ``compare`` of one scheme
  (qcal against qcal; only where ``qcal.analysis.sensitivity`` exists).

qcal and torch are timed interleaved (one run of each in turn), in this process, with the
same thread count; each cell keeps the medians of ``repeat`` runs, and a ratio below 1 means
qcal is faster. Warm-up runs are kept out of the medians. Peak memory of a whole comparison
is measured in fresh subprocesses (``bench_memory.py``).
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from qcal.analysis.cluster import run_sweep
from qcal.analysis.compare import compare
from qcal.analysis.reference import quantized_engine, torch_reference
from qcal.analysis.sensitivity import sensitivity
from qcal.calibration.calibrate import calibrate, calibrate_many
from qcal.int8 import native
from qcal.int8.cpu.flags import has_vnni
from qcal.runnable import unrunnable
from qcal.schemes import SCHEMES
from qcal.zoo import datasets, zoo

__all__ = ["TASKS", "BenchRow", "bench", "format_bench", "instruction_set"]

DEFAULT_MODELS = ("digits_cnn", "digits_mobilenet", "resnet18_like", "mobilenet_v2_like")
TASKS = ("calib_minmax", "calib_histogram", "int8_inference", "six_presets", "schemes", "sensitivity")
DEFAULT_TASKS = TASKS[:4]


def engine_line() -> str:
    """Which integer engine qcal ran, and what finding or building it cost (kept out of the medians)."""
    if not native.available():
        return f"qcal int8 engine: float engine + saturation emulation (native kernel: {native.why_unavailable()})"
    return (f"qcal int8 engine: native kernel, {native.loaded_variant()} build, found or built and loaded in "
            f"{native.load_seconds():.2f} s before any timing (not in the medians)")


def instruction_set() -> str:
    """The CPU's vector instruction set as torch reports it, and whether it has VNNI (which
    changes torch's int8 speed and FBGEMM's saturation), e.g. "AVX2, no VNNI"."""
    return f"{torch.backends.cpu.get_cpu_capability()}, {'VNNI' if has_vnni() else 'no VNNI'}"


@dataclass(frozen=True)
class BenchRow:
    """One measured comparison: medians in seconds and their ratio (qcal / torch)."""

    model: str
    batch: int
    task: str
    qcal_s: float
    torch_s: float

    @property
    def ratio(self) -> float:
        return self.qcal_s / self.torch_s


#: "wall": elapsed time; "cpu": this process's CPU time (steadier on a shared machine, and at
#: one thread the same work; with more threads it also counts threads waiting at barriers).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _paired_medians(qcal_fn: Callable[[], object], torch_fn: Callable[[], object], repeat: int,
                    warmup: int = 0, clock: str = "wall") -> tuple[float, float]:
    """Medians of ``repeat`` interleaved runs of both (load changes hit both alike)."""
    for _ in range(warmup):
        qcal_fn(), torch_fn()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((qcal_fn, times[0]), (torch_fn, times[1])):
            start = CLOCKS[clock]()
            fn()
            out.append(CLOCKS[clock]() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _inputs(model_name: str, batch: int, n_batches: int, seed: int = 0) -> list[torch.Tensor]:
    shape = tuple(zoo.info(model_name).input_shape)
    if model_name.startswith("digits"):
        x = datasets.digits_splits().calib[0]
        reps = -(-batch * n_batches // x.shape[0])
        x = x.repeat(reps, *([1] * (x.dim() - 1)))[: batch * n_batches]
        return list(x.reshape(n_batches, batch, *x.shape[1:]))
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((batch, *shape), generator=gen) for _ in range(n_batches)]


@torch.no_grad()
def bench(
    models: Sequence[str] = DEFAULT_MODELS,
    batches: Sequence[int] = (8, 32),
    *,
    repeat: int = 5,
    calib_batches: int = 8,
    tasks: Sequence[str] = DEFAULT_TASKS,
    clock: str = "wall",
    executor: Executor | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> list[BenchRow]:
    """Measure qcal against torch for each model, batch size and task.

    Args:
        models: zoo names (the 224x224 ones use random weights with realistic BN stats).
        batches: batch sizes.
        repeat: runs per cell; the median is kept.
        calib_batches: calibration batches per calibration.
        tasks: a subset of ``TASKS``.
        clock: "wall" or "cpu" (``CLOCKS``).
        executor: a ``concurrent.futures.Executor`` for the (model, batch) cells; each cell
            times qcal and torch in the same worker process, so its ratio stays fair. On a
            ``distributed`` executor the models go to each worker once.
        progress: ``progress(fraction, message)``.
    """
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; expected one of: {', '.join(CLOCKS)}")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown bench tasks {unknown}; expected some of: {', '.join(TASKS)}")
    report = progress or (lambda f, m: None)
    loaded = {name: zoo.load(name) for name in dict.fromkeys(models)}
    cells = [(m, b, repeat, calib_batches, tuple(tasks), clock) for m in models for b in batches]
    per_cell, _ = run_sweep(executor, _bench_cell, loaded, cells, progress=report,
                            describe=lambda cell: f"{cell[0]} batch {cell[1]}")
    report(1.0, "done")
    return [row for rows in per_cell for row in rows]


def _bench_cell(loaded: dict[str, torch.nn.Module],
                cell: tuple[str, int, int, int, tuple[str, ...], str]) -> list[BenchRow]:
    """One (model, batch) cell: every task timed for qcal and torch in this process."""
    name, batch, repeat, calib_batches, tasks, clock = cell
    native.available()  # the native kernel's build or load happens here, outside every timing
    rows = []
    model = loaded[name]
    data = _inputs(name, batch, calib_batches)
    for task, scheme in (("calib_minmax", "per_tensor_affine"), ("calib_histogram", "fbgemm_default")):
        if task in tasks:
            q, t = _paired_medians(lambda s=scheme: calibrate(model, data, s, "fbgemm", mode="graph"),
                                   lambda s=scheme: torch_reference(model, data, s, "fbgemm"), repeat,
                                   clock=clock)
            rows.append(BenchRow(name, batch, task, q, t))
    inference = ["fbgemm_default"] if "int8_inference" in tasks else []
    inference += [s for s in _fbgemm_presets() if "schemes" in tasks and s not in inference]
    for scheme in inference:
        rows.append(_inference_row(model, name, batch, data, scheme, repeat, clock))
    if "six_presets" in tasks:
        names = _fbgemm_presets()
        q, t = _paired_medians(lambda: calibrate_many(model, data, names, ["fbgemm"], mode="graph"),
                               lambda: [torch_reference(model, data, s, "fbgemm") for s in names], repeat,
                               clock=clock)
        rows.append(BenchRow(name, batch, "six_presets", q, t))
    if "sensitivity" in tasks:
        rows.extend(_sensitivity_rows(model, name, batch, data, repeat, clock))
    return rows


def _fbgemm_presets() -> list[str]:
    """The presets torch's converted model can run under fbgemm (the baseline): not the xnnpack
    ones, whose qint8 activations fbgemm refuses (their runtime is ExecuTorch's delegate)."""
    return [s for s in SCHEMES if unrunnable(SCHEMES[s], "fbgemm") is None]


def _inference_row(model, name: str, batch: int, data: list[torch.Tensor], scheme: str,
                   repeat: int, clock: str) -> BenchRow:
    """qcal's integer engine vs torch's converted model under fbgemm, both calibrated alike."""
    qm = calibrate(model, data, scheme, "fbgemm", mode="graph")
    ref = torch_reference(model, data, scheme, "fbgemm")
    x = data[0]
    with quantized_engine("fbgemm"):
        q, t = _paired_medians(lambda: qm(x), lambda: ref(x), repeat, warmup=1, clock=clock)
    task = "int8_inference" if scheme == "fbgemm_default" else f"int8 {scheme}"
    return BenchRow(name, batch, task, q, t)


def _sensitivity_rows(model, name: str, batch: int, data: list[torch.Tensor], repeat: int,
                      clock: str) -> list[BenchRow]:
    """A sensitivity scan against one compare of one scheme (the baseline here is qcal's own
    compare, not torch)."""
    evals = [(x, None) for x in data[:1]]
    q, t = _paired_medians(lambda: sensitivity(model, data, evals, "fbgemm_default", "fbgemm"),
                           lambda: compare(model, data, evals, ["fbgemm_default"], ["fbgemm"]), repeat,
                           clock=clock)
    return [BenchRow(name, batch, "sensitivity_vs_compare", q, t)]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_bench(rows: Sequence[BenchRow], memory: Sequence[Any] = (), clock: str = "wall") -> str:
    """A table of the rows, the memory rows (``bench_memory.MemoryRow``), this process's peak
    memory, and, as the last line, the worst ratio."""
    lines = [f"CPU: {instruction_set()}; {torch.get_num_threads()} threads for qcal and torch; {clock} clock, "
             "interleaved runs, medians", engine_line()]
    if rows:
        df = pd.DataFrame([{"model": r.model, "batch": r.batch, "task": r.task,
                            "qcal_s": r.qcal_s, "torch_s": r.torch_s, "ratio": r.ratio} for r in rows])
        lines.append(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for m in memory:
        lines.append(f"peak RSS, six-preset compare of {m.model} (batch {m.batch}), {m.calib_batches} "
                     f"calibration batches, fresh process: {m.peak_mib:.0f} MiB")
    if len(memory) > 1:
        lines.append(f"peak RSS growth from {memory[0].calib_batches} to {memory[-1].calib_batches} batches: "
                     f"{memory[-1].peak_mib / memory[0].peak_mib - 1:+.1%}")
    lines.append(f"peak RSS of this process: {peak_rss_mib():.0f} MiB")
    if rows:
        worst = max(rows, key=lambda r: r.ratio)
        lines.append(f"worst ratio (qcal/torch): {worst.ratio:.2f} ({worst.model}, batch "
                     f"{worst.batch}, {worst.task})")
    return "\n".join(lines)
