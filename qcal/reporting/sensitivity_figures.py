"""Figures of the Sensitivity page: the layers x schemes heatmap and the fp32-fallback curve."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

__all__ = ["fallback_figure", "heatmap_figure"]


def heatmap_figure(table: pd.DataFrame) -> go.Figure:
    """Layers (rows) x schemes (columns): the drop in points when only that layer is int8."""
    points = table * 100
    fig = go.Figure(go.Heatmap(
        z=points.to_numpy(), x=list(points.columns), y=list(points.index), colorscale="Reds", zmin=0,
        text=points.round(1).astype(str).to_numpy(), texttemplate="%{text}",
        colorbar={"title": "drop (points)"},
        hovertemplate="%{y} alone int8 under %{x}: %{z:.2f} points below fp32<extra></extra>"))
    fig.update_layout(title="Drop when only that layer is int8 (points of the metric)",
                      yaxis={"autorange": "reversed", "title": "layer"}, xaxis={"title": "scheme"},
                      height=max(320, 28 * len(points) + 140), margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def fallback_figure(curve: pd.DataFrame) -> go.Figure:
    """The metric after each layer returns to fp32 (step 0: every layer int8), fp32's as a line."""
    labels = ["all int8"] + [f"+ {n}" for n in curve["layer"].iloc[1:]]
    fig = go.Figure(go.Scatter(x=labels, y=curve["value"] * 100, mode="lines+markers", name="int8 + fp32 layers"))
    fig.add_hline(y=float(curve["fp32_value"].iloc[0]) * 100, line_dash="dot", annotation_text="fp32")
    fig.update_layout(title="Layers returned to fp32 one at a time, most sensitive first",
                      xaxis={"title": "layer returned to fp32"}, yaxis={"title": f"{curve['metric'].iloc[0]} (%)"},
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig
