"""How a trace ends when it is told to: Ctrl-C, SIGTERM, SIGHUP — all the same way.

A `timeout -s TERM`, a cancelled CI job, a closed terminal or SSH session must not leave
capture agents running to their deadline with no summary: SIGTERM and SIGHUP are turned
into the same exception as Ctrl-C (a ``KeyboardInterrupt``), so the one interrupt path of
the trace stops the agents, prints the summary and sets the documented exit code.

After SIGHUP the terminal is gone: writing to it fails (EIO). The streams a trace writes
to are wrapped so that a failed write is dropped instead of aborting the cleanup.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# One request to stop often arrives twice: GNU timeout signals the command and then its
# whole process group, and a closing terminal hangs up every process of the session. A second
# signal this soon after the first is that same request, not "stop waiting" (which a second
# Ctrl-C, a human's, still means).
REPEAT_WINDOW = 1.0  # seconds


def _raiser() -> Callable[[int, object], None]:
    last: dict[int, float] = {}

    def raise_terminated(signum: int, _frame: object) -> None:
        now = time.monotonic()
        if now - last.get(signum, -REPEAT_WINDOW) < REPEAT_WINDOW:
            return
        last[signum] = now
        raise Terminated(signum)

    return raise_terminated


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` in the main thread while inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    old = {s: signal.getsignal(s) for s in wanted}
    handler = _raiser()
    for s in wanted:
        if old[s] is not signal.SIG_IGN:  # nohup: the user asked to survive a hangup
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class QuietStream:
    """A text stream whose failed writes (a closed terminal or pipe) are dropped."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if self.broken:
            return len(text)
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            self.broken = True
            return len(text)

    def flush(self) -> None:
        if self.broken:
            return
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self.broken = True

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
