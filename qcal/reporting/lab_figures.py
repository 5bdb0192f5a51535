"""Figures of the observer lab and of the calibration-size trajectory (Scales page, README)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from qcal.reporting.story import scheme_colors

__all__ = ["lab_error_figure", "lab_histogram_figure", "trajectory_figure"]

_TEMPLATE = "plotly_white"


def lab_histogram_figure(histogram: pd.DataFrame, ranges: pd.DataFrame, layer: str) -> go.Figure:
    """One activation's histogram with every observer's clipping range as dashed lines."""
    fig = go.Figure(go.Bar(x=(histogram["bin_left"] + histogram["bin_right"]) / 2, y=histogram["count"],
                           width=histogram["bin_right"] - histogram["bin_left"], name="values",
                           marker_color="#8ecae6"))
    colors = scheme_colors(ranges["observer"])
    for _, r in ranges.iterrows():
        color = colors[r["observer"]]
        for x in (r["clip_min"], r["clip_max"]):
            fig.add_vline(x=float(x), line_color=color, line_dash="dash")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=str(r["observer"]),
                                 line={"color": color, "dash": "dash"}))
    fig.update_layout(template=_TEMPLATE, margin={"t": 40}, yaxis_type="log",
                      xaxis_title="activation value", yaxis_title="count (log)",
                      title=f"{layer}: values seen in calibration and each observer's range")
    return fig


def lab_error_figure(ranges: pd.DataFrame) -> go.Figure:
    """Measured clipping vs rounding MSE per observer (stacked: their sum is the total)."""
    long = ranges.melt(id_vars="observer", value_vars=["clip_mse", "round_mse"],
                       var_name="error", value_name="part")
    fig = px.bar(long, x="observer", y="part", color="error", barmode="stack", template=_TEMPLATE,
                 color_discrete_map={"clip_mse": "#e76f51", "round_mse": "#2a9d8f"},
                 labels={"part": "MSE on the calibration values"})
    fig.update_layout(margin={"t": 30})
    return fig


def trajectory_figure(trajectory: pd.DataFrame, layer: str) -> go.Figure:
    """One activation's scale vs calibration samples seen, one line per observer."""
    t = trajectory[trajectory["layer"] == layer]
    fig = px.line(t, x="samples", y="scale", color="observer", markers=True, template=_TEMPLATE,
                  color_discrete_map=scheme_colors(t["observer"]), log_x=True,
                  labels={"samples": "calibration samples seen (log)", "scale": "activation scale"})
    fig.update_layout(margin={"t": 40}, title=f"{layer}: scale as calibration samples arrive")
    return fig
