"""The size cap every untrusted file passes before it is read (checkpoints, tensor files, run files).

Each reader keeps its own error type and wording (a run file's errors are ``StoreError``s that
name the import limit; a checkpoint's are ValueErrors that name ``--max-mb``); the rule is one:
the path must be a file, and its size at most the cap. No torch here: the store imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["capped_size"]


def capped_size(path: Path, max_bytes: int, *, missing: str, too_big: Callable[[int], str],
                error: type[Exception] = ValueError) -> int:
    """The size of ``path`` in bytes, at most ``max_bytes``.

    Args:
        path: the file to check.
        max_bytes: the cap.
        missing: the message when ``path`` is not a file.
        too_big: builds the message from the file's size when it is over the cap.
        error: the exception type raised (ValueError unless the caller has its own).
    Raises:
        ``error``: a missing file, or one over the cap.
    """
    if not path.is_file():
        raise error(missing)
    size = path.stat().st_size
    if size > max_bytes:
        raise error(too_big(size))
    return size
