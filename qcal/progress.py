"""Progress callbacks: ``progress(fraction, message)`` as the library reports it.

``TerminalProgress`` draws a one-line bar on a terminal (stderr) for the CLI; the dashboard
draws ``st.progress`` from the same callback.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["TerminalProgress"]


class TerminalProgress:
    """A single-line text progress bar: ``[#####-----]  50% calibrating conv1``.

    On a non-terminal stream it prints a line only when the message changes, so logs stay
    readable.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 28) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""
        self._started = time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        filled = round(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self._started
        line = f"[{bar}] {fraction:4.0%} {message} ({elapsed:.1f}s)"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            if fraction >= 1.0:
                self.stream.write("\n")
        elif message != self._last:
            self.stream.write(line + "\n")
        self._last = message
        self.stream.flush()
