"""``qcal repair``: one scheme, plain and with each repair chain (equalize, correct_bias,
adaround), on a digits zoo model; see docs/repairs.md."""

from __future__ import annotations

import argparse

from qcal.cli.args import arg, command, write
from qcal.cli.decide import _digits
from qcal.cli.runs import _count, _table
from qcal.schemes import BACKENDS


def _repairs(text: str) -> list[str]:
    from qcal.repair.table import REPAIRS

    names = REPAIRS if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in REPAIRS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown repair {bad[0] if bad else text!r}; expected 'all' or a comma "
                                         f"list of: {', '.join(REPAIRS)}")
    return list(names)


@command(
    "repair",
    "one scheme plain and with each repair (equalize, correct_bias, adaround), side by side",
    arg("--model", default="digits_mobilenet", help="a digits zoo model"),
    arg("--scheme", default="per_tensor_symmetric",
        help="a preset name or a built scheme's text (e.g. 4-bit weights: "
             "'name=w4;w=per_tensor_symmetric/minmax/quant_min=-8/quant_max=7;a=per_tensor_affine/minmax')"),
    arg("--repairs", type=_repairs, default="all", help="'all' or a comma list of the repair chains"),
    arg("--relu6", choices=("keep", "bounded", "replace"), default="bounded", help="equalize's ReLU6 mode"),
    arg("--iterations", type=_count, default=1000, help="adaround's steps per layer"),
    arg("--samples", type=_count, default=256, help="adaround's samples"),
    arg("--seed", type=int, default=0, help="adaround's seed"),
    arg("--backend", default="fbgemm", choices=BACKENDS),
    arg("--batch-size", type=_count, default=128),
    arg("--eval-samples", type=_count, default=None, help="cap the test split's samples"),
    arg("--format", choices=("table", "csv", "json"), default="table"),
)
def repair_command(args: argparse.Namespace) -> int:
    from qcal.progress import TerminalProgress
    from qcal.repair.table import repair_table
    from qcal.scheme_text import parse_scheme

    model, calib, x, y = _digits(args.model, args.batch_size, args.eval_samples)
    scheme = parse_scheme(args.scheme) if "=" in args.scheme else args.scheme
    repairs = args.repairs if isinstance(args.repairs, list) else _repairs(args.repairs)
    table = repair_table(model, calib, x, y, scheme, args.backend, repairs, relu6=args.relu6,
                         iterations=args.iterations, samples=args.samples, seed=args.seed,
                         progress=TerminalProgress())
    write(_table(table, args.format))
    return 0
