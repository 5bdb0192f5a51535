"""Page-facing views: the exact tables, numbers and sentences a dashboard page shows.

Pure functions from qcal's frames (and, for the worked requant element, live traces) to
small DataFrames and strings, so that every number on a page can be reproduced from Python
with the same call. No Streamlit here; the pages only call these, cache and draw.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from qcal.calibration.calibrate import calibrate
from qcal.export.onnx import onnx_bytes
from qcal.export.pt2e_examples import is_pt2e, pt2e_model
from qcal.recipes import Recipe
from qcal.repair.apply import apply_recipe, settings_text
from qcal.reporting.figures import accuracy_figure as base_accuracy_figure
from qcal.reporting.report import worst_layers as _worst_layers
from qcal.reporting.story import scheme_colors
from qcal.zoo import datasets, zoo
from qcal.zoo.registry import input_shape_of, load_named

__all__ = [
    "accuracy_figure",
    "accuracy_sentence",
    "calibrate_zoo",
    "clip_ranges",
    "explain_view",
    "layer_names",
    "layer_table",
    "layer_values",
    "metric_value",
    "scale_figure",
    "scale_spread",
    "size_sentence",
    "size_table",
    "summarize_values",
    "worst_layers",
    "worst_layers_sentence",
    "worst_layers_table",
    "zoo_eval_inputs",
    "zoo_onnx_bytes",
]


def metric_value(summary: pd.DataFrame, scheme: str, backend: str) -> pd.Series:
    """The summary row of one (scheme, backend).

    Raises:
        ValueError: the pair is not in the summary (the message lists the pairs that are).
    """
    rows = summary[(summary["scheme"] == scheme) & (summary["backend"] == backend)]
    if rows.empty:
        pairs = ", ".join(f"{s}/{b}" for s, b in zip(summary["scheme"], summary["backend"], strict=True))
        raise ValueError(f"no result for scheme {scheme!r} on backend {backend!r}; have: {pairs}")
    return rows.iloc[0]


def accuracy_sentence(summary: pd.DataFrame) -> str:
    """What to conclude from the accuracy chart, in one or two sentences."""
    if summary.empty:
        return "No results to compare."
    metric = str(summary["metric"].iloc[0])
    fp32 = float(summary["fp32_value"].iloc[0])
    ordered = summary.sort_values(["drop", "scheme", "backend"])
    best, worst = ordered.iloc[0], ordered.iloc[-1]
    spread = float(worst["drop"] - best["drop"])
    verdict = ("every scheme is within a point of fp32, so pick on size and speed"
               if float(worst["drop"]) <= 0.01 else
               f"the scheme matters here: {worst['scheme']} on {worst['backend']} loses "
               f"{float(worst['drop']):.1%}, {spread:.1%} more than the best")
    return (f"fp32 top-1 {metric} is {fp32:.1%}; the best int8 result is {best['scheme']} on "
            f"{best['backend']} at {float(best['value']):.1%} (drop {float(best['drop']):+.1%}), "
            f"and {verdict}.")


def size_table(summary: pd.DataFrame, fp32_bytes: int | None = None) -> pd.DataFrame:
    """int8 size per scheme (one row per scheme; sizes do not depend on the backend)."""
    df = (summary.groupby("scheme", sort=False)["int8_bytes"].max().rename("int8_bytes")
          .reset_index())
    df["int8_kib"] = df["int8_bytes"] / 1024
    if fp32_bytes:
        df["ratio_vs_fp32"] = df["int8_bytes"] / float(fp32_bytes)
    return df


def size_sentence(sizes: pd.DataFrame, fp32_bytes: int | None = None) -> str:
    """What to conclude from the size chart."""
    if sizes.empty:
        return "No sizes recorded."
    lo, hi = sizes.loc[sizes["int8_bytes"].idxmin()], sizes.loc[sizes["int8_bytes"].idxmax()]
    base = (f" against {fp32_bytes / 1024:.1f} KiB in fp32 (about {hi['int8_bytes'] / fp32_bytes:.0%})"
            if fp32_bytes else "")
    extra = float(hi["int8_bytes"] - lo["int8_bytes"])
    return (f"The int8 models take {lo['int8_kib']:.1f}–{hi['int8_kib']:.1f} KiB{base}; "
            f"per-channel schemes cost {extra:.0f} bytes more (one scale and zero point per "
            "output channel), which is negligible next to the weights.")


def worst_layers(layers: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The ``n`` layers with the lowest SQNR for each (scheme, backend)."""
    cols = ["scheme", "backend", "layer", "kind", "sqnr_db", "mse", "cosine"]
    return _worst_layers(layers, n)[[c for c in cols if c in layers.columns]]


def worst_layers_sentence(layers: pd.DataFrame) -> str:
    """What to conclude from the worst-layers table."""
    if layers.empty:
        return "No per-layer errors recorded."
    finite = layers[layers["sqnr_db"].map(lambda v: math.isfinite(float(v)))]
    if finite.empty:
        return "Every layer is exact in int8 (infinite SQNR)."
    w = finite.sort_values("sqnr_db").iloc[0]
    counts = finite.sort_values("sqnr_db").groupby(["scheme", "backend"]).head(1)["layer"]
    common = counts.value_counts()
    shared = (f" {common.index[0]} is the weakest layer in {int(common.iloc[0])} of "
              f"{len(counts)} jobs, so its ranges are the first thing to look at."
              if len(common) else "")
    return (f"The lowest SQNR is {w['layer']} under {w['scheme']} on {w['backend']} "
            f"({float(w['sqnr_db']):.1f} dB; every 6 dB is one bit of precision lost).{shared}")


def layer_names(frame: pd.DataFrame) -> list[str]:
    """Layer names in model order (first appearance in the frame)."""
    return list(dict.fromkeys(frame["layer"])) if "layer" in frame else []


def layer_table(layers: pd.DataFrame, metric: str = "sqnr_db") -> pd.DataFrame:
    """One row per layer, one column per scheme/backend job, values of ``metric``."""
    if layers.empty:
        return pd.DataFrame()
    df = layers.assign(job=layers["scheme"] + " / " + layers["backend"])
    table = df.pivot_table(index="layer", columns="job", values=metric, aggfunc="first", sort=False)
    table = table.reindex(layer_names(layers))
    kinds = layers.drop_duplicates("layer").set_index("layer")["kind"]
    table.insert(0, "kind", kinds.reindex(table.index))
    table.columns.name = None
    return table.reset_index()


def layer_values(layers: pd.DataFrame, layer: str) -> pd.DataFrame:
    """SQNR, MSE and cosine of one layer for every (scheme, backend), worst first."""
    rows = layers[layers["layer"] == layer]
    return rows[["scheme", "backend", "sqnr_db", "mse", "cosine"]].sort_values("sqnr_db").reset_index(drop=True)


def scale_spread(scales: pd.DataFrame, layer: str) -> pd.DataFrame:
    """Per scheme, how far one layer's per-channel weight scales and ranges spread.

    Columns: scheme, channels, scale_min, scale_max, scale_ratio (max/min), range_ratio
    (the widest channel's absmax over the narrowest's: what a per-tensor scale must span).
    """
    w = scales[(scales["layer"] == layer) & (scales["tensor"] == "weight")]
    rows = []
    for scheme, g in w.groupby("scheme", sort=False):
        absmax = pd.concat([g["min"].abs(), g["max"].abs()], axis=1).max(axis=1)
        positive = absmax[absmax > 0]
        rows.append({
            "scheme": scheme,
            "channels": int(g["channel"].nunique()),
            "scale_min": float(g["scale"].min()),
            "scale_max": float(g["scale"].max()),
            "scale_ratio": float(g["scale"].max() / g["scale"].min()) if g["scale"].min() > 0 else math.inf,
            "range_ratio": float(positive.max() / positive.min()) if len(positive) else math.nan,
        })
    return pd.DataFrame(rows, columns=["scheme", "channels", "scale_min", "scale_max",
                                       "scale_ratio", "range_ratio"])


def scale_figure(scales: pd.DataFrame, layer: str, value: str = "scale") -> go.Figure:
    """One layer's per-channel weight ``value`` ("scale" or "zero_point"), a box and strip
    per scheme side by side; scales on a log axis (they span orders of magnitude)."""
    w = scales[(scales["layer"] == layer) & (scales["tensor"] == "weight")]
    fig = px.box(w, x="scheme", y=value, color="scheme", points="all", template="plotly_white",
                 color_discrete_map=scheme_colors(w["scheme"]),
                 hover_data=["channel", "min", "max"])
    if value == "scale":
        fig.update_yaxes(type="log", title="weight scale (log)")
    fig.update_traces(pointpos=0, jitter=0.6, marker_size=4, boxmean=False)
    fig.update_layout(showlegend=False, margin={"t": 30}, xaxis_title=None, boxmode="overlay")
    return fig


def accuracy_figure(summary: pd.DataFrame) -> go.Figure:
    """``qcal.reporting.figures.accuracy_figure`` with the y axis zoomed onto the results and fp32."""
    fig = base_accuracy_figure(summary)
    if len(summary):
        lo = float(min(summary["value"].min(), summary["fp32_value"].min()))
        hi = float(max(summary["value"].max(), summary["fp32_value"].max()))
        pad = max(0.01, (hi - lo) * 0.5)
        fig.update_yaxes(range=[max(0.0, lo - pad), min(1.0, hi + pad) + 0.005])
        fig.update_annotations(bgcolor="rgba(255,255,255,0.85)", yanchor="bottom")
    return fig


