"""The repairs' numbers (issue #26's "done means"), printed as a table.

- the depthwise-separable digits model with one dead channel and ReLU (tests/repair/
  repair_cases.py, trained here in seconds): fp32 and per-tensor symmetric accuracy before
  and after ``qcal.equalize``, and the largest float output change on the test split;
- ``digits_mobilenet`` (ReLU6, dead channels) under each relu6 mode;
- ``mobilenet_v2_like`` (random weights, no labels): top-1 agreement with fp32 and output
  cosine, before and after (``--quick`` skips it);
- ``qcal.correct_bias`` (empirical on the 200 calibration images, analytic) on every
  graph-mode digits model under per_tensor_symmetric, per_channel_symmetric, fbgemm_default;
- ``qcal.adaround`` (1000 iterations, 256 samples, seed 0) against round-to-nearest at 8 bits
  (and fbgemm_default) and with 4-bit weights (codes in [-8, 7]), with the model guard's decision.

Run: ``python benchmarks/repairs.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "repair"))

from repair_cases import trained_relu_mobilenet

import qcal
from qcal import datasets, zoo

SCHEMES = ("per_tensor_symmetric", "per_tensor_affine")


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return 100 * float((model(x).argmax(1) == y).float().mean())


def digits_rows(name: str, model, modes: tuple[str, ...]) -> None:
    digits = datasets.digits_splits()
    x, y = digits.test
    calib = datasets.calib_batches(digits.calib[0])
    plain = {s: _acc(qcal.calibrate(model, calib, s), x, y) for s in SCHEMES}
    print(f"{name}: fp32 {_acc(model, x, y):.2f}%, " + ", ".join(f"{s} {v:.2f}%" for s, v in plain.items()))
    for mode in modes:
        eq = qcal.equalize(model, calib, relu6=mode)
        with torch.no_grad():
            change = float((eq.model(x) - model(x)).abs().max())
        after = {s: _acc(qcal.calibrate(eq.model, calib, s), x, y) for s in SCHEMES}
        print(f"  equalize relu6={mode}: {len(eq.pairs)} pairs; equalized fp32 {_acc(eq.model, x, y):.2f}%; "
              f"largest output change: calib {eq.max_output_change:.2g}, test {change:.2g}; "
              + ", ".join(f"{s} {v:.2f}%" for s, v in after.items()))


def _agreement(model, ref_model, calib, x) -> tuple[float, float]:
    qm = qcal.calibrate(model, calib, "per_tensor_symmetric")
    with torch.no_grad():
        ref, out = ref_model(x), qm(x)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(1), out.flatten(1)).mean()
    return 100 * float((ref.argmax(1) == out.argmax(1)).float().mean()), float(cos)


def imagenet_rows() -> None:
    model = zoo.load("mobilenet_v2_like")
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, 3, 224, 224, generator=gen) for _ in range(2)]
    x = torch.randn(32, 3, 224, 224, generator=gen)
    agree, cos = _agreement(model, model, calib, x)
    print(f"mobilenet_v2_like per_tensor_symmetric: top-1 agreement {agree:.1f}%, cosine {cos:.4f}")
    for mode in ("keep", "bounded", "replace"):
        eq = qcal.equalize(model, calib, relu6=mode)
        agree, cos = _agreement(eq.model, eq.model, calib, x)
        print(f"  after equalize relu6={mode} ({len(eq.pairs)} pairs, output change {eq.max_output_change:.2g} of "
              f"{eq.output_magnitude:.2g}): agreement with its fp32 {agree:.1f}%, cosine {cos:.4f}")


def bias_rows() -> None:
    digits = datasets.digits_splits()
    x, y = digits.test
    calib = datasets.calib_batches(digits.calib[0])
    print("correct_bias (accuracy %: plain -> empirical / analytic; fp32 in brackets)")
    for name in ("digits_cnn", "digits_mobilenet", "digits_resnet", "digits_mlp"):
        model = zoo.load(name)
        for scheme in ("per_tensor_symmetric", "per_channel_symmetric", "fbgemm_default"):
            qm = qcal.calibrate(model, calib, scheme)
            emp, ana = qcal.correct_bias(qm, calib), qcal.correct_bias(qm)
            print(f"  {name} [{_acc(model, x, y):.2f}] {scheme}: {_acc(qm, x, y):.2f} -> {_acc(emp, x, y):.2f} / "
                  f"{_acc(ana, x, y):.2f}")
    eq = qcal.equalize(zoo.load("digits_mobilenet"), calib, relu6="bounded")
    qm = qcal.calibrate(eq.model, calib, "per_tensor_symmetric")
    emp = qcal.correct_bias(qm, calib)
    ana = qcal.correct_bias(qm, stats=eq.preactivation_stats)
    print(f"  digits_mobilenet equalize(bounded) per_tensor_symmetric: {_acc(qm, x, y):.2f} -> "
          f"{_acc(emp, x, y):.2f} / {_acc(ana, x, y):.2f}")


def _four_bit(qscheme: str) -> qcal.Scheme:
    return qcal.Scheme(f"w4_{qscheme}", qcal.QSpec("qint8", qscheme, quant_min=-8, quant_max=7),
                       qcal.SCHEMES["per_channel_symmetric"].activation)


def adaround_rows() -> None:
    digits = datasets.digits_splits()
    x, y = digits.test
    calib = datasets.calib_batches(digits.calib[0])
    mobilenet = zoo.load("digits_mobilenet")
    equalized = qcal.equalize(mobilenet, calib, relu6="bounded").model
    print("adaround (accuracy %: fp32, round-to-nearest -> adaround)")
    cases = [(n, zoo.load(n), s) for n in ("digits_cnn", "digits_mobilenet", "digits_resnet", "digits_mlp")
             for s in ("per_tensor_symmetric", "per_channel_symmetric", "fbgemm_default",
                       _four_bit("per_tensor_symmetric"), _four_bit("per_channel_symmetric"))]
    cases += [("digits_mobilenet + equalize(bounded)", equalized, s) for s in
              ("per_tensor_symmetric", _four_bit("per_tensor_symmetric"), _four_bit("per_channel_symmetric"))]
    for name, model, scheme in cases:
        nearest = _acc(qcal.calibrate(model, calib, scheme), x, y)
        said: list[str] = []
        learned = _acc(qcal.adaround(model, calib, scheme, progress=lambda f, m, said=said: said.append(m)), x, y)
        label = scheme if isinstance(scheme, str) else scheme.name
        print(f"  {name} {label}: fp32 {_acc(model, x, y):.2f}, {nearest:.2f} -> {learned:.2f}; {said[-2]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits models only")
    parser.add_argument("--only", choices=["equalize", "bias", "adaround"], help="one repair's numbers")
    args = parser.parse_args()
    if args.only in ("bias", "adaround"):
        {"bias": bias_rows, "adaround": adaround_rows}[args.only]()
        return
    digits_rows("dead-channel ReLU model", trained_relu_mobilenet(), ("keep",))
    digits_rows("digits_mobilenet", zoo.load("digits_mobilenet"), ("keep", "bounded", "replace"))
    if not args.quick:
        imagenet_rows()
    if args.only is None:
        bias_rows()
        adaround_rows()


if __name__ == "__main__":
    main()
