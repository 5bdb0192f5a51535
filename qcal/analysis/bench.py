"""Benchmarks as ratios: qcal against torch's own pipeline, measured in the same process.

For each model and batch size:

* ``calib_minmax`` / ``calib_histogram``: ``qcal.calibrate`` vs torch's ``prepare_fx`` +
  the same calibration batches + ``convert_fx`` (per_tensor_affine and fbgemm_default);
* ``int8_inference``: qcal's integer engine vs torch's converted model under fbgemm;
* ``six_presets``: one qcal pass calibrating all six presets vs six torch calibrations.

Each cell is the median of ``repeat`` runs; a ratio below 1 means qcal is faster.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from qcal.analysis.reference import torch_reference
from qcal.calibration.calibrate import calibrate, calibrate_many
from qcal.schemes import SCHEMES
from qcal.zoo import datasets, zoo

__all__ = ["BenchRow", "bench", "format_bench"]

DEFAULT_MODELS = ("digits_cnn", "digits_mobilenet", "resnet18_like", "mobilenet_v2_like")


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


def _median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    tasks: Sequence[str] = ("calib_minmax", "calib_histogram", "int8_inference", "six_presets"),
    progress: Callable[[float, str], None] | None = None,
) -> list[BenchRow]:
    """Measure qcal against torch for each model, batch size and task.

    Args:
        models: zoo names (the 224x224 ones use random weights with realistic BN stats).
        batches: batch sizes.
        repeat: runs per cell; the median is kept.
        calib_batches: calibration batches per calibration.
        tasks: a subset of the four tasks.
    """
    report = progress or (lambda f, m: None)
    rows: list[BenchRow] = []
    cells = [(m, b) for m in models for b in batches]
    for i, (name, batch) in enumerate(cells):
        report(i / len(cells), f"{name} batch {batch}")
        rows.extend(_bench_cell(name, batch, repeat, calib_batches, tasks))
    report(1.0, "done")
    return rows


def _bench_cell(name: str, batch: int, repeat: int, calib_batches: int,
                tasks: Sequence[str]) -> list[BenchRow]:
    rows = []
    model = zoo.load(name)
    data = _inputs(name, batch, calib_batches)
    for task, scheme in (("calib_minmax", "per_tensor_affine"), ("calib_histogram", "fbgemm_default")):
        if task in tasks:
            q = _median_time(lambda s=scheme: calibrate(model, data, s, "fbgemm", mode="graph"), repeat)
            t = _median_time(lambda s=scheme: torch_reference(model, data, s, "fbgemm"), repeat)
            rows.append(BenchRow(name, batch, task, q, t))
    if "int8_inference" in tasks:
        qm = calibrate(model, data, "fbgemm_default", "fbgemm", mode="graph")
        ref = torch_reference(model, data, "fbgemm_default", "fbgemm")
        x = data[0]
        qm(x)  # warm-up, both sides
        prev = torch.backends.quantized.engine
        torch.backends.quantized.engine = "fbgemm"
        try:
            ref(x)
            t = _median_time(lambda: ref(x), repeat)
        finally:
            torch.backends.quantized.engine = prev
        q = _median_time(lambda: qm(x), repeat)
        rows.append(BenchRow(name, batch, "int8_inference", q, t))
    if "six_presets" in tasks:
        names = list(SCHEMES)
        q = _median_time(lambda: calibrate_many(model, data, names, ["fbgemm"], mode="graph"), repeat)
        t = _median_time(lambda: [torch_reference(model, data, s, "fbgemm") for s in names], repeat)
        rows.append(BenchRow(name, batch, "six_presets", q, t))
    return rows


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_bench(rows: Sequence[BenchRow]) -> str:
    """A table of the rows, the peak memory, and, as the last line, the worst ratio."""
    df = pd.DataFrame([{"model": r.model, "batch": r.batch, "task": r.task,
                        "qcal_s": r.qcal_s, "torch_s": r.torch_s, "ratio": r.ratio} for r in rows])
    lines = [df.to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    lines.append(f"peak RSS: {peak_rss_mib():.0f} MiB")
    if rows:
        worst = max(rows, key=lambda r: r.ratio)
        lines.append(f"worst ratio (qcal/torch): {worst.ratio:.2f} ({worst.model}, batch "
                     f"{worst.batch}, {worst.task})")
    return "\n".join(lines)
