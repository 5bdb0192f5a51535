"""Command line: ``python -m qcal <command> ...`` (also installed as ``qcal``).

Each subcommand is one function decorated with :func:`command`, which registers it with
its arguments; ``main`` dispatches. ``explain`` lives here; ``compare``, ``runs``,
``report`` and ``bench`` live in ``qcal.cli_runs``. Errors a user can fix (bad file, bad
value) print one line, ``qcal: error: ...``, to stderr and exit 1; usage errors exit 2;
never a traceback (``QCAL_DEBUG=1`` shows one for unexpected errors).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qcal.safe_load import MAX_FILE_BYTES

__all__ = ["arg", "command", "main", "write"]


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: dict[str, _Command] = {}


def arg(*flags: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One argparse argument, as ``parser.add_argument(*flags, **options)`` takes it."""
    return flags, options


def command(name: str, help: str, *arguments: tuple) -> Callable:
    """Register ``run(args) -> int`` as the subcommand ``name`` with the given ``arg(...)``s."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable:
        _COMMANDS[name] = _Command(name, help, arguments, run)
        return run

    return register


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    import qcal.cli_runs  # noqa: F401  (registers compare, runs, report, bench)

    parser = _Parser(prog="qcal", description="int8 post-training quantization, explained.")
    subs = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for c in _COMMANDS.values():
        sub = subs.add_parser(c.name, help=c.help, description=c.help)
        sub.prog = "qcal"  # errors read "qcal: error: ..." whatever the subcommand
        for flags, options in c.arguments:
            sub.add_argument(*flags, **options)
        sub.set_defaults(run=c.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"qcal: error: {message}", file=sys.stderr)
        return 1
    except Exception as err:  # a bug or an unforeseen input: still one line, traceback on request
        if os.environ.get("QCAL_DEBUG"):
            raise
        message = " ".join(str(err).split())[:500]
        print(f"qcal: error: unexpected {type(err).__name__}: {message} "
              "(set QCAL_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qcal: interrupted", file=sys.stderr)
        return 130


# ---- explain -----------------------------------------------------------------------------


def short_list(values: Any, shown: int = 2, limit: int = 3) -> str:
    """``[0.0031, 0.0029, … 40 values]``: a list cell for a terminal table."""
    if not isinstance(values, (list, tuple)):
        return str(values)
    if not values:
        return ""
    cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in values]
    if len(cells) <= limit:
        return f"[{', '.join(cells)}]"
    return f"[{', '.join(cells[:shown])}, … {len(cells)} values]"


_TABLE_COLUMNS = [
    "key",
    "role",
    "dtype",
    "qscheme",
    "scale",
    "zero_point",
    "requant_scale",
    "likely_scheme",
]
_LIST_COLUMNS = ("scale", "zero_point", "requant_scale")


def format_explain(df: Any, fmt: str, width: int = 100) -> str:
    """Render an :func:`qcal.explain` frame as a terminal table (+ notes), CSV or JSON."""
    if fmt == "json":
        return json.dumps(df.to_dict(orient="records"), indent=1, ensure_ascii=False)
    if fmt == "csv":
        out = df.copy()
        for col in _LIST_COLUMNS:
            out[col] = out[col].map(json.dumps)
        return out.to_csv(index=False)
    table = df[_TABLE_COLUMNS].copy()
    for col in _LIST_COLUMNS:
        table[col] = table[col].map(short_list)
    lines = [table.to_string(index=False, max_colwidth=48), "", "notes:"]
    for key, note in zip(df["key"], df["note"], strict=True):
        wrapped = textwrap.wrap(note, width=width - 4)
        lines.append(f"  {key}")
        lines.extend(f"    {line}" for line in wrapped)
    return "\n".join(lines)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of MiB, got {text}")
    return value


@command(
    "explain",
    "explain a quantized state_dict file: roles, scales, zero points, requant scales, likely scheme",
    arg(
        "file",
        help="a torch.save()d state_dict or checkpoint (loaded as data only, weights_only=True)",
    ),
    arg("--max-mb", type=_positive, default=MAX_FILE_BYTES / 2**20,
        help=f"refuse larger files (default {MAX_FILE_BYTES // 2**20} MiB)"),
    arg("--format", choices=("table", "csv", "json"), default="table", help="output format"),
)
def explain_command(args: argparse.Namespace) -> int:
    from qcal.checkpoints import explain

    df = explain(args.file, max_bytes=int(args.max_mb * 2**20))
    write(format_explain(df, args.format))
    return 0


def write(text: str) -> None:
    """Print ``text`` to stdout with a final newline; a closed pipe is not an error."""
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `qcal explain f.pt | head` is fine
        sys.stderr.close()
