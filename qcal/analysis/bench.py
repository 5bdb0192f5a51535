"""Benchmarks as ratios: qcal against torch's own pipeline, measured in the same process.

For each model and batch size:

* ``calib_minmax`` / ``calib_histogram``: ``qcal.calibrate`` vs torch's ``prepare_fx`` +
  the same calibration batches + ``convert_fx`` (per_tensor_affine and fbgemm_default);
* ``int8_inference``: qcal's integer engine vs torch's converted model under fbgemm;
* ``six_presets``: one qcal pass calibrating all six presets vs six torch calibrations;
* ``schemes``: int8 inference under each of the six presets (``int8 <scheme>``);
* ``sensitivity``: a per-layer sensitivity scan against one ``compare`` of one scheme
  (qcal against qcal; only where ``qcal.analysis.sensitivity`` exists);
* ``ort``: qcal's "ort" flavour vs onnxruntime running the file qcal exports
  (``qcal.export.onnx``), fbgemm_default, with a count of differing output values checked
  once outside the timing; ``ort_schemes``: the same under each preset (``ort <scheme>``);
  a preset the export or onnxruntime cannot run is a skipped row saying why (``bench_ort``).

Each row names what ran on each side: ``isa``, the baseline's instruction set (torch's
``get_cpu_capability()`` and VNNI, or the MLAS int8 kernels of this machine's onnxruntime),
and ``kernel``, qcal's (the native kernel's loaded variant, or "float engine"), taken in the
process that timed the row.

qcal and torch are timed interleaved (one run of each in turn), in this process, with the
same thread count; each cell keeps the medians of ``repeat`` runs, and a ratio below 1 means
qcal is faster. Warm-up runs are kept out of the medians. Peak memory of a whole comparison
is measured in fresh subprocesses (``bench_memory.py``).
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import pandas as pd
import torch

from qcal.analysis.bench_rows import CLOCKS, BenchRow, _paired_medians, instruction_set, qcal_kernel
from qcal.analysis.cluster import run_sweep
from qcal.analysis.compare import compare
from qcal.analysis.reference import quantized_engine, torch_reference
from qcal.analysis.sensitivity import sensitivity
from qcal.calibration.calibrate import calibrate, calibrate_many
from qcal.int8 import native
from qcal.runnable import unrunnable
from qcal.schemes import SCHEMES
from qcal.zoo import datasets, zoo

__all__ = ["TASKS", "BenchRow", "bench", "format_bench", "instruction_set", "qcal_kernel"]

DEFAULT_MODELS = ("digits_cnn", "digits_mobilenet", "resnet18_like", "mobilenet_v2_like")
TASKS = ("calib_minmax", "calib_histogram", "int8_inference", "six_presets", "schemes", "sensitivity", "ort",
         "ort_schemes")
DEFAULT_TASKS = TASKS[:4]


def engine_line() -> str:
    """Which integer engine qcal ran, and what finding or building it cost (kept out of the medians)."""
    if not native.available():
        return f"qcal int8 engine: float engine + saturation emulation (native kernel: {native.why_unavailable()})"
    return (f"qcal int8 engine: native kernel, {native.loaded_variant()} build, found or built and loaded in "
            f"{native.load_seconds():.2f} s before any timing (not in the medians)")


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
            rows.append(_row(name, batch, task, q, t))
    inference = ["fbgemm_default"] if "int8_inference" in tasks else []
    inference += [s for s in _fbgemm_presets() if "schemes" in tasks and s not in inference]
    for scheme in inference:
        rows.append(_inference_row(model, name, batch, data, scheme, repeat, clock))
    if "six_presets" in tasks:
        names = _fbgemm_presets()
        q, t = _paired_medians(lambda: calibrate_many(model, data, names, ["fbgemm"], mode="graph"),
                               lambda: [torch_reference(model, data, s, "fbgemm") for s in names], repeat,
                               clock=clock)
        rows.append(_row(name, batch, "six_presets", q, t))
    if "sensitivity" in tasks:
        rows.extend(_sensitivity_rows(model, name, batch, data, repeat, clock))
    ort_schemes = _ort_schemes(tasks)
    if ort_schemes:
        from qcal.analysis.bench_ort import ort_bench_rows  # imports onnx only when asked

        rows.extend(ort_bench_rows(model, name, batch, data, repeat, clock, ort_schemes))
    return rows


def _row(name: str, batch: int, task: str, q: float, t: float, baseline: str = "torch") -> BenchRow:
    """A measured row against torch (or qcal's own compare), naming both sides' kernels."""
    isa = instruction_set() if baseline == "torch" else qcal_kernel()
    return BenchRow(name, batch, task, q, t, isa=isa, kernel=qcal_kernel(), baseline=baseline)


def _ort_schemes(tasks: Sequence[str]) -> list[str]:
    """The presets the ort tasks run: fbgemm_default for ``ort``, every preset for ``ort_schemes``."""
    picked = ["fbgemm_default"] if "ort" in tasks else []
    return picked + [s for s in SCHEMES if "ort_schemes" in tasks and s not in picked]


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
    return _row(name, batch, task, q, t)


def _sensitivity_rows(model, name: str, batch: int, data: list[torch.Tensor], repeat: int,
                      clock: str) -> list[BenchRow]:
    """A sensitivity scan against one compare of one scheme (the baseline here is qcal's own
    compare, not torch)."""
    evals = [(x, None) for x in data[:1]]
    q, t = _paired_medians(lambda: sensitivity(model, data, evals, "fbgemm_default", "fbgemm"),
                           lambda: compare(model, data, evals, ["fbgemm_default"], ["fbgemm"]), repeat,
                           clock=clock)
    return [_row(name, batch, "sensitivity_vs_compare", q, t, baseline="qcal compare")]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_bench(rows: Sequence[BenchRow], memory: Sequence[Any] = (), clock: str = "wall") -> str:
    """A table of the measured rows (each naming its baseline, the baseline's instruction set
    and qcal's kernel; a ``differing`` column where some row checked its outputs), the skipped
    rows and why, the memory rows (``bench_memory.MemoryRow``), this process's peak memory,
    and, last, the worst ratio against each baseline."""
    ort = " (onnxruntime: as many intra- and inter-op threads)" if any(r.baseline == "onnxruntime" for r in rows) else ""
    lines = [f"CPU: {instruction_set()}; {torch.get_num_threads()} threads for qcal and torch{ort}; {clock} clock, "
             "interleaved runs, medians", engine_line()]
    measured = [r for r in rows if not r.skipped]
    if measured:
        lines.append(_table(measured))
    skipped: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        if r.skipped:
            skipped.setdefault((r.model, r.task, r.skipped), []).append(r.batch)
    lines += [f"skipped {model} {task} (batch {', '.join(map(str, b))}): {why}"
              for (model, task, why), b in skipped.items()]
    for m in memory:
        lines.append(f"peak RSS, six-preset compare of {m.model} (batch {m.batch}), {m.calib_batches} "
                     f"calibration batches, fresh process: {m.peak_mib:.0f} MiB")
    if len(memory) > 1:
        lines.append(f"peak RSS growth from {memory[0].calib_batches} to {memory[-1].calib_batches} batches: "
                     f"{memory[-1].peak_mib / memory[0].peak_mib - 1:+.1%}")
    lines.append(f"peak RSS of this process: {peak_rss_mib():.0f} MiB")
    for baseline in dict.fromkeys(r.baseline for r in measured):
        worst = max((r for r in measured if r.baseline == baseline), key=lambda r: r.ratio)
        lines.append(f"worst ratio (qcal/{baseline}): {worst.ratio:.2f} ({worst.model}, batch "
                     f"{worst.batch}, {worst.task})")
    return "\n".join(lines)


def _table(rows: Sequence[BenchRow]) -> str:
    """The measured rows as text, medians in milliseconds: ``base_ms`` is the baseline's (``vs`` names it)."""
    checked = any(r.differing is not None for r in rows)
    df = pd.DataFrame([{"model": r.model, "batch": r.batch, "task": r.task, "qcal_ms": r.qcal_s * 1e3,
                        "base_ms": r.torch_s * 1e3, "ratio": r.ratio, "vs": r.baseline, "isa": r.isa,
                        "kernel": r.kernel,
                        **({"differing": "" if r.differing is None else str(r.differing)} if checked else {})}
                       for r in rows])
    return df.to_string(index=False, float_format=lambda v: f"{v:.4g}")  # 4 digits, the smallest times too
