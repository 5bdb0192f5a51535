"""CLI subcommand ``explain``: a quantized state_dict file as a terminal table, CSV or JSON."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from qcal.cli.args import arg, command, write

__all__ = ["explain_command", "format_explain", "short_list"]


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
    arg("--max-mb", type=_positive, default=256.0, help="refuse larger files (default 256 MiB)"),
    arg("--format", choices=("table", "csv", "json"), default="table", help="output format"),
)
def explain_command(args: argparse.Namespace) -> int:
    # imported here, not at the top: `qcal --help` and usage errors must not wait for torch
    from qcal.checkpoint.explain import explain

    df = explain(args.file, max_bytes=int(args.max_mb * 2**20))
    write(format_explain(df, args.format))
    return 0


