"""The run store's SQLite schema, its version check, and sqlite3 errors as readable messages.

Shared by ``qcal.store.store`` (the store itself) and ``qcal.store.run_files`` (untrusted run files),
which must agree on one schema: an exported run file is a store holding one run.
"""

from __future__ import annotations

import errno
import hashlib
import sqlite3
from pathlib import Path

from qcal.store.codec import EncodedColumn, EncodedFrame

__all__ = ["SCHEMA", "SCHEMA_VERSION", "StoreError", "check_schema", "insert_run", "os_error",
           "read_run", "run_digest", "sqlite_error"]  # fmt: skip

SCHEMA_VERSION = 1
APPLICATION_ID = 0x7163616C  # 'qcal' in ASCII, so `file` and PRAGMA application_id tell our files apart

# table -> column definitions. A frame is rows of `columns`, so new frame names or columns
# never need a schema change.
SCHEMA: dict[str, str] = {
    "qcal_meta": "key TEXT PRIMARY KEY, value TEXT NOT NULL",
    "runs": "id TEXT PRIMARY KEY, created TEXT NOT NULL, meta TEXT NOT NULL, digest TEXT NOT NULL",
    "frames": "run_id TEXT NOT NULL REFERENCES runs(id), name TEXT NOT NULL, "
    "position INTEGER NOT NULL, n_rows INTEGER NOT NULL, layout TEXT NOT NULL, "
    "digest TEXT NOT NULL, PRIMARY KEY (run_id, name)",
    "columns": "run_id TEXT NOT NULL, frame TEXT NOT NULL, position INTEGER NOT NULL, "
    "name TEXT NOT NULL, dtype TEXT NOT NULL, encoding TEXT NOT NULL, data BLOB NOT NULL, "
    "PRIMARY KEY (run_id, frame, position), FOREIGN KEY (run_id, frame) REFERENCES frames(run_id, name)",
}


class StoreError(ValueError):
    """A run store or run file cannot be used; the message names the file and what to do."""


def check_schema(conn: sqlite3.Connection, path: Path, *, create: bool) -> bool:
    """True when ``conn`` holds a qcal store this version reads; an empty file gets the schema if ``create``.

    Raises:
        StoreError: the database holds other tables, or a newer schema version.
    """
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        if create:
            for name, columns in SCHEMA.items():
                conn.execute(f"CREATE TABLE {name} ({columns})")
            conn.executemany(
                "INSERT INTO qcal_meta VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("application", "qcal")],
            )
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        return create
    if not set(SCHEMA) <= tables:
        raise StoreError(
            f"{path} is an SQLite database but not a qcal run store (its tables are "
            f"{sorted(tables)}, not {sorted(SCHEMA)}); point QCAL_STORE at another file"
        )
    row = conn.execute("SELECT value FROM qcal_meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row and str(row[0]).isdigit() else None
    if version is None or version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has run-store schema version {version}; this qcal reads versions up to "
            f"{SCHEMA_VERSION}: upgrade qcal to open it"
        )
    return True


def _read_only(path: Path, action: str, err: Exception) -> StoreError:
    return StoreError(
        f"cannot {action} the run store {path}: the location is read-only ({err}). Choose a "
        "writable store with QCAL_STORE, e.g. `export QCAL_STORE=$HOME/qcal-runs.sqlite` "
        "(a file path or a sqlite:/// URL)"
    )


def os_error(err: OSError, path: Path, action: str) -> StoreError:
    """An OSError met while creating the store's folder or file, as a StoreError."""
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return _read_only(path, action, err)
    return StoreError(f"cannot {action} the run store {path}: {err}")


def sqlite_error(err: sqlite3.Error, path: Path, action: str) -> StoreError:
    """A sqlite3 error as a StoreError that names the file and the way out."""
    code = getattr(err, "sqlite_errorname", "")
    if code.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        return StoreError(
            f"the run store {path} is corrupted or not an SQLite database ({err}). Move it away "
            f"(e.g. `mv {path} {path}.broken`) so qcal starts a fresh store there, or set "
            "QCAL_STORE to another file"
        )
    if code.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        return _read_only(path, action, err)
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreError(f"the run store {path} stayed locked by another writer; try again ({err})")
    if code.startswith("SQLITE_FULL"):
        return StoreError(f"cannot {action} the run store {path}: the disk is full ({err})")
    return StoreError(f"cannot {action} the run store {path}: {err}")


def run_digest(meta_json: str, frames: list[tuple[str, EncodedFrame]]) -> str:
    """sha256 over the metadata and each frame's name and digest: equal runs, equal digests."""
    digest = hashlib.sha256(meta_json.encode() + b"\0")
    for name, frame in frames:
        digest.update(f"{name}\0{frame.digest}\0".encode())
    return digest.hexdigest()


def insert_run(conn: sqlite3.Connection, run_id: str, created: str, meta_json: str, digest: str,
               frames: list[tuple[str, EncodedFrame]]) -> None:  # fmt: skip
    """Insert one run's rows (inside the caller's transaction)."""
    conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (run_id, created, meta_json, digest))
    for position, (name, frame) in enumerate(frames):
        conn.execute(
            "INSERT INTO frames VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, name, position, frame.n_rows, frame.layout, frame.digest),
        )
        conn.executemany(
            "INSERT INTO columns VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(run_id, name, i, c.name, c.dtype, c.encoding, c.data) for i, c in enumerate(frame.columns)],
        )


def read_run(conn: sqlite3.Connection, run_id: str) -> tuple[str, list[tuple[str, EncodedFrame]]] | None:
    """One run's metadata JSON and encoded frames (in saving order), or None if absent."""
    conn.execute("BEGIN")  # one snapshot, even while another process deletes the run
    try:
        row = conn.execute("SELECT meta FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        columns: dict[str, list[EncodedColumn]] = {}
        query = "SELECT frame, name, dtype, encoding, data FROM columns WHERE run_id = ? ORDER BY frame, position"
        for frame, name, dtype, encoding, data in conn.execute(query, (run_id,)):
            columns.setdefault(frame, []).append(EncodedColumn(name, dtype, encoding, bytes(data)))
        query = "SELECT name, n_rows, layout, digest FROM frames WHERE run_id = ? ORDER BY position"
        frames = [
            (name, EncodedFrame(int(n_rows), layout, tuple(columns.get(name, ())), digest))
            for name, n_rows, layout, digest in conn.execute(query, (run_id,))
        ]
        return row[0], frames
    finally:
        conn.execute("COMMIT")
