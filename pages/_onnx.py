"""ONNX downloads for the pages: the file ``qcal.to_onnx`` writes, per scheme or saved recipe.

The Requant page has its model calibrated already and writes the file at once; the Compare
page offers one per scheme and per saved recipe, written on the click (a deferred download:
no calibration while the page draws). The click runs outside the page's script, so the
callables handed to Streamlit close over plain values and call qcal only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from pages._shared import (
    CurrentRun,
    live_comparison_models,
    load_run,
    quantized_model,
    scheme_names,
)
from qcal.export.onnx import onnx_bytes
from qcal.recipes import Recipe
from qcal.reporting import views
from qcal.scheme_text import parse_scheme
from qcal.zoo.registry import input_shape_of

HELP = ("qm.with_backend('ort') predicts onnxruntime's output for this file bit for bit; check it with "
        "python -m qcal export ... --verify. A recipe's fp32 layers are float Conv/Gemm in the file.")


@st.cache_data(show_spinner="Writing the ONNX file…", max_entries=32)
def _onnx_file(run_id: str, model: str, scheme: str, backend: str, _qm: Any) -> bytes | None:
    return onnx_bytes(_qm, input_shape=input_shape_of(model)) if _qm.mode == "graph" else None


def onnx_file(run: CurrentRun, scheme: str, backend: str) -> bytes | None:
    """The ONNX QDQ file of (scheme, backend) of ``run`` (None: not loadable or module-swap mode)."""
    qm = quantized_model(run, scheme, backend)
    return None if qm is None else _onnx_file(run.run_id, run.model, scheme, backend, qm)


@st.cache_data(show_spinner=False, max_entries=32)
def _zoo_onnx(model: str, spec_key: str, calib_samples: int | None, _spec: Any) -> bytes:
    return views.zoo_onnx_bytes(model, _spec, calib_samples)


def _deferred(model: str, spec: Any, calib_samples: int | None) -> Callable[[], bytes]:
    return lambda: _zoo_onnx(model, repr(spec), calib_samples, spec)


def scheme_onnx_data(run: CurrentRun, scheme: str, backend: str) -> Callable[[], bytes] | None:
    """A callable writing the file of ``scheme`` (a preset, scheme text or one of the run's
    recipes) of ``run``; None when the run's model cannot be loaded here."""
    live = live_comparison_models(run).get((scheme, backend))
    if live is not None:
        return lambda: onnx_bytes(live, input_shape=input_shape_of(run.model))
    recipes, texts = run.meta.get("recipes") or {}, run.meta.get("scheme_texts") or {}
    if not run.loadable:
        return None
    if scheme in recipes:
        spec: Any = Recipe.from_data(recipes[scheme])
    elif scheme in texts or scheme in scheme_names():
        spec = parse_scheme(texts.get(scheme, scheme))
    else:
        return None
    return _deferred(run.model, spec, run.meta.get("calib_samples"))


def recipe_onnx_data(model: str, run_id: str, name: str) -> Callable[[], bytes]:
    """A callable writing the file of saved recipe ``name`` of run ``run_id``."""
    meta, _ = load_run(run_id)
    return _deferred(model, Recipe.from_data(meta["recipes"][name]), meta.get("calib_samples"))


def onnx_download(model: str, name: str, data: bytes | Callable[[], bytes], key: str, where: Any = st) -> None:
    """The download button of one ONNX file (``data``: the bytes, or a callable run on the click)."""
    where.download_button(f"Download {name} as ONNX (QDQ)", data, file_name=f"{model}_{name}.onnx",
                          mime="application/octet-stream", key=key, help=HELP,
                          on_click="ignore" if callable(data) else "rerun")
