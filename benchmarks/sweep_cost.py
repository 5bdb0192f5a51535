"""What one evaluation of a sweep costs on a ResNet-18-shaped model, and a scan on N workers.

A sensitivity scan evaluates one model per (layer, mode); ResNet-18 has 21 conv/linear
layers, so 42 evaluations in two modes. This script measures one int8 evaluation of
``resnet18_like`` (fbgemm_default on fbgemm) on a fixed eval set, on ONE thread (as a
``dask worker --nthreads 1`` runs it), against the fp32 forward on the same set (the
baseline, measured in the same run), and the bytes a Dask sweep sends: each worker once
the calibrated pass (``SharedEval``: statistics, float model, folded graph; no calibration
data) plus the eval data and fp32 outputs, and each job its (recipe, layer). It then prints
the scan's cost on 1 and 16 workers: every job on one, or ceil(42 / workers) rounds of the slowest job, plus
sending the shared inputs (an upper bound: every copy counted as leaving one machine).

Run: ``python benchmarks/sweep_cost.py [--images 64] [--batch 32] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch

from qcal.analysis.sensitivity import sensitivity_recipes
from qcal.analysis.sweep import SharedEval, score_jobs
from qcal.calibration.calibrate import Calibrated
from qcal.int8.cpu.isa import assumed_cpu
from qcal.schemes import SCHEMES
from qcal.zoo import zoo

MODES = ("only", "all_but")
NETWORK_BYTES_PER_S = 110e6  # 1 Gbit/s Ethernet, what a small team's machines share


def _median_s(fn, repeat: int) -> float:
    """Median CPU seconds of ``fn`` on this one thread: what an idle core would take. CPU time,
    not wall time, because on a shared machine the wall clock counts other jobs' turns too."""
    fn()  # warm-up: prepacking, oneDNN primitives
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def _serialized_bytes(obj) -> int:
    """What Dask puts on the wire for ``obj``."""
    from distributed.protocol.serialize import serialize_bytelist

    return sum(memoryview(f).nbytes for f in serialize_bytelist(obj))


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="eval set size (224x224 images)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = zoo.load("resnet18_like").eval()
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, 3, 224, 224, generator=gen) for _ in range(4)]
    batches = [torch.randn(args.batch, 3, 224, 224, generator=gen)
               for _ in range(math.ceil(args.images / args.batch))]
    scheme = SCHEMES["fbgemm_default"]
    calibrated = Calibrated(model, calib, lambda names: list(sensitivity_recipes(names, scheme).values()),
                            mode="graph")
    recipes = sensitivity_recipes(calibrated.layers, scheme)
    qm = calibrated.build(scheme, "fbgemm")
    layers = len(calibrated.layers)
    outputs = [model(x) for x in batches]
    state = calibrated.without_data()
    shared = SharedEval(state, "fbgemm", [(x, None) for x in batches], outputs, False)
    mid = calibrated.layers[layers // 2]
    fp32_s = _median_s(lambda: [model(x) for x in batches], args.repeat)
    int8_s = _median_s(lambda: [qm(x) for x in batches], args.repeat)
    # a scan's jobs as a worker runs them (build from the shared pass, evaluate, SQNR trace)
    only_s = _median_s(lambda: score_jobs(shared, [(recipes[(mid, "only")], mid)]), args.repeat)
    all_but_s = _median_s(lambda: score_jobs(shared, [(recipes[(mid, "all_but")], None)]), args.repeat)
    n_images = sum(len(x) for x in batches)
    model_bytes = _serialized_bytes(SharedEval(state, "fbgemm", [], [], False))
    image_bytes = (_serialized_bytes(shared) - model_bytes) / n_images
    job_bytes = max(_serialized_bytes((score_jobs, [(r, layer if mode == "only" else None)], assumed_cpu()))
                    for (layer, mode), r in recipes.items())
    print(f"resnet18_like, {n_images} images 224x224, batch {args.batch}, 1 thread, "
          f"median CPU seconds of {args.repeat}; CPU {assumed_cpu().describe()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"fp32 forward: {fp32_s:.2f} s; int8 forward (fbgemm_default, every layer): {int8_s:.2f} s "
          f"({int8_s / n_images * 1000:.0f} ms per image); ratio int8/fp32: {int8_s / fp32_s:.2f}")
    print(f"scan jobs ({mid}): 'only' {only_s:.2f} s, 'all_but' {all_but_s:.2f} s "
          f"({all_but_s / n_images * 1000:.0f} ms per image)")
    print(f"sent once per worker: calibrated pass {model_bytes / 2**20:.1f} MiB "
          f"+ {image_bytes / 2**10:.0f} KiB per eval image (input + fp32 output); "
          f"per job at most {job_bytes} bytes")
    print(f"sensitivity scan: {layers} conv/linear layers x {len(MODES)} modes = {layers * len(MODES)} evaluations")
    for images in (n_images, 1000):
        scale = images / n_images
        for workers in (1, 16):
            # one worker runs every job; on many, each round waits for its slowest job (an "only" job, with its SQNR trace, since saturation is localised)
            rounds = math.ceil(layers * len(MODES) / workers)
            compute = layers * (only_s + all_but_s) * scale if workers == 1 else rounds * max(only_s, all_but_s) * scale
            send = (model_bytes + image_bytes * images) * workers / NETWORK_BYTES_PER_S if workers > 1 else 0.0
            print(f"  {images:5d} images, {workers:2d} workers: {rounds:2d} rounds, {compute:7.1f} s computing "
                  f"+ {send:5.1f} s sending = {(compute + send) / 60:6.1f} min")

if __name__ == "__main__":
    main()
