"""The Runs page's calls into the run store (QCAL_STORE): list, delete, export, import, report.

Uploads are data: ``Store.import_bytes`` checks a run file (size cap, header, schema, every
frame decoded) before anything is written; nothing in it can run.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pandas as pd
import streamlit as st

from pages._shared import load_run
from qcal.reporting.report import report_html
from qcal.store import Store
from qcal.store.recipe_runs import beside_presets, saved_recipe_rows

PAGE_PATHS = ("compare", "scales", "layers", "sensitivity", "requant", "explain", "runs")


def store_location() -> str:
    """Where runs are stored (QCAL_STORE, or the default under data/)."""
    return str(Store().path)


def list_runs() -> pd.DataFrame:
    """The saved runs, newest first (StoreError when the store cannot be read)."""
    runs = Store().list()
    if "created" in runs:
        runs = runs.sort_values("created", ascending=False)
    return runs.reset_index(drop=True)


def delete_run(run_id: str) -> None:
    """Delete a run and forget its cached frames."""
    Store().delete(run_id)
    load_run.clear(run_id)


def export_run_bytes(run_id: str) -> bytes:
    """The portable SQLite file of one run (made on the download click)."""
    return Store().export_bytes(run_id)


def import_run_bytes(data: bytes) -> str:
    """Import an uploaded run file; returns the new id (StoreError when it is refused)."""
    return Store().import_bytes(data)


def report_bytes(run_id: str) -> bytes:
    """The self-contained HTML report of one run (made on the download click)."""
    return report_html(Store().load(run_id)).encode("utf-8")


def share_link(run_id: str, page: str = "compare") -> str:
    """A URL that opens ``run_id`` on ``page`` of this server."""
    parts = urlsplit(st.context.url or "http://localhost:8501/")
    path = parts.path.rstrip("/")
    if path.rsplit("/", 1)[-1] in PAGE_PATHS:
        path = path.rsplit("/", 1)[0]
    page = "" if page == "compare" else page  # the default page lives at the root URL
    return f"{parts.scheme}://{parts.netloc}{path}/{page}?run={run_id}"


@st.cache_data(show_spinner="Reading the saved recipes…", max_entries=32)
def _recipe_rows(model: str, run_ids: tuple[str, ...]) -> pd.DataFrame:
    return saved_recipe_rows(Store(), model)  # run_ids: the key changes when a run is saved or deleted


def recipes_beside_presets(model: str, summary: pd.DataFrame, run_id: str, data_description: str) -> pd.DataFrame:
    """The run's presets followed by every saved recipe of ``model`` (one row per backend)."""
    runs = Store().list()
    rows = _recipe_rows(model, tuple(runs.loc[runs["model"] == model, "id"]))
    return beside_presets(summary, run_id, data_description, rows)
