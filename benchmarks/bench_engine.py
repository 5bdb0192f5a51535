"""qcal's integer engine against torch's fbgemm kernels and a plain int64 reference.

For a ResNet-shaped conv stack (3x3 convs 64ch@56x56, 128@28, 256@14, 512@7, batch 32) and a
linear-heavy stack, prints per layer: qcal's time (weights prepacked), torch's
``torch.ops.quantized.conv2d`` / ``linear`` time under the fbgemm engine (weights prepacked,
activations already quantized, channels_last as a previous quantized layer leaves them),
and a straightforward int64 reference (unfold + int64 matmul). Activations are <= 127, so
no int16 pair can saturate and every engine computes the same numbers (checked).

The last line holds the ratios (qcal time / torch time, qcal time / int64 time), summed
over each stack. Run: ``python benchmarks/bench_engine.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

import qcal.int8 as qi

warnings.filterwarnings("ignore", category=UserWarning)


def timeit(fn, reps: int) -> float:
    fn()  # warm-up (oneDNN primitive creation, caches)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)  # the machine may be shared: the fastest run is the least disturbed


def time_pair(fa, fb, reps: int) -> tuple[float, float]:
    """Interleaved timing of two functions (min over reps), so load changes hit both alike."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(reps):
        t = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t)
    return min(ta), min(tb)


def realistic_weights(shape, g) -> torch.Tensor:
    """int8 weights shaped like trained per-channel symmetric ones (bell-shaped, max ~127)."""
    w = torch.randn(shape, generator=g) * 38
    return w.round().clamp(-127, 127).to(torch.int8)


def int64_conv(x, za, w, padding) -> torch.Tensor:
    out = []
    for xb in x.split(4):  # keep the unfolded int64 matrix small
        cols = F.unfold(xb.double(), w.shape[2:], padding=padding).to(torch.int64) - za  # (B, C*k*k, L)
        acc = w.reshape(w.shape[0], -1).to(torch.int64) @ cols  # (B, O, L)
        out.append(acc)
    return torch.cat(out)


def bench_conv(n, layers, reps, g):
    rows = []
    for c, hw in layers:
        x = torch.randint(0, 128, (n, c, hw, hw), generator=g, dtype=torch.uint8)
        x = x.contiguous(memory_format=torch.channels_last)
        w = realistic_weights((c, c, 3, 3), g)
        sw = torch.rand(c, generator=g).double() * 0.01 + 0.002
        bias = torch.randn(c, generator=g)
        sa, za, so, zo = 0.05, 3, 0.8, 64
        packed = qi.pack_conv2d(w, sw, 0, bias, padding=1, backend="fbgemm")
        torch.backends.quantized.engine = "fbgemm"
        xq = torch._make_per_tensor_quantized_tensor(x, sa, za)
        wq = torch._make_per_channel_quantized_tensor(w, sw, torch.zeros(c, dtype=torch.long), 0)
        tp = torch.ops.quantized.conv2d_prepack(wq, bias, [1, 1], [1, 1], [1, 1], 1)
        ours = packed(x, sa, za, so, zo)
        ref = torch.ops.quantized.conv2d(xq, tp, so, zo).int_repr()
        assert torch.equal(ours, ref), "qcal and fbgemm disagree"
        t_q, t_t = time_pair(lambda: packed(x, sa, za, so, zo), lambda: torch.ops.quantized.conv2d(xq, tp, so, zo), reps)  # noqa: B023
        t_i = timeit(lambda: int64_conv(x, za, w, 1), 1)  # noqa: B023
        rows.append((f"conv3x3 {c}ch {hw}x{hw} N={n}", t_q, t_t, t_i))
    return rows


def bench_linear(m, layers, reps, g):
    rows = []
    for k, o in layers:
        x = torch.randint(0, 128, (m, k), generator=g, dtype=torch.uint8)
        w = realistic_weights((o, k), g)
        sw = torch.rand(o, generator=g).double() * 0.01 + 0.002
        bias = torch.randn(o, generator=g)
        sa, za, so, zo = 0.05, 3, 0.8, 64
        packed = qi.pack_linear(w, sw, 0, bias, backend="fbgemm")
        torch.backends.quantized.engine = "fbgemm"
        xq = torch._make_per_tensor_quantized_tensor(x, sa, za)
        wq = torch._make_per_channel_quantized_tensor(w, sw, torch.zeros(o, dtype=torch.long), 0)
        tp = torch.ops.quantized.linear_prepack(wq, bias)
        assert torch.equal(packed(x, sa, za, so, zo), torch.ops.quantized.linear(xq, tp, so, zo).int_repr())
        t_q, t_t = time_pair(lambda: packed(x, sa, za, so, zo), lambda: torch.ops.quantized.linear(xq, tp, so, zo), reps)  # noqa: B023
        t_i = timeit(lambda: (x.to(torch.int64) - za) @ w.to(torch.int64).T, 1)  # noqa: B023
        rows.append((f"linear {k}->{o} M={m}", t_q, t_t, t_i))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small configuration (batch 4, fewer reps)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per layer (min is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as torch starts)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n, reps, m = (4, 5, 256) if args.quick else (32, 9, 2048)
    reps = args.reps or reps
    conv_layers = [(64, 56), (128, 28), (256, 14), (512, 7)]
    lin_layers = [(768, 3072), (3072, 768), (1024, 1024), (512, 1000)]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, VNNI {qi.has_vnni()}")
    print(f"{'layer':32s} {'qcal ms':>9s} {'fbgemm ms':>10s} {'int64 ms':>10s} {'qcal/fbgemm':>12s} {'qcal/int64':>11s}")
    totals = {}
    for name, rows in (("conv", bench_conv(n, conv_layers, reps, g)), ("linear", bench_linear(m, lin_layers, reps, g))):
        for label, t_q, t_t, t_i in rows:
            print(f"{label:32s} {t_q * 1e3:9.2f} {t_t * 1e3:10.2f} {t_i * 1e3:10.1f} {t_q / t_t:12.2f} {t_q / t_i:11.4f}")
        tq, tt, ti = (sum(r[i] for r in rows) for i in (1, 2, 3))
        totals[name] = (tq / tt, tq / ti)
    print(
        f"ratios: conv_vs_fbgemm={totals['conv'][0]:.2f} conv_vs_int64={totals['conv'][1]:.4f} "
        f"linear_vs_fbgemm={totals['linear'][0]:.2f} linear_vs_int64={totals['linear'][1]:.4f}"
    )


if __name__ == "__main__":
    main()
