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


def run_torch(batches: list[torch.Tensor], reduce_range: bool):
    obs = HistogramObserver(reduce_range=reduce_range)
    for x in batches:
        obs(x)
    return obs.calculate_qparams()


def run_qcal(batches: list[torch.Tensor], reduce_range: bool):
    obs = make_observer(qcal.QSpec("quint8", "per_tensor_affine", "histogram", reduce_range))
    for x in batches:
        obs.update(x)
    return obs.qparams()


def best_of(fn, repeat: int, *args):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs="+", default=[32, 64, 56, 56])
    args = parser.parse_args()
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
            t_torch, (s2, z2) = best_of(run_torch, args.repeat, batches, reduce_range)
            t_qcal, (s1, z1) = best_of(run_qcal, args.repeat, batches, reduce_range)
            same = torch.equal(s1, s2) and torch.equal(z1, z2.long())
            print(f"{name:9s} reduce_range={reduce_range!s:5s} torch {t_torch:.4f}s  "
                  f"qcal {t_qcal:.4f}s  ratio {t_qcal / t_torch:.3f}  identical={same}")


if __name__ == "__main__":
    main()
