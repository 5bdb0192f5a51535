"""CLI subcommands for comparisons and saved runs: ``compare``, ``runs``, ``report``, ``bench``.

Every table printed here is a frame the dashboard shows, produced by the same qcal call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from qcal.cli.args import arg, command, write
from qcal.cli.cluster import DASK_ARG, cluster_executor, report_sweep
from qcal.schemes import BACKENDS, SCHEMES

_STORE_ARG = arg("--store", default=None,
                 help="run store: a file path or sqlite:/// URL (default: $QCAL_STORE or data/runs.sqlite)")
_CPU_ARG = arg("--cpu", default=None, metavar="ISA",
               help="x86 instruction set to emulate for fbgemm/x86: avx2, avx512, avx512_vnni, ... "
                    "(default: $QCAL_CPU, else this machine's)")


@contextmanager
def _assumed_cpu(isa: str | None) -> Iterator[str]:
    """``--cpu`` as QCAL_CPU for the command (restored after); yields the line naming the CPU."""
    from qcal.int8.cpu.isa import ENV_VAR, assumed_cpu

    before = os.environ.get(ENV_VAR)
    if isa:
        os.environ[ENV_VAR] = assumed_cpu(isa).isa  # checked: a bad name raises ValueError
    try:
        yield f"x86 CPU assumed for fbgemm/x86 kernels: {assumed_cpu().describe()}"
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def _count(text: str) -> int:
    """A positive whole number (argparse type): the message names the bad value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def _counts(text: str, what: str) -> list[int]:
    try:
        return [_count(t) for t in _csv(text)]
    except argparse.ArgumentTypeError:
        raise ValueError(f"{what} must be a comma list of positive whole numbers, got {text!r}") from None


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _table(df: pd.DataFrame, fmt: str = "table") -> str:
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", indent=1)
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        return df.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def _choices(text: str, what: str, valid: Any, also: str = "") -> list[str]:
    """A comma list of names, each checked against ``valid`` (the message lists them)."""
    names = _csv(text)
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ValueError(f"unknown {what} {(unknown or [text])[0]!r}; expected {also}a comma list of: "
                         f"{', '.join(valid)}")
    return names


def _schemes(text: str | None, built: list[str] | None = None, repairs: str | None = None) -> list[Any] | None:
    """Presets from ``--schemes`` (each optionally ``+repair``: "per_tensor_symmetric+equalize"),
    the schemes built with ``--scheme TEXT``, then each plain one with each ``--repairs`` chain."""
    from qcal.recipes import Recipe
    from qcal.repair.apply import chain_recipe, split_repairs
    from qcal.scheme_text import parse_scheme

    built_schemes = [parse_scheme(t) for t in built or []]
    by_name = {s.name: s for s in built_schemes}
    if len(by_name) < len(built_schemes):
        raise ValueError("two --scheme texts carry the same name; give each its own name=...")
    items = [] if text is None and built_schemes else list(SCHEMES) if text in (None, "all") else _csv(text)
    bases = [split_repairs(item) for item in items]
    if text not in (None, "all"):
        _choices(",".join(b for b, _ in bases) or text, "scheme", [*SCHEMES, *by_name], also="'all' or ")
    clash = set(by_name) & {b for b, _ in bases if b in SCHEMES}
    if clash:
        raise ValueError(f"--scheme name {sorted(clash)[0]!r} is a preset's; give the built scheme another name=...")
    specs = [chain_recipe(by_name.get(b, b), names) if names else by_name.get(b, SCHEMES.get(b)) for b, names in bases]
    specs += [s for s in built_schemes if s not in specs]
    chains = _repair_chains(repairs) if repairs else []
    if not chains and not built_schemes and text in (None, "all"):
        return None  # every preset, each *_default on its own engine
    plain = [s for s in specs if not isinstance(s, Recipe)]
    return [*specs, *(chain_recipe(s, chain) for s in plain for chain in chains)]


