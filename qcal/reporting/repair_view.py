"""The Repairs page's numbers and picture: equalization's per-channel weight ranges before and
after, and the accuracy each repair adds (``qcal.repair``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from qcal.repair.equalize import equalize
from qcal.repair.table import repair_table
from qcal.zoo.datasets import calib_batches
from qcal.zoo.registry import load_named

__all__ = ["PAGE_REPAIRS", "RepairView", "repair_view", "weight_range_change_figure"]

PAGE_REPAIRS = ("none", "equalize", "correct_bias", "equalize+correct_bias")
_TEMPLATE = "plotly_white"


@dataclass(frozen=True)
class RepairView:
    """ranges: ``Equalization.weight_ranges``; table: ``repair_table``'s rows; summary and
    skipped: what equalize did and which layers start no pair, and why."""

    ranges: pd.DataFrame
    table: pd.DataFrame
    summary: str
    skipped: dict[str, str]


def repair_view(model: str, scheme: str, relu6: str, *, adaround: bool = False, iterations: int = 300,
                eval_samples: int = 300, progress: Callable[[float, str], None] | None = None) -> RepairView:
    """Equalize a zoo or registered model on its calibration data and score each repair chain
    under ``scheme`` on its first ``eval_samples`` test samples."""
    named = load_named(model)
    calib = calib_batches(named.calib)
    eq = equalize(named.model, calib, relu6=relu6)
    chains = PAGE_REPAIRS + (("adaround", "equalize+adaround") if adaround else ())
    y = None if named.eval_y is None else named.eval_y[:eval_samples]
    table = repair_table(named.model, calib, named.eval_x[:eval_samples], y, scheme, repairs=chains, relu6=relu6,
                         iterations=iterations, progress=progress)
    return RepairView(eq.weight_ranges, table, eq.summary(), eq.skipped)


def weight_range_change_figure(ranges: pd.DataFrame, layer: str) -> go.Figure:
    """One layer's per-channel folded weight range before and after equalization: one outlier
    channel sets a per-tensor scale that leaves the others a few levels."""
    r = ranges[ranges["layer"] == layer].sort_values("channel")
    fig = go.Figure()
    for when, color in (("before", "#e76f51"), ("after", "#2a9d8f")):
        fig.add_trace(go.Bar(x=r["channel"], y=r[f"{when}_max"] - r[f"{when}_min"], name=f"{when} equalization",
                             marker_color=color, opacity=0.8))
    fig.update_layout(barmode="group", template=_TEMPLATE, margin={"t": 30}, yaxis_type="log",
                      xaxis_title="output channel", yaxis_title="weight range (max - min, log)",
                      title=f"{layer}: per-channel weight range before and after equalization")
    return fig
