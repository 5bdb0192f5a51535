"""Where qcal keeps generated files (zoo weights, example checkpoints, the runs store).

Torch-free on purpose: the store and the CLI read it before anything heavy is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir"]


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """``override``, else ``$QCAL_DATA_DIR``, else the repository's ``data/`` folder."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("QCAL_DATA_DIR")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "data"
