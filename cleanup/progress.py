"""A one-line progress display for a terminal; shown only when stderr is a terminal."""

from __future__ import annotations

import time
from typing import TextIO

from cleanup.runner import Progress


class TerminalProgress:
    """Redraws one status line at most a few times a second."""

    def __init__(self, stream: TextIO, *, interval_s: float = 0.2) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._last = 0.0
        self._width = 0

    def __call__(self, state: Progress) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            return
        self._last = now
        self._draw(describe(state))

    def clear(self) -> None:
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def _draw(self, line: str) -> None:
        padding = " " * max(0, self._width - len(line))
        self._stream.write("\r" + line + padding)
        self._stream.flush()
        self._width = len(line)


def describe(state: Progress) -> str:
    """The status line for a state: `listing 12/100 repositories, 40/90 pull requests`."""
    total = "?" if state.repositories_total is None else str(state.repositories_total)
    parts = [
        f"{state.phase}: {state.repositories_listed}/{total} repositories",
        f"{state.lookups_done}/{state.lookups_total} pull requests",
    ]
    if state.steps_total:
        parts.append(f"{state.steps_done}/{state.steps_total} deletions")
    return ", ".join(parts)
