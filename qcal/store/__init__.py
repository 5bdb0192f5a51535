"""Runs in SQLite: the schema, where the store lives, the frame codec and portable run files.

The public names of ``qcal.store`` are those of ``qcal/store/store.py`` (its ``__all__``).
"""

from qcal.store import store as _module
from qcal.store.store import *  # noqa: F403  (the package face: exactly the module's __all__, listed once)

__all__ = list(_module.__all__)
