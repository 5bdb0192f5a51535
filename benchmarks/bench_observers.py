"""Histogram observer: qcal's update + qparams against torch's HistogramObserver.

Run: python benchmarks/bench_observers.py [--batches 4] [--repeat 3]
Prints the seconds of each and the ratio qcal / torch (the target is <= 1.2), and checks
that both give the same scale and zero point.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch.ao.quantization.observer import HistogramObserver

import qcal
from qcal.observers import make_observer


def run_torch(batches: list[torch.Tensor], reduce_range: bool) -> tuple[float, float, tuple]:
    obs = HistogramObserver(reduce_range=reduce_range)
    t0 = time.perf_counter()
    for x in batches:
        obs(x)
    t1 = time.perf_counter()
    out = obs.calculate_qparams()
    return t1 - t0, time.perf_counter() - t1, out


def run_qcal(batches: list[torch.Tensor], reduce_range: bool) -> tuple[float, float, tuple]:
    obs = make_observer(qcal.QSpec("quint8", "per_tensor_affine", "histogram", reduce_range))
    t0 = time.perf_counter()
    for x in batches:
        obs.update(x)
    t1 = time.perf_counter()
    out = obs.qparams()
    return t1 - t0, time.perf_counter() - t1, out


def interleaved(repeat: int, batches: list[torch.Tensor], reduce_range: bool):
    """Best (update, qparams) seconds of each, runs alternating so that load hits both."""
    best = {"torch": [float("inf")] * 2, "qcal": [float("inf")] * 2}
    outs = {}
    for _ in range(repeat):
        for name, fn in (("torch", run_torch), ("qcal", run_qcal)):
            t_update, t_qparams, outs[name] = fn(batches, reduce_range)
            best[name] = [min(best[name][0], t_update), min(best[name][1], t_qparams)]
    return best, outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs="+", default=[32, 64, 56, 56])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    g = torch.Generator().manual_seed(0)
    data = {
        "relu": [torch.relu(torch.randn(args.shape, generator=g)) * (1 + 0.1 * i)
                 for i in range(args.batches)],
        "gaussian": [torch.randn(args.shape, generator=g) * (1 + 0.1 * i)
                     for i in range(args.batches)],
    }
    print(f"{args.batches} batches of {tuple(args.shape)}, best of {args.repeat}, "
          f"{torch.get_num_threads()} threads")
    for name, batches in data.items():
        for reduce_range in (True, False):
            best, outs = interleaved(args.repeat, batches, reduce_range)
            (s1, z1), (s2, z2) = outs["qcal"], outs["torch"]
            same = torch.equal(s1, s2) and torch.equal(z1, z2.long())
            tt, tq = sum(best["torch"]), sum(best["qcal"])
            print(f"{name:9s} reduce_range={reduce_range!s:5s} "
                  f"torch {best['torch'][0]:.4f}+{best['torch'][1]:.4f}s  "
                  f"qcal {best['qcal'][0]:.4f}+{best['qcal'][1]:.4f}s (update+qparams)  "
                  f"ratio {tq / tt:.3f}  identical={same}")


if __name__ == "__main__":
    main()