def worst_layers_table(layers: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """One row per (scheme, backend): its ``n`` lowest-SQNR layers, worst first."""
    worst = worst_layers(layers, n)
    rows = []
    for (scheme, backend), g in worst.groupby(["scheme", "backend"], sort=False):
        row = {"scheme": scheme, "backend": backend}
        for i, (_, r) in enumerate(g.sort_values("sqnr_db").iterrows(), start=1):
            row[f"worst {i}"] = f"{r['layer']} ({float(r['sqnr_db']):.1f} dB)"
        rows.append(row)
    return pd.DataFrame(rows)


def clip_ranges(histograms: pd.DataFrame, layer: str) -> pd.DataFrame:
    """Each (scheme, observer)'s clipping range for one activation, and the share clipped."""
    h = histograms[histograms["layer"] == layer]
    rows = []
    for (scheme, observer), g in h.groupby(["scheme", "observer"], sort=False):
        lo, hi = float(g["clip_min"].iloc[0]), float(g["clip_max"].iloc[0])
        total = float(g["count"].sum())
        centers = (g["bin_left"] + g["bin_right"]) / 2
        outside = float(g.loc[(centers < lo) | (centers > hi), "count"].sum())
        rows.append({"scheme": scheme, "observer": observer, "clip_min": lo, "clip_max": hi,
                     "clipped_share": outside / total if total else 0.0})
    return pd.DataFrame(rows, columns=["scheme", "observer", "clip_min", "clip_max", "clipped_share"])


def calibrate_zoo(model: str, scheme: Any, backend: str, *, batch_size: int = datasets.ZOO_BATCH,
                  calib_samples: int | None = None) -> Any:
    """A zoo or registered model calibrated as ``qcal.compare_zoo`` calibrates it (same
    data, same batches: the same qparams as the stored run), for views that need live tensors."""
    named = load_named(model)
    if is_pt2e(named.model):  # a registered convert_pt2e result: read, not calibrated (qcal.from_pt2e)
        return pt2e_model(model, named.model, scheme, backend)
    calib = datasets.calib_batches(named.calib[:calib_samples], batch_size=batch_size)
    if isinstance(scheme, Recipe) and scheme.repairs:  # recomputed from its settings, as compare built it
        return apply_recipe(named.model, calib, scheme, backend)
    return calibrate(named.model, calib, scheme, backend)


def repairs_caption(meta: dict[str, Any]) -> str:
    """One line naming each repaired column of a run and the settings that rebuild it."""
    return "; ".join(f"**{label}**: {settings_text(steps)}" for label, steps in (meta.get("repairs") or {}).items())


def zoo_onnx_bytes(model: str, scheme: Any, calib_samples: int | None = None) -> bytes:
    """The ONNX QDQ file (``qcal.to_onnx``) of a zoo or registered model under a scheme or
    recipe, calibrated as ``calibrate_zoo`` calibrates it (the stored run's qparams).

    Raises:
        UnsupportedExport: the model runs in module-swap mode or holds an op with no export.
    """
    qm = calibrate_zoo(model, scheme, "ort", calib_samples=calib_samples)
    return onnx_bytes(qm, input_shape=input_shape_of(model))


def zoo_eval_inputs(model: str, n: int = 32) -> Any:
    """The first ``n`` held-out inputs of a zoo model's data set (what traces are shown on)."""
    if model in zoo.names() and zoo.info(model).data != "digits":
        raise ValueError(f"zoo model {model!r} has no built-in evaluation data")
    return load_named(model).eval_x[:n]


def summarize_values(values: Any, digits: int = 4) -> str:
    """A list of qparams as one short cell: the value, or "n values: lo … hi" / "all 0"."""
    vals = list(values) if isinstance(values, list | tuple) else ([] if values is None else [values])
    if not vals:
        return ""
    if len(vals) == 1:
        return f"{vals[0]:.{digits}g}" if isinstance(vals[0], float) else str(vals[0])
    lo, hi = min(vals), max(vals)
    if lo == hi:
        return f"all {lo:.{digits}g}" if isinstance(lo, float) else f"all {lo}"
    return f"{len(vals)} values: {lo:.{digits}g} … {hi:.{digits}g}"


def explain_view(table: pd.DataFrame) -> pd.DataFrame:
    """``qcal.explain``'s table with list cells summarized, for a page-width table."""
    out = table.copy()
    for col in ("scale", "zero_point", "requant_scale"):
        if col in out:
            out[col] = out[col].map(summarize_values)
    return out
