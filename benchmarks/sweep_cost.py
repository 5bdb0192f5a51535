"""What one evaluation of a sweep costs on a ResNet-18-shaped model, and a scan on N workers.

A sensitivity scan evaluates one model per (layer, mode); ResNet-18 has 21 conv/linear
layers, so 42 evaluations in two modes. This script measures one int8 evaluation of
``resnet18_like`` (fbgemm_default on fbgemm) on a fixed eval set, on ONE thread (as a
``dask worker --nthreads 1`` runs it), against the fp32 forward on the same set (the
baseline, measured in the same run), and the bytes a Dask sweep sends each worker once
(calibrated model + eval data + fp32 outputs). It then prints the scan's cost on 1 and 16
workers: ceil(42 / workers) rounds of one evaluation each, plus sending the shared inputs.

Run: ``python benchmarks/sweep_cost.py [--images 64] [--batch 32] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from qcal.calibration.calibrate import calibrate
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
    qm = calibrate(model, calib, "fbgemm_default", "fbgemm", mode="graph")
    layers = len(qm.quant_layers)
    outputs = [model(x) for x in batches]

    fp32_s = _median_s(lambda: [model(x) for x in batches], args.repeat)
    int8_s = _median_s(lambda: [qm(x) for x in batches], args.repeat)
    n_images = sum(len(x) for x in batches)
    model_bytes = _serialized_bytes({("fbgemm_default", "fbgemm"): qm})
    image_bytes = _serialized_bytes({"batches": [(x, None) for x in batches], "fp32_outputs": outputs}) / n_images
    evaluations = layers * len(MODES)
    print(f"resnet18_like, {n_images} images 224x224, batch {args.batch}, 1 thread, "
          f"median CPU seconds of {args.repeat}")
    print(f"fp32 forward: {fp32_s:.2f} s; one int8 evaluation (fbgemm_default): {int8_s:.2f} s "
          f"({int8_s / n_images * 1000:.0f} ms per image); ratio int8/fp32: {int8_s / fp32_s:.2f}")
    print(f"sent once per worker: calibrated model {model_bytes / 2**20:.1f} MiB "
          f"+ {image_bytes / 2**10:.0f} KiB per eval image (input + fp32 output)")
    print(f"sensitivity scan: {layers} conv/linear layers x {len(MODES)} modes = {evaluations} evaluations")
    for images in (n_images, 1000):
        per_eval = int8_s / n_images * images
        for workers in (1, 16):
            rounds = math.ceil(evaluations / workers)
            shared = model_bytes + image_bytes * images
            send = shared * workers / NETWORK_BYTES_PER_S if workers > 1 else 0.0
            total = rounds * per_eval + send
            print(f"  {images:5d} images, {workers:2d} workers: {rounds:2d} rounds x {per_eval:6.1f} s "
                  f"+ {send:5.1f} s sending = {total / 60:6.1f} min")


if __name__ == "__main__":
    main()
