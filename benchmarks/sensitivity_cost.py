"""What a sensitivity scan of ``resnet18_like`` costs, as a ratio to one ``compare`` of one scheme.

Both run in this process, on the same calibration batches and eval set, on ONE torch thread,
timed in CPU seconds of this process (``time.process_time``): on a shared machine the wall
clock counts other jobs' turns too. The baseline is ``qcal.compare`` of the same scheme and
backend (one calibration pass, one int8 evaluation, per-layer traces), measured in the same
run. The scan is 2 x 21 evaluations ("only" and "all_but" per conv/linear layer) from one
calibration pass.

Run: ``python benchmarks/sensitivity_cost.py [--images 8] [--calib-batches 2] [--scheme fbgemm_default]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import qcal
from qcal.zoo import zoo


def _cpu_s(fn):
    """(CPU seconds of this process for ``fn()``, its result)."""
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="eval set size (224x224 images)")
    parser.add_argument("--calib-batches", type=int, default=2, help="calibration batches of 4 images")
    parser.add_argument("--scheme", default="fbgemm_default")
    parser.add_argument("--backend", default="fbgemm")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = zoo.load("resnet18_like").eval()
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 224, 224, generator=gen) for _ in range(args.calib_batches)]
    evals = [(torch.randn(args.images, 3, 224, 224, generator=gen), None)]
    model(evals[0][0][:1])  # warm-up: oneDNN primitives, lazy imports
    compare_s, _ = _cpu_s(lambda: qcal.compare(model, calib, evals, [args.scheme], [args.backend]))
    scan_s, rows = _cpu_s(lambda: qcal.sensitivity(model, calib, evals, args.scheme, args.backend))
    layers = rows["layer"].nunique()
    print(f"resnet18_like, {args.images} eval images 224x224, {args.calib_batches} calibration batches "
          f"of 4, {args.scheme} on {args.backend}, 1 thread, CPU seconds of this process")
    print(f"compare, one scheme: {compare_s:.1f} s")
    print(f"sensitivity, {layers} layers x 2 modes = {len(rows)} evaluations: {scan_s:.1f} s")
    print(f"ratio sensitivity / compare: {scan_s / compare_s:.2f} (goal: under 3)")


if __name__ == "__main__":
    main()
