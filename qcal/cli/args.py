"""The CLI's command registry: ``@command`` registers a subcommand with its ``arg(...)``s.

Command modules (``qcal.cli.explain``, ``qcal.cli.runs``) import this module; ``qcal.cli.main``
imports them, builds the parser from the registry and dispatches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["COMMANDS", "arg", "command", "write"]


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, _Command] = {}


def arg(*flags: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One argparse argument, as ``parser.add_argument(*flags, **options)`` takes it."""
    return flags, options


def command(name: str, help: str, *arguments: tuple) -> Callable:
    """Register ``run(args) -> int`` as the subcommand ``name`` with the given ``arg(...)``s."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable:
        COMMANDS[name] = _Command(name, help, arguments, run)
        return run

    return register


def write(text: str) -> None:
    """Print ``text`` to stdout with a final newline; a closed pipe is not an error."""
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `qcal explain f.pt | head` is fine
        sys.stderr.close()
