"""What the first screen says, and how every multi-series chart tells schemes and backends apart.

* ``lead_sentence``: the per-channel vs per-tensor difference, with the summary's numbers.
* ``grouped_caveats``: the comparison's notes, one entry per distinct note with its jobs.
* ``scheme_colors`` / ``BACKEND_DASHES``: scheme by colour (enough colours for any number of
  schemes), backend by line style.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import plotly.express as px

__all__ = ["BACKEND_DASHES", "backend_dashes", "grouped_caveats", "lead_sentence", "scheme_colors"]

BACKEND_DASHES: dict[str, str] = {"fbgemm": "solid", "qnnpack": "dash", "onnx": "dot",
                                  "q31": "dashdot", "x86": "longdash", "ort": "longdashdot"}
_EXTRA_DASHES = ("5px,3px,1px,3px", "1px,4px")
_PALETTE = (*px.colors.qualitative.Dark24, *px.colors.qualitative.Light24)


def scheme_colors(schemes: Iterable[str]) -> dict[str, str]:
    """A distinct colour per scheme, in order: 48 qualitative colours, then evenly spread hues
    (golden-ratio steps), so no two schemes share a colour however many a user builds."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for i, scheme in enumerate(dict.fromkeys(schemes)):
        color, k = (_PALETTE[i] if i < len(_PALETTE) else None), i
        while color is None or color in used:  # rounding to 8 bits may repeat a hue: step on
            r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.75, 0.55 + 0.4 * ((k // 7) % 2))
            color, k = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}", k + 1
        out[scheme] = color
        used.add(color)
    return out


def backend_dashes(backends: Iterable[str]) -> dict[str, str]:
    """A line style per backend (fbgemm solid, qnnpack dashed, onnx dotted, q31 dash-dot)."""
    spare = iter(_EXTRA_DASHES)
    return {b: BACKEND_DASHES.get(b) or next(spare, "solid") for b in dict.fromkeys(backends)}


def _pick(summary: pd.DataFrame, scheme: str, backend: str | None) -> pd.Series | None:
    rows = summary[summary["scheme"] == scheme]
    if backend is not None:
        rows = rows[rows["backend"] == backend]
    return rows.iloc[0] if len(rows) else None


def lead_sentence(summary: pd.DataFrame) -> str:
    """The first screen's lead: per-channel vs per-tensor weights, with the summary's numbers.

    Compares per_channel_symmetric with per_tensor_symmetric (else the affine pair) on the
    first backend both ran on; values are the summary's, as percentages with two decimals.
    Falls back to the best and worst job when the pair is not in the run.
    """
    if summary.empty:
        return "No results to compare yet."
    metric = str(summary["metric"].iloc[0])
    fp32 = float(summary["fp32_value"].iloc[0])
    for channel, tensor in (("per_channel_symmetric", "per_tensor_symmetric"),
                            ("per_channel_affine", "per_tensor_affine")):
        both = set(summary.loc[summary["scheme"] == channel, "backend"]) & \
            set(summary.loc[summary["scheme"] == tensor, "backend"])
        backend = next((b for b in dict.fromkeys(summary["backend"]) if b in both), None)
        if backend is None:
            continue
        c, t = _pick(summary, channel, backend), _pick(summary, tensor, backend)
        gap = float(c["value"]) - float(t["value"])
        why = ("one scale per output channel keeps small channels' resolution, while one scale "
               "per tensor is set by the widest channel and rounds the narrow ones to a few levels"
               if abs(gap) >= 0.01 else
               "this model's channels have similar weight ranges, so one scale per tensor loses little")
        return (f"Per-channel weights score {float(c['value']):.2%} {metric} and per-tensor "
                f"{float(t['value']):.2%} ({channel} vs {tensor} on {backend}, fp32 "
                f"{fp32:.2%}): a gap of {gap * 100:.2f} points, because {why}.")
    ordered = summary.sort_values(["drop", "scheme", "backend"])
    best, worst = ordered.iloc[0], ordered.iloc[-1]
    return (f"fp32 {metric} is {fp32:.2%}; the best int8 job is {best['scheme']} on "
            f"{best['backend']} at {float(best['value']):.2%}, the worst {worst['scheme']} on "
            f"{worst['backend']} at {float(worst['value']):.2%}.")


def grouped_caveats(notes: Mapping[str, Sequence[str]] | None) -> list[tuple[str, list[str]]]:
    """The comparison's notes grouped: (note, the jobs it applies to), one per distinct note,
    in first-seen order."""
    groups: dict[str, list[str]] = {}
    for job, job_notes in (notes or {}).items():
        for note in job_notes:
            groups.setdefault(str(note), []).append(str(job))
    return list(groups.items())
