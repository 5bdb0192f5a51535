"""Peak memory of a whole six-preset comparison, each case in a fresh process.

``peak_rss(n_batches)`` runs ``qcal.compare`` of the ResNet-18 shape over all six presets in
a new Python process, with ``n_batches`` calibration batches generated on the fly (never
held together), and returns that process's peak resident memory. Statistics must not grow
with the number of batches: histograms are fixed-size and no activation is kept, so 8 and
64 batches should peak alike.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["MemoryRow", "OnTheFly", "memory_rows", "peak_rss"]


@dataclass(frozen=True)
class OnTheFly:
    """Re-iterable calibration data: ``n`` random batches made one at a time, the same on
    every pass (seeded), so no list of batches ever exists."""

    n: int
    shape: tuple[int, ...]
    seed: int = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.n):
            yield torch.randn(self.shape, generator=gen)

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class MemoryRow:
    """Peak RSS (MiB) of one comparison run in a fresh process."""

    model: str
    batch: int
    calib_batches: int
    peak_mib: float


def _child(model_name: str, n_batches: int, batch: int) -> None:
    """In the fresh process: compare six presets, print the peak RSS in MiB."""
    from qcal.analysis.bench import peak_rss_mib
    from qcal.analysis.compare import compare
    from qcal.zoo import zoo

    model = zoo.load(model_name)
    shape = (batch, *zoo.info(model_name).input_shape)
    evals = [(x, None) for x in OnTheFly(1, shape, seed=1)]
    compare(model, OnTheFly(n_batches, shape), evals, None, ["fbgemm"], mode="graph")
    print(f"{peak_rss_mib():.1f}")


def peak_rss(n_batches: int, *, model: str = "resnet18_like", batch: int = 4, threads: int | None = None) -> float:
    """Peak RSS in MiB of a six-preset comparison in a fresh Python process.

    Args:
        n_batches: calibration batches, generated on the fly.
        model: zoo name.
        batch: calibration batch size.
        threads: torch threads in the child (None: torch's default).
    """
    code = (f"import torch; torch.set_num_threads({threads or torch.get_num_threads()}); "
            f"from qcal.analysis.bench_memory import _child; _child({model!r}, {int(n_batches)}, {int(batch)})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory benchmark child failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return float(done.stdout.strip().splitlines()[-1])


def memory_rows(counts: tuple[int, ...] = (8, 64), *, model: str = "resnet18_like", batch: int = 4) -> list[MemoryRow]:
    """``peak_rss`` for each number of calibration batches."""
    return [MemoryRow(model, batch, n, peak_rss(n, model=model, batch=batch)) for n in counts]
