"""Progress on stderr: one line per pod while capture containers start, then a status line.

On a terminal the per-pod block is redrawn in place (with a spinner); anywhere else (a file,
CI logs) each change is one plain line, so logs stay readable. Data never goes here: stdout
is for results only, so ``-o json | jq`` keeps working.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

SPINNER = "|/-\\"


class Progress:
    """Thread-safe progress reporter for a set of named items (pods)."""

    def __init__(self, err: TextIO | None = None, interactive: bool | None = None) -> None:
        self.err = err or sys.stderr
        if interactive is None:
            isatty = getattr(self.err, "isatty", None)
            interactive = bool(isatty and isatty())
        self.interactive = interactive
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._state: dict[str, str] = {}
        self._drawn = 0
        self._tick = 0
        self._status_shown = False

    def set(self, key: str, state: str) -> None:
        """Record a new state for ``key``; prints it (or redraws the block)."""
        with self._lock:
            if key not in self._state:
                self._order.append(key)
            if self._state.get(key) == state:
                return
            self._state[key] = state
            if self.interactive:
                self._redraw()
            else:
                self.err.write(f"{key}: {state}\n")
                self.err.flush()

    def spin(self) -> None:
        """Advance the spinner (terminals only)."""
        if not self.interactive:
            return
        with self._lock:
            self._tick += 1
            self._redraw()

    def _redraw(self) -> None:
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}A")
        spin = SPINNER[self._tick % len(SPINNER)]
        for key in self._order:
            state = self._state[key]
            mark = spin if state.startswith(("waiting", "pending", "adding")) else " "
            out.append(f"\x1b[2K{mark} {key}: {state}\n")
        self._drawn = len(self._order)
        self.err.write("".join(out))
        self.err.flush()

    def done(self) -> None:
        """Freeze the block: later output starts below it."""
        with self._lock:
            self._drawn = 0

    def line(self, text: str) -> None:
        with self._lock:
            self._clear_status()
            self.err.write(text.rstrip("\n") + "\n")
            self.err.flush()
            self._drawn = 0

    def status(self, text: str) -> None:
        """One self-overwriting status line (terminals only; elsewhere it would be noise)."""
        if not self.interactive:
            return
        with self._lock:
            self._tick += 1
            spin = SPINNER[self._tick % len(SPINNER)]
            self.err.write(f"\r\x1b[2K{spin} {text}")
            self.err.flush()
            self._status_shown = True

    def clear_status(self) -> None:
        with self._lock:
            self._clear_status()

    def _clear_status(self) -> None:
        if self._status_shown:
            self.err.write("\r\x1b[2K")
            self.err.flush()
            self._status_shown = False
