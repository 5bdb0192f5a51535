"""The bench's rows and timing: ``BenchRow``, the clocks, interleaved paired medians, and the
names of what ran on each side (``instruction_set``, ``qcal_kernel``); ``qcal.analysis.bench``
measures with them, ``qcal.analysis.bench_ort`` too (its ort tasks)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from qcal.int8 import native
from qcal.int8.cpu.flags import has_vnni
from qcal.int8.cpu.isa import assumed_cpu

__all__ = ["CLOCKS", "BenchRow", "instruction_set", "qcal_kernel"]


def instruction_set() -> str:
    """The CPU's vector instruction set as torch reports it, and whether it has VNNI (which
    changes torch's int8 speed and FBGEMM's saturation), e.g. "AVX2, no VNNI"; with the
    FBGEMM kernels ``FBGEMM_ENABLE_INSTRUCTIONS`` lowers torch's to, e.g. "AVX512, VNNI; FBGEMM AVX2"."""
    found = f"{torch.backends.cpu.get_cpu_capability()}, {'VNNI' if has_vnni() else 'no VNNI'}"
    forced = os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").strip()
    return f"{found}; FBGEMM {forced.upper()}" if forced else found


def qcal_kernel() -> str:
    """The integer kernel qcal's layers run in this process: "<variant> native" (e.g.
    "avx512_vnni native") or "float engine" (no native kernel: ``engine_line`` says why), with
    the FBGEMM arithmetic it computes where that was chosen (``QCAL_CPU``,
    ``FBGEMM_ENABLE_INSTRUCTIONS``, or off Linux x86), e.g. "avx512_vnni native, FBGEMM avx2 arithmetic"."""
    kernel = f"{native.loaded_variant()} native" if native.available() else "float engine"
    cpu = assumed_cpu()
    chosen = cpu.source != "/proc/cpuinfo" or os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").strip()
    return f"{kernel}, FBGEMM {cpu.gemm_isa} arithmetic" if chosen else kernel


@dataclass(frozen=True)
class BenchRow:
    """One measured comparison: medians in seconds and their ratio (qcal / the baseline).

    ``torch_s`` is the baseline's median (``baseline``: "torch", "onnxruntime", or "qcal compare"
    for the sensitivity row); ``isa`` the instruction set the baseline's kernels ran, ``kernel``
    qcal's kernel; ``differing`` (ort rows) the output values that differ from the baseline's,
    checked once outside the timing; ``skipped`` why the cell was not measured (times NaN).
    """

    model: str
    batch: int
    task: str
    qcal_s: float
    torch_s: float
    isa: str = ""
    kernel: str = ""
    baseline: str = "torch"
    differing: int | None = None
    skipped: str = ""

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
