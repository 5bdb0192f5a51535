"""Plotly figures built from the tidy comparison frames (shared by the report and pages).

Each function takes frames, returns a ``plotly.graph_objects.Figure`` and computes nothing
that is not already in the frames, so a figure can always be redrawn from a saved run.
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

__all__ = [
    "accuracy_figure",
    "histogram_figure",
    "layer_error_figure",
    "sample_scatter_figure",
    "weight_range_figure",
    "weight_scale_figure",
]

_TEMPLATE = "plotly_white"


def accuracy_figure(summary: pd.DataFrame) -> go.Figure:
    """Accuracy (or agreement) per scheme and backend, with the fp32 value as a line."""
    metric = str(summary["metric"].iloc[0]) if len(summary) else "accuracy"
    fig = px.bar(
        summary, x="scheme", y="value", color="backend", barmode="group", text_auto=".3f",
        template=_TEMPLATE, labels={"value": metric, "scheme": "scheme"},
    )
    if len(summary):
        fp32 = float(summary["fp32_value"].iloc[0])
        fig.add_hline(y=fp32, line_dash="dash", line_color="black",
                      annotation_text=f"fp32 {fp32:.3f}", annotation_position="top left")
    fig.update_layout(yaxis_title=f"top-1 {metric}", margin={"t": 30})
    return fig


def layer_error_figure(layers: pd.DataFrame, metric: str = "sqnr_db") -> go.Figure:
    """A per-layer error metric (SQNR dB by default) for every scheme, in layer order."""
    df = layers.assign(job=layers["scheme"] + " / " + layers["backend"])
    order = list(dict.fromkeys(layers["layer"]))
    fig = px.line(df, x="layer", y=metric, color="job", markers=True, template=_TEMPLATE,
                  category_orders={"layer": order})
    fig.update_layout(margin={"t": 30}, legend_title_text="scheme / backend")
    return fig


def weight_scale_figure(scales: pd.DataFrame, value: str = "scale") -> go.Figure:
    """Per-channel weight scales (or zero points) per layer, one box per scheme."""
    w = scales[scales["tensor"] == "weight"]
    fig = px.box(w, x="layer", y=value, color="scheme", points="all", template=_TEMPLATE,
                 category_orders={"layer": list(dict.fromkeys(w["layer"]))})
    if value == "scale":
        fig.update_yaxes(type="log", title="weight scale (log)")
    fig.update_layout(margin={"t": 30})
    return fig


def weight_range_figure(scales: pd.DataFrame, layer: str, scheme: str) -> go.Figure:
    """Per-channel weight min/max of one layer: the spread that per-tensor scales must cover."""
    w = scales[(scales["tensor"] == "weight") & (scales["layer"] == layer)
               & (scales["scheme"] == scheme)].sort_values("channel")
    fig = go.Figure()
    fig.add_trace(go.Bar(x=w["channel"], y=w["max"], name="max", marker_color="#2a9d8f"))
    fig.add_trace(go.Bar(x=w["channel"], y=w["min"], name="min", marker_color="#e76f51"))
    if len(w):
        absmax = float(max(w["max"].abs().max(), w["min"].abs().max()))
        for y in (absmax, -absmax):
            fig.add_hline(y=y, line_dash="dot", line_color="gray")
    fig.update_layout(barmode="overlay", template=_TEMPLATE, margin={"t": 30},
                      xaxis_title="output channel", yaxis_title="weight value",
                      title=f"{layer}: per-channel weight range (dotted: per-tensor range)")
    return fig


def histogram_figure(histograms: pd.DataFrame, layer: str) -> go.Figure:
    """One activation's histogram with each scheme's chosen clipping range drawn on it."""
    h = histograms[histograms["layer"] == layer]
    fig = go.Figure()
    if len(h):
        first = h[h["scheme"] == h["scheme"].iloc[0]]
        fig.add_trace(go.Bar(x=(first["bin_left"] + first["bin_right"]) / 2, y=first["count"],
                             width=(first["bin_right"] - first["bin_left"]), name="count",
                             marker_color="#8ecae6"))
        palette = px.colors.qualitative.Dark2
        ranges = h.groupby(["scheme", "observer"], sort=False)[["clip_min", "clip_max"]].first()
        for i, ((scheme, observer), row) in enumerate(ranges.iterrows()):
            color = palette[i % len(palette)]
            for x in (row["clip_min"], row["clip_max"]):
                fig.add_vline(x=float(x), line_color=color, line_dash="dash")
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"{scheme} ({observer})",
                                     line={"color": color, "dash": "dash"}))
    fig.update_layout(template=_TEMPLATE, margin={"t": 30}, yaxis_type="log",
                      xaxis_title="activation value", yaxis_title="count (log)")
    return fig


def sample_scatter_figure(samples: pd.DataFrame, layer: str) -> go.Figure:
    """fp32 vs dequantized int8 values of one layer's outputs; the diagonal is exact."""
    s = samples[samples["layer"] == layer]
    s = s.assign(job=s["scheme"] + " / " + s["backend"])
    fig = px.scatter(s, x="fp32", y="int8_dequantized", color="job", opacity=0.6,
                     template=_TEMPLATE)
    if len(s):
        lo, hi = float(s["fp32"].min()), float(s["fp32"].max())
        fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line={"dash": "dot", "color": "gray"})
    fig.update_layout(margin={"t": 30}, legend_title_text="scheme / backend")
    return fig
