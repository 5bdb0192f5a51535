"""Command line: ``python -m qcal <command> ...`` (also installed as ``qcal``).

Each subcommand is one function decorated with ``qcal.cli.args.command``, which registers it
with its arguments; ``main`` dispatches. ``explain`` lives in ``qcal.cli.explain``; ``compare``,
``runs``, ``report`` and ``bench`` live in ``qcal.cli.runs``; ``sensitivity`` and ``recommend`` in
``qcal.cli.decide``; ``layers`` and ``requant`` in ``qcal.cli.layers``. Errors a user can fix (bad file, bad
value) print one line, ``qcal: error: ...``, to stderr and exit 1; usage errors exit 2;
never a traceback (``QCAL_DEBUG=1`` shows one for unexpected errors).
"""

from __future__ import annotations

import argparse
import os
import sys

import qcal.cli.cpu
import qcal.cli.decide
import qcal.cli.explain
import qcal.cli.export
import qcal.cli.layers
import qcal.cli.repair
import qcal.cli.runs
import qcal.cli.silicon  # noqa: F401  (runs registers compare, runs, report, bench)
from qcal.cli.args import COMMANDS

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qcal", description="int8 post-training quantization, explained.")
    subs = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for c in COMMANDS.values():
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
    except (ValueError, TypeError, OSError, ImportError) as err:  # ImportError: a missing optional package
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


