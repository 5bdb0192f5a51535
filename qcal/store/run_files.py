"""Reading run files from other people: untrusted SQLite files checked before use.

A run file (what ``Store.export`` writes) is data that crossed a trust boundary, so before
any of it reaches a store it must pass, in order: a size cap, the SQLite header, SQLite's own
``quick_check``, an exact schema (the same CREATE statements, no views or triggers, opened
read-only and immutable with ``trusted_schema=OFF``), a supported schema version, sane ids
and metadata, and a full decode of every frame with its checksum. Nothing is ever unpickled
or executed.
"""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

from qcal.store.codec import EncodedFrame, FrameCodecError, decode_frame
from qcal.store.schema import SCHEMA, StoreError, check_schema, read_run

__all__ = ["MAX_IMPORT_BYTES", "read_run_file"]

MAX_IMPORT_BYTES = 512 * 1024**2  # run files above this are refused unless the caller raises the cap
_EXPANSION = 64  # a frame's JSON may decompress to this many times the file size (repeated strings)
_SQLITE_HEADER = b"SQLite format 3\x00"
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

RunRows = tuple[str, str, list[tuple[str, EncodedFrame]]]  # (id, canonical meta JSON, frames)


def _check_file(path: Path, max_bytes: int) -> None:
    if not path.is_file():
        raise StoreError(f"no run file {path} (it does not exist or is not a file)")
    size = path.stat().st_size
    if size > max_bytes:
        raise StoreError(
            f"{path} is {size / 2**20:.1f} MiB, over the import limit of {max_bytes / 2**20:.1f} MiB; "
            "pass max_bytes= to accept larger run files"
        )
    with path.open("rb") as file:
        header = file.read(len(_SQLITE_HEADER))
    if header != _SQLITE_HEADER:
        raise StoreError(f"{path} is not a qcal run file: it is not an SQLite database (it starts with {header!r})")


def _check_objects(conn: sqlite3.Connection, path: Path) -> None:
    """Only our tables, created by exactly our statements, plus SQLite's own key indexes."""
    expected = {name: f"CREATE TABLE {name} ({columns})" for name, columns in SCHEMA.items()}
    for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master"):
        ok = (kind == "table" and expected.get(name) == sql) or (
            kind == "index" and sql is None and name.startswith("sqlite_autoindex_")
        )
        if not ok:
            raise StoreError(
                f"{path} is not a qcal run file: unexpected {kind} {name!r} in its schema "
                f"(a run file holds only the tables {sorted(SCHEMA)})"
            )


def _checked_run(conn: sqlite3.Connection, path: Path, run_id: object, max_expanded: int) -> RunRows:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise StoreError(f"{path} holds a run with an invalid id {run_id!r} (expected 1-64 letters, digits, _ or -)")
    meta_json, frames = read_run(conn, run_id) or ("null", [])
    meta = json.loads(meta_json)
    if not isinstance(meta, dict) or not isinstance(meta.get("created", ""), str):
        raise StoreError(f"{path}: run {run_id!r} has metadata that is not a JSON object with a string 'created'")
    for name, frame in frames:
        if not isinstance(name, str) or not name:
            raise StoreError(f"{path}: run {run_id!r} has a frame without a name")
        try:
            decode_frame(frame, max_bytes=max_expanded)  # validates lengths, dtypes and the checksum; then dropped
        except FrameCodecError as err:
            raise StoreError(f"{path}: frame {name!r} of run {run_id!r} is damaged: {err}") from err
    return run_id, json.dumps(meta, sort_keys=True, ensure_ascii=True), frames


def _open_read_only(path: Path) -> sqlite3.Connection:
    """Read-only, never writing; a live store's WAL is read when its folder allows, else the file alone."""
    for params in ("mode=ro", "mode=ro&immutable=1"):
        conn = sqlite3.connect(f"file:{quote(str(path))}?{params}", uri=True, isolation_level=None)
        try:
            conn.execute("PRAGMA trusted_schema = OFF")  # schema-defined SQL may call no risky functions
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as err:
            conn.close()
            if not getattr(err, "sqlite_errorname", "").startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
                raise
    raise StoreError(f"{path} cannot be opened for reading")


def read_run_file(path: Path, *, max_bytes: int = MAX_IMPORT_BYTES) -> list[RunRows]:
    """Every run in an untrusted run file, checked; nothing is written anywhere.

    Args:
        path: an exported run file (or a whole store file).
        max_bytes: the largest file accepted.

    Returns:
        (id, metadata JSON, encoded frames) per run, oldest first, ready for a store to insert.

    Raises:
        StoreError: with the file name and the reason: missing, too large, not SQLite,
            corrupted, not a qcal schema, newer schema version, or a damaged run.
    """
    path = Path(path).expanduser().absolute()
    _check_file(path, max_bytes)
    try:
        with closing(_open_read_only(path)) as conn:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise StoreError(f"{path} is a corrupted SQLite file ({'; '.join(problems)}); ask for a fresh export")
            _check_objects(conn, path)
            if not check_schema(conn, path, create=False):
                raise StoreError(f"{path} is not a qcal run file: it is an empty SQLite database")
            ids = [row[0] for row in conn.execute("SELECT id FROM runs ORDER BY created, rowid")]
            return [_checked_run(conn, path, run_id, _EXPANSION * max(path.stat().st_size, 2**20)) for run_id in ids]
    except sqlite3.Error as err:
        raise StoreError(f"{path} is not a readable qcal run file: {err}; ask for a fresh export") from err
    except StoreError:
        raise
    except (ValueError, TypeError, RecursionError) as err:  # e.g. a TEXT column holding a number
        raise StoreError(f"{path} is not a valid qcal run file: {err}") from err
