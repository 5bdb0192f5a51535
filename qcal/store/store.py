"""Saved runs in an embedded SQLite file: save, list, load, delete, export and import.

One store is one SQLite file (``QCAL_STORE``: a path or a ``sqlite:///`` URL; default
``data/runs.sqlite``). Tables::

    qcal_meta(key, value)                       schema_version, application
    runs(id, created, meta, digest)             meta: JSON object; digest: sha256 of the run
    frames(run_id, name, position, n_rows, layout, digest)
    columns(run_id, frame, position, name, dtype, encoding, data)   one row per frame column

Frames are stored column by column through ``qcal.store.codec`` (raw numeric bytes, string
dictionaries or JSON; never pickle), so any frame name and column set fits without a schema
change, and dtypes, NaN, unicode and list cells come back exactly. Every save
is one ``BEGIN IMMEDIATE`` transaction: a killed writer leaves nothing behind, and concurrent
writers (WAL mode, 30 s busy timeout) wait for each other instead of failing. Each operation
opens its own connection, so a ``Store`` may be shared between threads.

An exported run is a standalone file with this same schema; importing treats the file as
untrusted: size cap, SQLite header, ``quick_check``, exact schema, then every frame is decoded
and checked before anything is written.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from qcal.store.codec import EncodedFrame, FrameCodecError, decode_frame, encode_frame
from qcal.store.connection import Connections
from qcal.store.location import default_store_url, store_path
from qcal.store.run_files import MAX_IMPORT_BYTES, RunRows, read_run_file
from qcal.store.runs import Run, RunInfo, encode_meta, environment, utc_now
from qcal.store.schema import (
    SCHEMA_VERSION,
    StoreError,
    insert_run,
    read_run,
    run_digest,
)

__all__ = ["MAX_IMPORT_BYTES", "SCHEMA_VERSION", "Run", "RunInfo", "Store", "StoreError", "default_store_url"]

_LIST_COLUMNS = ["id", "created", "title", "model", "model_source", "schemes", "backends",
                 "data_description", "data_fingerprint", "frames", "qcal_version", "torch_version",
                 "cpu_capability"]  # fmt: skip


def _run_id(run_id: object) -> str:
    if not isinstance(run_id, str):
        raise TypeError(f"a run id is a string such as '3f2a9c0b1d4e', got {type(run_id).__name__} {run_id!r}")
    return run_id


class Store:
    """A run store: one SQLite file holding any number of saved runs.

    Args:
        url_or_path: a file path or a ``sqlite:///`` URL; None reads ``QCAL_STORE`` and falls
            back to ``data/runs.sqlite`` (see ``default_store_url``). The file and its folder
            are created on the first save.
        busy_timeout: seconds a writer waits for another writer before giving up.

    Example:
        >>> store = Store("/tmp/runs.sqlite")
        >>> run_id = store.save({"summary": cmp.summary}, {"model": "digits_mlp"})
        >>> store.load(run_id).summary   # the same DataFrame, dtypes included
    """

    def __init__(self, url_or_path: str | os.PathLike[str] | None = None, *, busy_timeout: float = 30.0) -> None:
        self._path = store_path(url_or_path)
        self._timeout = float(busy_timeout)
        self._db = Connections(self._path, self._timeout, wal=self._wal)

    @property
    def path(self) -> Path:
        """The store's file."""
        return self._path

    def __repr__(self) -> str:
        return f"Store({str(self._path)!r})"

    _wal = True  # concurrent readers and writers; run files use a rollback journal instead

    # ----------------------------------------------------------------- public operations

    def save(self, frames: Mapping[str, pd.DataFrame], meta: Mapping[str, Any] | RunInfo | None = None) -> str:
        """Save a run in one transaction and return its new id.

        Args:
            frames: frame name -> DataFrame (any names; qcal's are summary, layers, scales,
                histograms, samples). Dtypes, NaN, unicode and list-valued cells are kept.
            meta: metadata (a JSON-like dict or a ``RunInfo``). ``created`` (UTC now) and the
                ``environment()`` keys are added when missing; the caller's dict is not changed.

        Returns:
            The run id: 12 hex digits.

        Raises:
            StoreError: the store is read-only, corrupted, or busy for longer than the timeout,
                or a frame or metadata value cannot be stored.
        """
        meta = dict(meta.to_meta() if isinstance(meta, RunInfo) else meta or {})
        meta.setdefault("created", utc_now())
        if not isinstance(meta["created"], str):
            raise StoreError(f"meta['created'] must be a UTC ISO time string, got {meta['created']!r}")
        env = environment() if any(k not in meta for k in ("torch_version", "cpu_capability", "vnni", "qcal_version")) else {}
        meta = {**env, **meta}
        return self._write([(uuid.uuid4().hex[:12], encode_meta(meta), self._encode(frames))])[0]

    def save_comparison(self, comparison: Any, *, title: str = "") -> str:
        """Save a ``qcal.compare`` result (its five frames and metadata) as a run; returns its id.

        Args:
            comparison: a ``qcal.Comparison``.
            title: an optional title shown in run lists.
        """
        meta = dict(comparison.meta)
        if title:
            meta["title"] = title
        return self.save(comparison.frames(), meta)

    def list(self) -> pd.DataFrame:
        """One row per run, newest first.

        Returns:
            Columns id, created, title, model, model_source, schemes, backends (joined by ","),
            data_description, data_fingerprint, frames (names joined by ","), qcal_version,
            torch_version, cpu_capability; all strings.
        """
        rows = []
        with self._db.read() as conn:
            if conn is not None:
                names: dict[str, list[str]] = {}
                for run_id, name in conn.execute("SELECT run_id, name FROM frames ORDER BY run_id, position"):
                    names.setdefault(run_id, []).append(name)
                for run_id, meta_json in conn.execute("SELECT id, meta FROM runs ORDER BY created DESC, rowid DESC"):
                    meta = json.loads(meta_json)
                    row = {c: meta.get(c) for c in _LIST_COLUMNS}
                    row.update(id=run_id, frames=names.get(run_id, []))
                    rows.append({k: ",".join(map(str, v)) if isinstance(v, list) else "" if v is None else str(v) for k, v in row.items()})
        return pd.DataFrame(rows, columns=_LIST_COLUMNS, dtype=str)

    def load(self, run_id: str) -> Run:
        """The run with this id: its metadata and frames, exactly as saved.

        Raises:
            StoreError: no such run (the message says how to list ids), or the store is corrupted.
        """
        with self._db.read() as conn:
            found = conn and read_run(conn, _run_id(run_id))
        if not found:
            raise self._not_found(run_id)
        meta, encoded = found
        try:
            frames = {name: decode_frame(frame) for name, frame in encoded}
        except FrameCodecError as err:
            raise StoreError(f"run {run_id!r} in {self._path} is damaged: {err}") from err
        return Run(run_id, json.loads(meta), frames)

    def delete(self, run_id: str) -> None:
        """Remove a run and its frames (one transaction).

        Raises:
            StoreError: no such run, or the store is read-only.
        """
        with self._db.transaction("delete a run from") as conn:
            conn.execute("DELETE FROM columns WHERE run_id = ?", (_run_id(run_id),))
            conn.execute("DELETE FROM frames WHERE run_id = ?", (run_id,))
            if conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 0:
                raise self._not_found(run_id)

    def export(self, run_id: str, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write one run to a standalone SQLite file with this store's schema.

        The file appears atomically (written beside ``path``, then renamed).

        Args:
            run_id: the run to export.
            path: the file to write; its folder is created.
            overwrite: replace an existing file instead of refusing.

        Returns:
            ``path`` as an absolute Path.
        """
        target = Path(path).expanduser().absolute()
        if target.exists() and target.resolve() == self._path.resolve():
            raise StoreError(f"{target} is this store itself; export to another file")
        if target.exists() and not overwrite:
            raise StoreError(f"{target} already exists; choose another path or pass overwrite=True")
        with self._db.read() as conn:
            found = conn and read_run(conn, _run_id(run_id))
        if not found:
            raise self._not_found(run_id)
        meta_json, encoded = found
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        single = _RunFile(partial, busy_timeout=self._timeout)
        try:
            single._write([(run_id, meta_json, encoded)])
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def import_(self, path: str | os.PathLike[str], *, max_bytes: int = MAX_IMPORT_BYTES) -> str:
        """Merge a one-run file (as ``export`` writes) into this store and return the run's id.

        Importing the same run again is a no-op returning the same id. The file is untrusted:
        it must be a qcal run file no larger than ``max_bytes`` and every frame must decode.

        Raises:
            StoreError: the file is missing, too large, not SQLite, corrupted, not a qcal run
                file, holds other than one run (use ``import_all``), or its run id exists here
                with different contents.
        """
        runs = read_run_file(Path(path), max_bytes=max_bytes)
        if len(runs) != 1:
            raise StoreError(f"{path} holds {len(runs)} runs, not one; use Store.import_all to merge them all")
        return self._write(runs)[0]

    def export_bytes(self, run_id: str) -> bytes:
        """The portable run file of one run (as ``export`` writes it), as bytes: for downloads.

        Raises:
            StoreError: no such run.
        """
        with tempfile.TemporaryDirectory(prefix="qcal-export-") as tmp:
            return self.export(run_id, Path(tmp) / "run.sqlite").read_bytes()

    def import_bytes(self, data: bytes, *, max_bytes: int = MAX_IMPORT_BYTES) -> str:
        """Merge an uploaded run file, given as bytes, into this store; returns the run's id.

        The bytes are untrusted, checked as ``import_`` checks a file (size cap first, before
        anything is written to disk).

        Raises:
            StoreError: too large, or not a valid one-run qcal run file (see ``import_``).
        """
        if len(data) > max_bytes:
            raise StoreError(f"the uploaded run file is {len(data) / 2**20:.1f} MiB, over the import "
                             f"limit of {max_bytes / 2**20:.1f} MiB; pass max_bytes= to accept larger")
        with tempfile.TemporaryDirectory(prefix="qcal-import-") as tmp:
            path = Path(tmp) / "upload.sqlite"
            path.write_bytes(data)
            return self.import_(path, max_bytes=max_bytes)

    def import_all(self, path: str | os.PathLike[str], *, max_bytes: int = MAX_IMPORT_BYTES) -> list[str]:
        """Merge every run of a run file or another store into this store; see ``import_``.

        Returns:
            The imported ids, oldest first (already present identical runs included).
        """
        return self._write(read_run_file(Path(path), max_bytes=max_bytes))

    def __contains__(self, run_id: object) -> bool:
        if not isinstance(run_id, str):
            return False
        with self._db.read() as conn:
            return conn is not None and conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None

    # ----------------------------------------------------------------- internals

    def _encode(self, frames: Mapping[str, pd.DataFrame]) -> list[tuple[str, EncodedFrame]]:
        if not isinstance(frames, Mapping) or not all(isinstance(k, str) and k for k in frames):
            raise StoreError(f"frames must be a dict of name -> DataFrame with non-empty string names; got {type(frames).__name__}")
        try:
            return [(name, encode_frame(frame)) for name, frame in frames.items()]
        except FrameCodecError as err:
            raise StoreError(f"cannot store this run: {err}") from err

    def _write(self, runs: list[RunRows]) -> list[str]:
        """Insert runs in one transaction; a run already here with the same digest is skipped."""
        with self._db.transaction("save a run in") as conn:
            for run_id, meta_json, frames in runs:
                digest = run_digest(meta_json, frames)
                row = conn.execute("SELECT digest FROM runs WHERE id = ?", (run_id,)).fetchone()
                if row is None:
                    created = str(json.loads(meta_json).get("created", ""))
                    insert_run(conn, run_id, created, meta_json, digest, frames)
                elif row[0] != digest:
                    raise StoreError(
                        f"run {run_id!r} already exists in {self._path} with different contents; "
                        f"delete it first (`python -m qcal runs delete {run_id}`) to replace it"
                    )
        return [run_id for run_id, _, _ in runs]

    def _not_found(self, run_id: object) -> StoreError:
        return StoreError(f"no run {run_id!r} in {self._path}; `python -m qcal runs list` shows the ids")


class _RunFile(Store):
    """An exported run file: a rollback journal keeps it one self-contained file (no -wal/-shm)."""

    _wal = False
