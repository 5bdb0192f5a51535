"""CLI subcommand ``export``: a calibrated zoo model as an ONNX QDQ file, optionally verified."""

from __future__ import annotations

import argparse
import sys

from qcal.cli.args import arg, command, write
from qcal.cli.runs import _CPU_ARG, _assumed_cpu, _count

__all__ = ["export_command"]


@command(
    "export",
    "calibrate a zoo model under one scheme or recipe and write it as an ONNX QDQ model (onnxruntime-ready)",
    arg("--model", default="digits_mobilenet", help="a zoo model name (graph mode)"),
    arg("--scheme", default="fbgemm_default", help="a preset name"),
    arg("--recipe", default=None,
        help="a recipe file (.toml/.json) instead of --scheme; its fp32 layers are written as float Conv/Gemm"),
    arg("-o", "--output", required=True, help="the .onnx file to write"),
    arg("--verify", action="store_true",
        help="run the file in onnxruntime on the held-out digits and count values differing from qcal's ort flavour"),
    arg("--eval-samples", type=_count, default=None, help="cap the held-out samples --verify runs"),
    _CPU_ARG,
)
def export_command(args: argparse.Namespace) -> int:
    from qcal.export.verify import export_zoo, verify_onnx
    from qcal.int8.backends.ort_fp32 import ort_fp32_layers, ort_fp32_notes
    from qcal.io.recipe_files import read_recipe
    from qcal.schemes import SCHEMES
    from qcal.zoo import zoo
    from qcal.zoo.datasets import digits_splits

    if args.model not in zoo.names():
        raise ValueError(f"unknown model {args.model!r}; expected one of: {', '.join(zoo.names())}")
    if args.recipe is not None:
        scheme = read_recipe(args.recipe)
    elif args.scheme in SCHEMES:
        scheme = args.scheme
    else:
        raise ValueError(f"unknown scheme {args.scheme!r}; expected one of: {', '.join(SCHEMES)}")
    qm, path = export_zoo(args.model, scheme, args.output)
    write(f"wrote {path} ({args.model}, {getattr(scheme, 'name', scheme)})")
    for note in ort_fp32_notes(qm.graph):
        write(f"note: {note}")
    if not args.verify:
        return 0
    x = digits_splits().test[0][: args.eval_samples]
    with _assumed_cpu(args.cpu):  # --cpu: qcal predicts onnxruntime on that CPU, this machine runs the file
        result = verify_onnx(path, qm, x)
    write(f"verify: {result}")
    unreproduced = [n for n, kind in ort_fp32_layers(qm.graph).items() if kind == "float Conv (not reproduced)"]
    if result.differing and unreproduced:
        print(f"qcal: the differing values come after the float Conv layers {', '.join(unreproduced)} "
              "(onnxruntime's own float kernels, not reproduced bit for bit)", file=sys.stderr)
    elif result.differing:
        why = f" made for {result.instruction_set} (--cpu)" if args.cpu else ""
        print(f"qcal: onnxruntime on this machine differs from qcal's ort prediction{why}", file=sys.stderr)
        return 1
    return 0
