"""Where the run store lives: an explicit path or URL, else ``$QCAL_STORE``, else ``data/runs.sqlite``.

``QCAL_STORE`` and the ``url_or_path`` argument accept a file path or an SQLAlchemy-style
``sqlite:///`` URL (three slashes and a relative path, four for an absolute one; %-escapes
decoded). ``data/`` is ``$QCAL_DATA_DIR`` if set, else the ``data`` folder beside the package.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

from qcal.paths import data_dir
from qcal.store.schema import StoreError

__all__ = ["data_dir", "default_store_url", "store_path"]


def store_path(url_or_path: str | os.PathLike[str] | None) -> Path:
    """The absolute store file for a path, a ``sqlite:///`` URL, or None (the default).

    Raises:
        StoreError: a URL that is not a file URL, ``:memory:``, or a folder.
    """
    value = os.fspath(url_or_path) if url_or_path is not None else os.environ.get("QCAL_STORE", "")
    if not value:
        return (data_dir() / "runs.sqlite").absolute()
    if value.startswith("sqlite:"):
        if not value.startswith("sqlite:///"):
            raise StoreError(f"store URL {value!r} is not a file URL; use sqlite:///relative/path or sqlite:////absolute/path")
        value = unquote(value[len("sqlite:///") :].partition("?")[0])
    path = Path(value).expanduser().absolute()
    if value in ("", ":memory:") or path.is_dir():
        raise StoreError(f"store location {url_or_path or value!r} names no file; give a file path (e.g. runs.sqlite) or a sqlite:/// URL of a file")
    return path


def default_store_url() -> str:
    """The store ``Store()`` opens: ``$QCAL_STORE`` if set, else ``data/runs.sqlite``, as a ``sqlite:///`` URL.

    ``data/`` is ``$QCAL_DATA_DIR`` if set, else the ``data`` folder beside the ``qcal`` package.
    """
    return f"sqlite:///{store_path(None)}"
