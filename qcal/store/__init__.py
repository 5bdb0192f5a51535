"""Runs in SQLite: the schema, where the store lives, the frame codec and portable run files.

The public names of ``qcal.store`` are defined in ``qcal/store/store.py`` and re-exported here.
"""

from qcal.store.store import (
    MAX_IMPORT_BYTES,
    SCHEMA_VERSION,
    Run,
    RunInfo,
    Store,
    StoreError,
    default_store_url,
)

__all__ = [
    "MAX_IMPORT_BYTES",
    "SCHEMA_VERSION",
    "Run",
    "RunInfo",
    "Store",
    "StoreError",
    "default_store_url",
]
