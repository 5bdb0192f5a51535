"""Connections to one store file: reads that never create it, and write transactions.

Each operation opens its own connection (a ``Store`` may be shared between threads). Writes
are one ``BEGIN IMMEDIATE`` transaction each; stores use WAL (concurrent readers and writers),
run files a rollback journal (one self-contained file). SQLite and OS errors become
``StoreError``s that name the file and what to do.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from qcal.store.schema import check_schema, os_error, sqlite_error

__all__ = ["Connections"]


@dataclass(frozen=True)
class Connections:
    """How to open ``path``: busy ``timeout`` in seconds; ``wal`` for stores, not run files."""

    path: Path
    timeout: float
    wal: bool = True

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise sqlite_error(err, self.path, action) from err
        except OSError as err:  # creating the folder
            raise os_error(err, self.path, action) from err

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection | None]:
        if not self.path.exists():
            yield None  # reading never creates the store
            return
        with self.errors("read"), closing(self.open_reader()) as conn:
            yield conn if check_schema(conn, self.path, create=False) else None

    def open_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return conn
        except sqlite3.OperationalError as err:
            conn.close()
            if not getattr(err, "sqlite_errorname", "").startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
                raise
        # A WAL store in a folder we cannot write (no -shm possible): nobody can be writing it
        # through WAL from here, so read it as an immutable snapshot.
        return sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro&immutable=1", uri=True, isolation_level=None)

    @contextmanager
    def transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self.errors(action):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)) as conn:
                conn.execute("PRAGMA synchronous = NORMAL")  # with WAL: a killed process loses nothing committed
                if self.wal:
                    self.ensure_wal(conn)
                conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no half-way upgrade failures
                try:
                    check_schema(conn, self.path, create=True)
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")


    def ensure_wal(self, conn: sqlite3.Connection) -> None:
        """Switch a new store to WAL (persistent: once per file). SQLite answers a journal-mode
        switch that races another new writer with an immediate "locked", without waiting on
        the busy timeout, so the switch is retried until the mode is WAL or the timeout ends."""
        deadline = time.monotonic() + self.timeout
        while conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
