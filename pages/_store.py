"""The Runs page's operations on the run store (QCAL_STORE): list, delete, export, import.

Uploads are data: a run file is a SQLite file that ``Store.import_`` checks (size cap,
header, schema, every frame decoded) before anything is written; nothing in it can run.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

import qcal
from pages._shared import load_run

PAGE_PATHS = ("compare", "scales", "layers", "requant", "explain", "runs")


def _store() -> Any:
    from qcal.store import Store

    return Store()


def store_location() -> str:
    """Where runs are stored (QCAL_STORE, or the default under data/)."""
    try:
        store = _store()
        return str(getattr(store, "url", None) or getattr(store, "path", None) or store)
    except Exception as err:
        return f"unavailable ({err})"


def list_runs() -> pd.DataFrame | str:
    """The saved runs, newest first, or a message saying why the store cannot be read."""
    try:
        runs = _store().list()
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    if "created" in runs:
        runs = runs.sort_values("created", ascending=False)
    return runs.reset_index(drop=True)


def delete_run(run_id: str) -> None:
    """Delete a run and forget its cached frames."""
    _store().delete(run_id)
    load_run.clear(run_id)


def export_run_bytes(run_id: str) -> bytes:
    """The portable SQLite file of one run, as bytes (made on the download click)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="qcal-export-") as tmp:
        return Path(_store().export(run_id, Path(tmp) / f"{run_id}.sqlite")).read_bytes()


def import_run_bytes(data: bytes, filename: str) -> str:
    """Import an uploaded run file; returns the new id, or "error:<message>"."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="qcal-import-") as tmp:
        path = Path(tmp) / "upload.sqlite"
        path.write_bytes(data)
        try:
            return str(_store().import_(path))
        except Exception as err:
            return f"error:{type(err).__name__}: {err}"


def report_bytes(run_id: str) -> bytes:
    """The self-contained HTML report of one run, as bytes (made on the download click)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="qcal-report-") as tmp:
        return Path(qcal.report(_store().load(run_id), Path(tmp) / "report.html")).read_bytes()


def share_link(run_id: str, page: str = "compare") -> str:
    """A URL that opens ``run_id`` on ``page`` of this server."""
    from urllib.parse import urlsplit

    parts = urlsplit(st.context.url or "http://localhost:8501/")
    path = parts.path.rstrip("/")
    if path.rsplit("/", 1)[-1] in PAGE_PATHS:
        path = path.rsplit("/", 1)[0]
    page = "" if page == "compare" else page  # the default page lives at the root URL
    return f"{parts.scheme}://{parts.netloc}{path}/{page}?run={run_id}"