def _repair_chains(text: str) -> list[tuple[str, ...]]:
    """``--repairs equalize,equalize+correct_bias``: each chain's repair names (checked)."""
    from qcal.recipes import REPAIR_PARAMETERS

    chains = [tuple(n.strip() for n in chain.split("+")) for chain in _csv(text)]
    bad = [n for chain in chains for n in chain if n not in REPAIR_PARAMETERS]
    if bad or not chains:
        raise ValueError(f"unknown repair {(bad or [text])[0]!r}; expected a comma list of chains of "
                         f"{', '.join(REPAIR_PARAMETERS)} joined by '+' (e.g. equalize,equalize+correct_bias)")
    return chains


def _backends(text: str | None) -> list[str] | None:
    return None if text is None else _choices(text, "backend", BACKENDS)


def _user_comparison(args: argparse.Namespace, schemes: Any, backends: Any, progress: Any,
                     executor: Any) -> Any:
    """compare on a user's model (module:factory) and data file."""
    # imported here, not at the top: `qcal --help` and usage errors must not wait for torch
    import torch

    from qcal.analysis.compare import compare
    from qcal.io.user_models import load_user_model
    from qcal.store.runs import environment, utc_now
    from qcal.zoo import datasets

    if not args.data:
        raise ValueError("a module:factory model needs --data FILE (.pt, .npz or .safetensors with inputs, optionally labels)")
    model = load_user_model(args.model, args.state_dict)
    x, y = datasets.load_tensors(args.data)
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x).reshape(len(x), -1)
        raise ValueError(f"{args.data}: inputs hold {int(bad.sum())} NaN or Inf values in "
                         f"{int(bad.any(1).sum())} of {len(x)} samples; clean or drop those samples")
    n_calib = min(args.calib_samples or 256, max(len(x) // 2, 1))
    calib, x_eval = x[:n_calib], x[n_calib:]
    y_eval = None if y is None else y[n_calib:]
    if len(x_eval) == 0:
        raise ValueError(f"{args.data} holds {len(x)} samples: too few to calibrate on some and evaluate on the rest")
    if args.eval_samples:
        x_eval = x_eval[: args.eval_samples]
        y_eval = None if y_eval is None else y_eval[: args.eval_samples]
    meta = {"model": args.model, "model_source": args.model,
            "data_description": f"{args.data}: {n_calib} calibration, {len(x_eval)} evaluation samples",
            "data_fingerprint": datasets.fingerprint(calib, x_eval, y_eval),
            "created": utc_now(), **environment()}
    return compare(model, datasets.calib_batches(calib, batch_size=args.batch_size),
                   datasets.batches(x_eval, y_eval, batch_size=args.batch_size), schemes, backends,
                   executor=executor, progress=progress, meta=meta)


@command(
    "compare",
    "calibrate a model under several schemes, run each in int8, print and save the comparison",
    arg("--model", default="digits_mobilenet",
        help="a zoo or registered name (see --list-models; $QCAL_MODELS registers a team's "
             "models) or module:factory for your own model"),
    arg("--state-dict", default=None, help="weights for a module:factory model (loaded weights_only)"),
    arg("--data", default=None, help="your data file (.pt/.npz/.safetensors): inputs, optional labels"),
    arg("--schemes", default=None,
        help="'all' or a comma list of preset names, each optionally followed by repairs "
             "(per_tensor_symmetric+equalize+correct_bias) (default: all, or none when --scheme is given)"),
    arg("--scheme", action="append", default=None, metavar="TEXT",
        help="a built scheme, repeatable: e.g. 'name=p999;w=per_channel_symmetric/minmax;"
             "a=per_tensor_affine/percentile:99.9' (grammar in the README)"),
    arg("--recipe", action="append", default=[], help="a recipe file (.toml/.json): one more column; repeatable"),
    arg("--repairs", default=None, metavar="CHAINS",
        help="for every scheme, one more column per repair chain, e.g. 'equalize,equalize+correct_bias' "
             "(labelled 'per_tensor_symmetric + equalize'; a single scheme takes one as "
             "--schemes per_tensor_symmetric+equalize); settings in docs/repairs.md"),
    arg("--backends", default=None,
        help="comma list of fbgemm,qnnpack,onnx,q31,x86 (default: each *_default preset on its own engine, the rest on fbgemm)"),
    _CPU_ARG,
    arg("--eval-samples", type=_count, default=None, help="cap the evaluation samples"),
    arg("--calib-samples", type=_count, default=None,
        help="calibration samples: the first N of the model's calibration set (default: all), "
             "or of --data (default 256)"),
    arg("--batch-size", type=_count, default=128),
    arg("--title", default="", help="a title for the saved run"),
    arg("--no-save", action="store_true", help="print only; do not save a run"),
    arg("--layers", type=_count, default=3, help="worst layers shown per scheme"),
    arg("--format", choices=("table", "csv", "json"), default="table"),
    arg("--list-models", action="store_true",
        help="list the zoo and registered models (registry problems on stderr) and exit"),
    DASK_ARG,
    _STORE_ARG,
)
def compare_command(args: argparse.Namespace) -> int:
    with _assumed_cpu(args.cpu) as cpu_line:
        return _compare(args, cpu_line)


def _compare(args: argparse.Namespace, cpu_line: str) -> int:
    # imported here, not at the top: `qcal --help` and usage errors must not wait for torch
    from qcal.progress import TerminalProgress
    from qcal.reporting.report import conclusions, worst_layers
    from qcal.store import Store
    from qcal.store.zoo_runs import compare_zoo
    from qcal.zoo.registry import catalogue

    if args.list_models:
        models, problems = catalogue()
        write(_table(models, args.format))
        for problem in problems:  # named, while the listed models stay usable
            print(f"qcal: registry problem: {problem}", file=sys.stderr)
        return 0
    schemes, backends = _schemes(args.schemes, args.scheme, args.repairs), _backends(args.backends)
    if args.recipe:
        from qcal.io.recipe_files import read_recipe

        schemes = [*(schemes or list(SCHEMES)), *(read_recipe(p) for p in args.recipe)]
    progress = TerminalProgress()
    with cluster_executor(args) as executor:
        if ":" in args.model:
            cmp = _user_comparison(args, schemes, backends, progress, executor)
        else:
            cmp = compare_zoo(args.model, schemes, backends, eval_samples=args.eval_samples,
                              calib_samples=args.calib_samples, batch_size=args.batch_size,
                              executor=executor, progress=progress)
    report_sweep(cmp.meta.get("dask"))
    if args.format != "table":
        print(cpu_line, file=sys.stderr)  # stdout stays machine-readable
        write(_table(cmp.summary, args.format))
    else:
        write(f"model {args.model}: {cmp.meta.get('data_description', '')}\n{cpu_line}\n")
        write(_table(cmp.summary))
        write("\nworst layers per scheme (lowest SQNR):")
        write(_table(worst_layers(cmp.layers, args.layers)))
        write("\n" + "\n".join(f"- {s}" for s in conclusions(cmp.summary, cmp.layers)))
        for job, notes in cmp.meta.get("notes", {}).items():
            write("\n".join(f"- note, {job}: {n}" for n in notes))
    if not args.no_save:
        run_id = Store(args.store).save_comparison(cmp, title=args.title)
        print(f"saved run {run_id} (python -m qcal runs show {run_id}; python -m qcal report {run_id})",
              file=sys.stderr)
    return 0


@command(
    "runs",
    "list, show, delete, export or import saved runs",
    arg("action", choices=("list", "show", "delete", "export", "import")),
    arg("target", nargs="?", default=None, help="a run id (show/delete/export) or a run file (import)"),
    arg("path", nargs="?", default=None, help="export: the portable .sqlite file to write"),
    arg("--frame", default="summary", help="show: which frame to print (summary, layers, scales, histograms, samples)"),
    arg("--format", choices=("table", "csv", "json"), default="table"),
    _STORE_ARG,
)
def runs_command(args: argparse.Namespace) -> int:
    # imported here, not at the top: `qcal --help` and usage errors must not wait for torch
    from qcal.store.store import Store

    store = Store(args.store)
    if args.action == "list":
        runs = store.list()
        write(_table(runs[["id", "created", "model", "schemes", "backends", "title"]], args.format)
              if len(runs) else f"no runs in {store.path}")
        return 0
    if not args.target:
        raise ValueError(f"'runs {args.action}' needs a {'run file' if args.action == 'import' else 'run id'}")
    if args.action == "show":
        run = store.load(args.target)
        if args.format == "table":
            write(json.dumps(run.meta, indent=1, default=str))
        if args.frame not in run.frames:
            raise ValueError(f"run {args.target} has no frame {args.frame!r}; its frames: {', '.join(run.frames)}")
        frame = run.frames[args.frame]
        write(_table(frame, args.format))
    elif args.action == "delete":
        store.delete(args.target)
        write(f"deleted run {args.target} from {store.path}")
    elif args.action == "export":
        out = store.export(args.target, args.path or f"qcal-run-{args.target}.sqlite")
        write(f"exported run {args.target} to {out}")
    else:
        run_id = store.import_(args.target)
        write(f"imported run {run_id} into {store.path}")
    return 0


@command(
    "report",
    "write a self-contained HTML report of a saved run (opens offline)",
    arg("run_id"),
    arg("-o", "--output", default=None, help="the .html file (default: qcal-report-<id>.html)"),
    _STORE_ARG,
)
def report_command(args: argparse.Namespace) -> int:
    # imported here, not at the top: `qcal --help` and usage errors must not wait for torch
    from qcal.reporting.report import report
    from qcal.store.store import Store

    run = Store(args.store).load(args.run_id)
    try:
        path = report(run, Path(args.output or f"qcal-report-{args.run_id}.html"))
    except KeyError as err:  # a run saved by hand, not by compare
        raise ValueError(f"run {args.run_id} is not a comparison run: its frames lack {err}; "
                         "reports need the frames `qcal compare` saves") from err
    write(f"wrote {path}")
    return 0


@command(
    "bench",
    "time qcal against torch's own pipeline, or its ort flavour against onnxruntime (ratios, medians, same "
    "process; each row names the baseline's instruction set and qcal's kernel)",
    arg("--models", default="digits_cnn,digits_mobilenet,resnet18_like,mobilenet_v2_like"),
    arg("--batches", default="8,32", help="comma list of batch sizes"),
    arg("--repeat", type=_count, default=5, help="runs per cell (median kept)"),
    arg("--calib-batches", type=_count, default=8),
    arg("--tasks", default="calib_minmax,calib_histogram,int8_inference,six_presets",
        help="comma list of: calib_minmax, calib_histogram, int8_inference, six_presets, schemes "
             "(int8 inference under each preset), sensitivity, ort (the ort flavour vs onnxruntime running "
             "the file qcal.to_onnx writes, fbgemm_default, ORT_ENABLE_ALL, --threads intra/inter-op "
             "threads; differing output values counted once, untimed), ort_schemes (ort under each preset)"),
    arg("--threads", type=_count, default=None,
        help="torch threads for qcal and torch alike, and onnxruntime's intra- and inter-op threads"),
    arg("--clock", choices=("wall", "cpu"), default="wall",
        help="wall: elapsed time; cpu: process CPU time (steadier on a shared machine)"),
    arg("--memory", default="", help="comma list of calibration batch counts (e.g. 8,64): peak RSS "
                                     "of a six-preset resnet18_like comparison, each in a fresh process"),
    arg("--quick", action="store_true", help="digits models, batch 8, 2 repeats"),
    DASK_ARG,
    _CPU_ARG,
)
def bench_command(args: argparse.Namespace) -> int:
    # imported here, not at the top: `qcal --help` and usage errors must not wait for torch
    import torch

    from qcal.analysis.bench import bench, format_bench
    from qcal.analysis.bench_memory import memory_rows
    from qcal.progress import TerminalProgress

    models, batches, repeat = _csv(args.models), _counts(args.batches, "--batches"), args.repeat
    counts = tuple(_counts(args.memory, "--memory")) if args.memory else ()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        models, batches, repeat = ["digits_cnn", "digits_mobilenet"], [8], 2
    with _assumed_cpu(args.cpu) as cpu_line, cluster_executor(args) as executor:
        rows = bench(models, batches, repeat=repeat, calib_batches=args.calib_batches, tasks=_csv(args.tasks),
                     clock=args.clock, executor=executor, progress=TerminalProgress()) if models else []
        write(format_bench(rows, memory_rows(counts) if counts else (), clock=args.clock))
        write(cpu_line)
    return 0
