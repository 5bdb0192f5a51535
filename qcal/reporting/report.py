"""A self-contained HTML report of a comparison or a saved run (opens offline).

plotly.js is embedded once, inline, so the file needs no network; every figure and table
is drawn from the run's stored frames.
"""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from qcal.reporting import figures

__all__ = ["conclusions", "report", "report_html", "worst_layers"]


def _frames_and_meta(run: Any) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    frames = run.frames() if callable(getattr(run, "frames", None)) else getattr(run, "frames", None)
    if not isinstance(frames, dict) or "summary" not in frames:
        raise TypeError(
            f"report needs a qcal Comparison or a saved Run, got {type(run).__name__}"
        )
    return frames, dict(getattr(run, "meta", {}) or {})


def worst_layers(layers: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The ``n`` layers with the lowest SQNR for each (scheme, backend)."""
    if layers.empty:
        return layers
    return (layers.sort_values("sqnr_db").groupby(["scheme", "backend"], sort=False).head(n)
            .sort_values(["scheme", "backend", "sqnr_db"]).reset_index(drop=True))


def conclusions(summary: pd.DataFrame, layers: pd.DataFrame | None = None) -> list[str]:
    """Plain sentences that say what the numbers mean."""
    if summary.empty:
        return ["The run holds no results."]
    metric = summary["metric"].iloc[0]
    fp32 = float(summary["fp32_value"].iloc[0])
    best = summary.sort_values("drop").iloc[0]
    worst = summary.sort_values("drop").iloc[-1]
    out = [
        f"fp32 top-1 {metric} is {fp32:.2%}. The best int8 job is {best['scheme']} on "
        f"{best['backend']} at {best['value']:.2%} (drop {best['drop']:+.2%}); the worst is "
        f"{worst['scheme']} on {worst['backend']} at {worst['value']:.2%} (drop {worst['drop']:+.2%}).",
    ]
    by_scheme = summary.groupby("scheme")["value"].mean()
    if {"per_tensor_symmetric", "per_channel_symmetric"} <= set(by_scheme.index):
        gap = by_scheme["per_channel_symmetric"] - by_scheme["per_tensor_symmetric"]
        out.append(
            f"Per-channel symmetric weights score {gap:+.2%} against per-tensor symmetric: "
            + ("per-channel scales rescue layers whose channels have very different ranges."
               if gap > 0.005 else "this model's channels are similar enough for one scale.")
        )
    if layers is not None and not layers.empty:
        w = layers.sort_values("sqnr_db").iloc[0]
        out.append(
            f"The costliest layer is {w['layer']} under {w['scheme']} ({w['sqnr_db']:.1f} dB "
            "SQNR); start there when a scheme loses accuracy."
        )
    return out


def _table(df: pd.DataFrame, max_rows: int = 60) -> str:
    return df.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.6g}",
                                     classes="tbl", border=0)


def _schemes_table(meta: dict[str, Any]) -> str:
    """The schemes' text forms (``qcal compare --scheme TEXT`` rebuilds each one)."""
    texts = meta.get("scheme_texts") or {}
    if not texts:
        return ""
    df = pd.DataFrame({"scheme": list(texts), "definition": list(texts.values())})
    return f"<h2>Schemes</h2>{_table(df)}"


def _repairs_table(meta: dict[str, Any]) -> str:
    """Each repaired column's repairs and settings (``qcal.apply_recipe`` rebuilds it from them)."""
    repairs = meta.get("repairs") or {}
    if not repairs:
        return ""
    from qcal.repair.apply import settings_text  # torch, only for a run with repaired columns

    df = pd.DataFrame({"scheme": list(repairs), "repairs": [settings_text(steps) for steps in repairs.values()]})
    return f"<h2>Repairs</h2>{_table(df)}"


def report(run_or_comparison: Any, path: str | os.PathLike[str]) -> Path:
    """Write a self-contained HTML report and return its path.

    Args:
        run_or_comparison: a ``qcal.Comparison`` or a saved ``qcal.store.Run``.
        path: where to write the ``.html`` file (parent folders are created; the file appears
            atomically).
    """
    doc = report_html(run_or_comparison)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".html.tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(doc)
    os.replace(tmp, path)
    return path


def _figures(frames: dict[str, pd.DataFrame]) -> list[tuple[str, Any]]:
    """The report's figures, each with its title: accuracy, then what the frames allow."""
    summary, layers = frames["summary"], frames.get("layers", pd.DataFrame())
    scales, hists = frames.get("scales", pd.DataFrame()), frames.get("histograms", pd.DataFrame())
    samples = frames.get("samples", pd.DataFrame())
    figs: list[tuple[str, Any]] = [("Accuracy per scheme and backend", figures.accuracy_figure(summary))]
    if not layers.empty:
        figs.append(("Per-layer SQNR (higher is better)", figures.layer_error_figure(layers)))
    if not scales.empty:
        figs.append(("Per-channel weight scales", figures.weight_scale_figure(scales)))
    if not hists.empty:
        first = str(hists["layer"].iloc[0])
        figs.append((f"Activation histogram of {first} with clipping ranges",
                     figures.histogram_figure(hists, first)))
    if not samples.empty and not layers.empty:
        w = str(layers.sort_values("sqnr_db").iloc[0]["layer"])
        figs.append((f"fp32 vs int8 outputs of {w}", figures.sample_scatter_figure(samples, w)))
    return figs


def report_html(run_or_comparison: Any) -> str:
    """The self-contained HTML report of a ``qcal.Comparison`` or a saved run, as a string
    (plotly inlined once: it opens offline)."""
    frames, meta = _frames_and_meta(run_or_comparison)
    summary, layers = frames["summary"], frames.get("layers", pd.DataFrame())
    parts = []
    for i, (title, fig) in enumerate(_figures(frames)):
        body = fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False)
        parts.append(f"<h2>{html.escape(title)}</h2>{body}")
    meta_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in sorted(meta.items())
    )
    sentences = conclusions(summary, layers) + [
        f"Note on {job}: {n}" for job, ns in (meta.get("notes") or {}).items() for n in ns
    ]
    notes = "".join(f"<li>{html.escape(s)}</li>" for s in sentences)
    title = html.escape(str(meta.get("title") or f"qcal report: {meta.get('model', 'model')}"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
.tbl{{border-collapse:collapse;font-size:13px}} .tbl td,.tbl th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}}
table.meta th{{text-align:left;padding-right:1em}} h2{{margin-top:1.6em}}
</style></head><body>
<h1>{title}</h1>
<ul>{notes}</ul>
<h2>Summary</h2>{_table(summary)}
{_schemes_table(meta)}{_repairs_table(meta)}
<h2>Worst layers per scheme</h2>{_table(worst_layers(layers))}
{"".join(parts)}
<h2>Run metadata</h2><table class="meta">{meta_rows}</table>
<p>Made by qcal from the run's stored frames.</p>
</body></html>"""
