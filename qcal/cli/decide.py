"""CLI subcommands that decide per layer: ``sensitivity`` and ``recommend`` (zoo models,
digits data: calibration split, test split for evaluation; ``recommend`` searches on the
first half of the test split and reports the second half as held out)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qcal.cli.args import arg, command, write
from qcal.cli.cluster import DASK_ARG, cluster_executor, report_sweep
from qcal.cli.runs import _choices, _count, _table
from qcal.schemes import BACKENDS, SCHEMES

_COMMON = (
    arg("--model", default="digits_mobilenet", help="a zoo name (python -m qcal compare --list-models)"),
    arg("--backend", default="fbgemm", choices=BACKENDS),
    arg("--batch-size", type=_count, default=128),
    arg("--eval-samples", type=_count, default=None, help="cap the test split's samples"),
    arg("--format", choices=("table", "csv", "json"), default="table"),
    DASK_ARG,
)


def _digits(model_name: str, batch_size: int, eval_samples: int | None) -> tuple[Any, Any, Any, Any]:
    """(model, calibration batches, test split x, test split y (the first ``eval_samples``))."""
    from qcal.zoo import datasets, zoo

    if zoo.info(model_name).data != "digits":
        raise ValueError(f"{model_name} has no evaluation data here; use a digits_* zoo model")
    model = zoo.load(model_name)
    splits = datasets.digits_splits()
    x, y = (t[:eval_samples] for t in splits.test)
    return model, datasets.calib_batches(splits.calib[0], batch_size=batch_size), x, y


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1 (0.005 = half a point), got {text!r}")
    return value


@command(
    "sensitivity",
    "per layer: the metric with only that layer int8, and with only that layer fp32",
    arg("--scheme", default="per_tensor_affine", choices=list(SCHEMES)),
    *_COMMON,
)
def sensitivity_command(args: argparse.Namespace) -> int:
    from qcal.analysis.sensitivity import sensitivity
    from qcal.progress import TerminalProgress
    from qcal.zoo import datasets

    model, calib, x, y = _digits(args.model, args.batch_size, args.eval_samples)
    with cluster_executor(args) as executor:
        rows = sensitivity(model, calib, datasets.batches(x, y, batch_size=args.batch_size), args.scheme,
                           args.backend, executor=executor, progress=TerminalProgress())
    report_sweep(rows.attrs.get("dask"))
    table = rows.assign(recipe=[r.name for r in rows["recipe"]])
    write(_table(table.drop(columns="recipe") if args.format == "table" else table, args.format))
    return 0


@command(
    "recommend",
    "search a per-layer recipe within --max-drop of fp32 with as few fp32 layers as found; save it",
    arg("--schemes", default="all", help="'all' or a comma list of candidate presets"),
    arg("--max-drop", type=_fraction, default=0.01, help="accepted drop against fp32, a fraction (0.01 = 1 point)"),
    arg("--max-fp32-layers", type=int, default=None),
    arg("--out", default="recipe.toml", help="where to save the recipe (.toml or .json)"),
    arg("--repairs", default="equalize,correct_bias,equalize+correct_bias",
        help="repair chains tried before any fp32 layer, cheapest first, or 'none'"),
    *_COMMON,
)
def recommend_command(args: argparse.Namespace) -> int:
    from qcal.analysis.recommend import recommend
    from qcal.cli.runs import _repair_chains
    from qcal.io.recipe_files import write_recipe
    from qcal.progress import TerminalProgress
    from qcal.zoo import datasets

    schemes = None if args.schemes == "all" else _choices(args.schemes, "scheme", SCHEMES, also="'all' or ")
    repairs = () if args.repairs == "none" else ["+".join(c) for c in _repair_chains(args.repairs)]
    model, calib, x, y = _digits(args.model, args.batch_size, args.eval_samples)
    half = len(x) // 2
    with cluster_executor(args) as executor:
        rec = recommend(model, calib, datasets.batches(x[:half], y[:half], batch_size=args.batch_size),
                        schemes=schemes, backend=args.backend, max_drop=args.max_drop,
                        max_fp32_layers=args.max_fp32_layers,
                        test_data=datasets.batches(x[half:], y[half:], batch_size=args.batch_size),
                        executor=executor, progress=TerminalProgress(), repairs=repairs)
    report_sweep(rec.dask)
    write(_table(rec.steps, args.format))
    if args.format == "table":
        data = rec.recipe.to_data()
        write(f"\nrecipe: default {data['default']}, layers {data['layers']}"
              + (f", repairs {data['repairs']}" if rec.recipe.repairs else ""))
        if rec.reason:
            write(f"repair: {rec.repair or 'none'}: {rec.reason}")
        write(f"{rec.metric} {rec.value:.4f} (fp32 {rec.fp32_value:.4f}, drop {rec.drop:.4f}) on the searched half; "
              f"held-out half {rec.test_value:.4f} (fp32 {rec.test_fp32_value:.4f}); "
              f"{len(rec.fp32_layers)} fp32 layers; {rec.evaluations} evaluations")
    path = write_recipe(rec.recipe, args.out)
    print(f"saved the recipe to {path} (python -m qcal compare --recipe {path})", file=sys.stderr)
    return 0
