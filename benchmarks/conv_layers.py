"""Every convolution shape of ResNet-18 and MobileNetV2, qcal against torch's fbgemm kernels.

For each shape (batch 8 for ResNet-18's, 32 for MobileNetV2's), per-channel weights, a float
bias and full-range activations (codes 0..199, so int16 pairs saturate on a CPU without VNNI):
qcal's prepacked layer (``pack_conv2d``) and ``torch.ao.nn.quantized.Conv2d`` on the same codes,
interleaved, medians, process CPU time by default (a shared machine's queueing stays out).
Each row checks the outputs are identical and prints the ratio qcal / torch; the last lines
sum each network's layers (every shape once, times how often the network repeats it).

Which engine qcal ran is printed first: the native kernel, or (``QCAL_NATIVE=0``, or no C
compiler) the float engine with the pair-saturation emulation.

Run: ``python benchmarks/conv_layers.py [--threads 1] [--repeat 5] [--clock cpu|wall]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from qcal.int8 import native
from qcal.int8.cpu.flags import has_vnni
from qcal.int8.packed import pack_conv2d

warnings.filterwarnings("ignore", category=UserWarning)

# (in, out, size, kernel, stride, groups, how many times the network has it)
RESNET18 = [(3, 64, 224, 7, 2, 1, 1), (64, 64, 56, 3, 1, 1, 4), (64, 128, 56, 3, 2, 1, 1), (64, 128, 56, 1, 2, 1, 1),
            (128, 128, 28, 3, 1, 1, 3), (128, 256, 28, 3, 2, 1, 1), (128, 256, 28, 1, 2, 1, 1),
            (256, 256, 14, 3, 1, 1, 3), (256, 512, 14, 3, 2, 1, 1), (256, 512, 14, 1, 2, 1, 1),
            (512, 512, 7, 3, 1, 1, 3)]
MOBILENET_V2 = [(3, 32, 224, 3, 2, 1, 1), (32, 32, 112, 3, 1, 32, 1), (32, 16, 112, 1, 1, 1, 1),
                (16, 96, 112, 1, 1, 1, 1), (96, 96, 112, 3, 2, 96, 1), (96, 24, 56, 1, 1, 1, 1),
                (24, 144, 56, 1, 1, 1, 2), (144, 144, 56, 3, 1, 144, 1), (144, 24, 56, 1, 1, 1, 1),
                (144, 144, 56, 3, 2, 144, 1), (144, 32, 28, 1, 1, 1, 1), (32, 192, 28, 1, 1, 1, 3),
                (192, 192, 28, 3, 1, 192, 2), (192, 32, 28, 1, 1, 1, 2), (192, 192, 28, 3, 2, 192, 1),
                (192, 64, 14, 1, 1, 1, 1), (64, 384, 14, 1, 1, 1, 4), (384, 384, 14, 3, 1, 384, 4),
                (384, 64, 14, 1, 1, 1, 3), (384, 96, 14, 1, 1, 1, 1), (96, 576, 14, 1, 1, 1, 3),
                (576, 576, 14, 3, 1, 576, 2), (576, 96, 14, 1, 1, 1, 2), (576, 576, 14, 3, 2, 576, 1),
                (576, 160, 7, 1, 1, 1, 1), (160, 960, 7, 1, 1, 1, 3), (960, 960, 7, 3, 1, 960, 3),
                (960, 160, 7, 1, 1, 1, 2), (960, 320, 7, 1, 1, 1, 1), (320, 1280, 7, 1, 1, 1, 1)]
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def paired(fa, fb, repeat: int, clock) -> tuple[float, float]:
    fa(), fb()  # warm-up
    ta, tb = [], []
    for _ in range(repeat):
        for fn, out in ((fa, ta), (fb, tb)):
            start = clock()
            fn()
            out.append(clock() - start)
    return statistics.median(ta), statistics.median(tb)


def layer(c, o, size, k, stride, groups, batch, repeat, clock) -> tuple[float, float, int]:
    gen = torch.Generator().manual_seed(c * 1000 + o)
    x = torch.randint(0, 200, (batch, c, size, size), generator=gen, dtype=torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)  # as a previous quantized layer leaves it
    w = torch.randint(-127, 128, (o, c // groups, k, k), generator=gen, dtype=torch.int8)
    sw, bias = torch.rand(o, generator=gen) * 0.01 + 1e-3, torch.randn(o, generator=gen)
    so = 0.05 * (c // groups) * k
    ours = pack_conv2d(w, sw, 0, bias, stride=stride, padding=k // 2, groups=groups)
    qx = torch._make_per_tensor_quantized_tensor(x, 0.02, 3)
    qw = torch._make_per_channel_quantized_tensor(w, sw.double(), torch.zeros(o, dtype=torch.long), 0)
    conv = torch.ao.nn.quantized.Conv2d(c, o, k, stride=stride, padding=k // 2, groups=groups)
    conv.set_weight_bias(qw, bias)
    conv.scale, conv.zero_point = so, 7
    differing = int((ours(x, 0.02, 3, so, 7) != conv(qx).int_repr()).sum())
    tq, tt = paired(lambda: ours(x, 0.02, 3, so, 7), lambda: conv(qx), repeat, clock)
    return tq, tt, differing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clock", choices=CLOCKS, default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "fbgemm"
    engine = "native kernel" if native.available() else f"float engine + emulation ({native.why_unavailable()})"
    print(f"qcal engine: {engine}; CPU {'with' if has_vnni() else 'without'} VNNI; {args.threads} thread(s), "
          f"{args.clock} clock, medians of {args.repeat}")
    for name, shapes, batch in (("resnet18", RESNET18, 8), ("mobilenet_v2", MOBILENET_V2, 32)):
        total_q = total_t = 0.0
        for c, o, size, k, stride, groups, times in shapes:
            tq, tt, differing = layer(c, o, size, k, stride, groups, batch, args.repeat, CLOCKS[args.clock])
            total_q, total_t = total_q + times * tq, total_t + times * tt
            kind = "dw" if groups > 1 else f"{k}x{k}"
            print(f"{name:12s} {c:4d}->{o:4d} {size:3d}px {kind:3s} s{stride} x{times}: qcal {tq * 1e3:7.1f} ms  "
                  f"torch {tt * 1e3:7.1f} ms  ratio {tq / tt:5.2f}  differing {differing}")
        print(f"{name} (batch {batch}), every conv: qcal {total_q * 1e3:.0f} ms, torch {total_t * 1e3:.0f} ms, "
              f"ratio {total_q / total_t:.2f}")


if __name__ == "__main__":
    main()
