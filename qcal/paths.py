"""Where qcal keeps generated files (zoo weights, example checkpoints, the runs store).

From a checkout (an editable install, or running from the folder) that is the checkout's
``data/``; from an installed copy, the user's cache directory, never inside site-packages.
``$QCAL_DATA_DIR`` overrides both. Torch-free on purpose: the store and the CLI read it
before anything heavy is imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["checkout_root", "data_dir", "user_cache_dir"]

_INSTALL_FOLDERS = {"site-packages", "dist-packages"}


def checkout_root(package_dir: Path | None = None) -> Path | None:
    """The source checkout qcal runs from, or None for an installed copy.

    A checkout is the folder above the package that holds ``pyproject.toml``, outside any
    site-packages/dist-packages folder.
    """
    package_dir = package_dir or Path(__file__).resolve().parent
    root = package_dir.parent
    if _INSTALL_FOLDERS & set(root.parts) or not (root / "pyproject.toml").is_file():
        return None
    return root


def user_cache_dir() -> Path:
    """The per-user cache folder for qcal: ``$XDG_CACHE_HOME/qcal`` (default ~/.cache/qcal),
    ~/Library/Caches/qcal on macOS, %LOCALAPPDATA%\\qcal\\Cache on Windows."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "qcal" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "qcal"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qcal"


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """``override``, else ``$QCAL_DATA_DIR``, else the checkout's ``data/`` folder, else
    (an installed, non-editable copy) the user's cache directory."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("QCAL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    root = checkout_root()
    return root / "data" if root is not None else user_cache_dir()
