"""Fuzz the native int8 kernel for a fixed time: random conv layers against torch's fbgemm kernels,
and random conv/linear layers on every backend against qcal's float engine.

Not a timed test and not part of CI (the tests in tests/int8/test_int8_native.py are); this
runs many more random cases than a test can afford and prints how many cases mismatched:

* ``torch``: random geometry (groups, depthwise with channel multiplier 1 or 2, kernels 1-7,
  strides, padding, dilation), full-range activations from several floors, per-channel or
  per-tensor (affine) weights, with or without bias, any activation and output zero point;
  qcal's ``pack_conv2d`` (fbgemm) against ``torch.ops.quantized.conv2d`` under the fbgemm engine.
  Shapes torch refuses are skipped. Also counts the layers that ran on the native kernel.
* ``engines``: fbgemm, qnnpack, ort, x86, onnx and q31; conv (grouped, depthwise) and linear
  (K up to 3000); float, int32 or no bias; uint8 or int8 outputs, ReLU; qcal's default route
  (the native kernel wherever it applies) against ``method="float"`` (the float engine with the
  pair-saturation emulation).

Run: ``python benchmarks/native_fuzz.py [--seconds 240] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import random
import time
import warnings

import torch

from qcal.int8 import native
from qcal.int8.packed import pack_conv2d, pack_linear

warnings.filterwarnings("ignore", category=UserWarning)


def _torch_case(rng: random.Random):
    g = rng.choice([1, 1, 2, 4, 8, "dw"])
    if g == "dw":
        c = rng.choice([8, 16, 24, 32, 48, 64])
        groups, cg, o = c, 1, c * rng.choice([1, 1, 2])
    else:
        cg = rng.choice([1, 2, 3, 4, 8, 16, 24])
        groups, c = g, cg * g
        o = groups * rng.choice([1, 2, 4, 8, 16])
    k, s, d = rng.choice([1, 2, 3, 5, 7]), rng.choice([1, 2]), rng.choice([1, 1, 2])
    p, hw = rng.choice([0, k // 2]), rng.choice([5, 9, 14])
    x = torch.randint(rng.choice([0, 100, 150]), 256, (2, c, hw, hw), dtype=torch.uint8)
    w = torch.randint(-128, 128, (o, cg, k, k), dtype=torch.int8)
    per_channel = rng.random() < 0.6
    sw = torch.rand(o) * 0.01 + 1e-3 if per_channel else 0.005
    zw = 0 if per_channel or rng.random() < 0.5 else rng.randint(-20, 20)
    bias = torch.randn(o) * 5 if rng.random() < 0.7 else None
    za, so, zo = rng.randint(0, 255), 10 ** rng.uniform(-1, 2), rng.randint(0, 255)
    try:
        xq = torch._make_per_tensor_quantized_tensor(x, 0.02, za)
        if per_channel:
            wq = torch._make_per_channel_quantized_tensor(w, sw.double(), torch.zeros(o, dtype=torch.long), 0)
        else:
            wq = torch._make_per_tensor_quantized_tensor(w, sw, zw)
        packed = torch.ops.quantized.conv2d_prepack(wq, bias, [s, s], [p, p], [d, d], groups)
        ref = torch.ops.quantized.conv2d(xq, packed, so, zo).int_repr()
    except RuntimeError:
        return None  # a shape torch refuses
    ours = pack_conv2d(w, sw, zw, bias, stride=s, padding=p, dilation=d, groups=groups)(x, 0.02, za, so, zo)
    return int((ours != ref).sum())


def _engines_case(rng: random.Random):
    backend = rng.choice(["fbgemm", "qnnpack", "ort", "x86", "onnx", "q31"])
    per_channel = rng.random() < 0.5 and backend != "qnnpack"
    affine = rng.random() < 0.4 and backend != "qnnpack"
    o, linear = rng.choice([1, 5, 16, 17, 33, 64]), rng.random() < 0.3
    if linear:
        shape, groups = (o, rng.choice([1, 3, 64, 130, 1200, 3000])), 1
    elif rng.random() < 0.3:  # depthwise
        k = rng.choice([1, 3, 5])
        shape, groups = (o, 1, k, k), o
    else:
        cg, k, groups = rng.choice([1, 3, 8, 16, 40]), rng.choice([1, 3, 5]), rng.choice([1, 1, 2])
        o = o * groups
        shape = (o, cg, k, k)
    w = torch.randint(-128, 128, shape, dtype=torch.int8)
    sw = torch.rand(o) * 0.02 + 1e-4 if per_channel else 0.0123
    zw = (torch.randint(-10, 10, (o,)) if per_channel else 3) if affine else 0
    bias = rng.choice([torch.randn(o) * 100, torch.randint(-2**24, 2**24, (o,), dtype=torch.int32), None])
    hi, za, so = (256 if rng.random() < 0.6 else 128), rng.randint(0, 255), 10 ** rng.uniform(-5, 3)
    zo = rng.choice([0, 77, 255]) if rng.random() < 0.7 else torch.tensor(rng.randint(-128, 127), dtype=torch.int8)
    relu = rng.random() < 0.3
    try:
        if linear:
            x = torch.randint(0, hi, (rng.choice([1, 7]), shape[1]), dtype=torch.uint8)
            fast, slow = (pack_linear(w, sw, zw, bias, backend=backend, method=m) for m in ("auto", "float"))
        else:
            x = torch.randint(0, hi, (2, shape[1] * groups, 9, 7), dtype=torch.uint8)
            x = x.contiguous(memory_format=torch.channels_last)
            geometry = {"stride": rng.choice([1, 2]), "padding": rng.choice([0, shape[2] // 2]), "groups": groups}
            fast, slow = (pack_conv2d(w, sw, zw, bias, backend=backend, method=m, **geometry) for m in ("auto", "float"))
        want = slow(x, 0.031, za, so, zo, relu=relu)
    except (ValueError, TypeError):
        return None  # settings the backend refuses (refusals are tested elsewhere)
    return int((fast(x, 0.031, za, so, zo, relu=relu) != want).sum())


def _run(name: str, case, seconds: float, rng: random.Random) -> None:
    calls = {False: 0, True: 0}  # native kernel calls: saturating, exact
    original = native.NativeConv._run

    def counting(self, *args, exact):
        calls[exact] += 1
        return original(self, *args, exact=exact)

    native.NativeConv._run = counting
    try:
        cases = mismatching = values = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            differing = case(rng)
            if differing is None:
                continue
            cases += 1
            mismatching += differing > 0
            values += differing
    finally:
        native.NativeConv._run = original
    print(f"{name}: {cases} cases, native kernel calls {calls[False]} saturating + {calls[True]} exact "
          f"({native.loaded_variant()} build), {mismatching} mismatching cases, {values} differing values")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="per fuzzer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.backends.quantized.engine = "fbgemm"
    print("native kernel:", "available" if native.available() else f"unavailable ({native.why_unavailable()})")
    _run("against torch's fbgemm conv2d", _torch_case, args.seconds, random.Random(args.seed))
    _run("native route against the float engine, six backends", _engines_case, args.seconds,
         random.Random(args.seed + 1))


if __name__ == "__main__":
    main()
