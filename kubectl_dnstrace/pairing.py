"""Replies to their queries, for the live lines of a trace and of ``analyze``: one exchange a line.

A reply is matched to its query by what the *client* end of the exchange and the message
carry — capture point, transport, client address and port, DNS id and question — never by
the server's address. Behind kube-proxy the two differ: a pod (or node-local-dns on the host
network) asks the kube-dns Service address, 10.96.0.10, and the reply comes back from the
CoreDNS pod that DNAT chose, so matching on the reversed address pair left every such query
"no response" (46 of 239 lines of a 20 s trace on a real cluster with NodeLocal DNSCache).

A query is "no response" only when its reply has not come within ``wait`` seconds: of event
time (a newer event from the captures) or of wall time (``expire`` from a live trace's tick,
when the captures go quiet). Exchanges come out in the time order of their first message:
a finished exchange waits behind an older one still waiting for its reply, so a late
"no response" line is never printed after lines that came later. With ``hold`` (a live
trace: several captures' log streams, each with its own lag) every exchange also waits that
long (event or wall time) for an earlier one from a slower stream.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kubectl_dnstrace.model import DnsEvent

T = TypeVar("T")  # what rides with an event (the pipeline's Attributed)

MAX_OPEN = 100_000  # exchanges held at once: a flood of unanswered queries stays bounded


def exchange_key(ev: DnsEvent) -> tuple:
    """The key a query and its reply share, whatever address the reply comes from."""
    if ev.qr == "query":
        client, port = ev.src, ev.sport
    else:
        client, port = ev.dst, ev.dport
    return (ev.observed_at, ev.proto, client, port, ev.id, ev.qname.lower(), ev.qtype)


@dataclass(slots=True)
class _Exchange(Generic[T]):
    ts: float
    query: T | None
    response: T | None = None
    due: float = 0.0  # wall clock after which an unanswered query is given up
    arrived: float = 0.0  # wall clock when its first message came
    done: bool = False
    key: tuple = field(default=())


class Pairing(Generic[T]):
    """Queries and replies in, finished exchanges ``(query, response)`` out, in time order.

    ``event_of`` gets the ``DnsEvent`` out of what is fed (so the pipeline can feed its
    attributed events). Either side of a pair may be None: None response is "no response",
    None query a reply whose query the capture did not see.
    """

    def __init__(self, event_of: Callable[[T], DnsEvent], wait: float = 3.0,
                 clock: Callable[[], float] = time.monotonic, hold: float = 0.0) -> None:
        self.event_of = event_of
        self.wait = wait
        self.hold = hold
        self.clock = clock
        self._open: dict[tuple, _Exchange[T]] = {}
        self._order: list[tuple[float, int, _Exchange[T]]] = []  # by first message's time
        self._seq = 0
        self._newest = float("-inf")

    def add(self, item: T) -> list[tuple[T | None, T | None]]:
        ev = self.event_of(item)
        key = exchange_key(ev)
        if ev.ts > self._newest:
            self._newest = ev.ts
        if ev.qr == "query":
            old = self._open.pop(key, None)
            if old is not None:  # asked again with the same id before a reply: it had none
                old.done = True
            if len(self._open) >= MAX_OPEN:
                self._give_up_oldest()
            now = self.clock()
            ex = _Exchange(ev.ts, item, due=now + self.wait, arrived=now, key=key)
            self._open[key] = ex
        else:
            ex = self._open.pop(key, None)
            if ex is not None:
                ex.response = item
                ex.done = True
                return self._ready()
            ex = _Exchange(ev.ts, None, item, done=True, arrived=self.clock())
        self._seq += 1
        bisect.insort(self._order, (ex.ts, self._seq, ex), key=lambda e: (e[0], e[1]))
        return self._ready()

    def expire(self) -> list[tuple[T | None, T | None]]:
        """Exchanges whose reply is overdue in wall time: a live trace calls this when quiet."""
        now = self.clock()
        for ex in list(self._open.values()):
            if ex.due <= now:
                self._close(ex)
        return self._ready()

    def flush(self) -> list[tuple[T | None, T | None]]:
        """Everything still held, in order: the end of the run."""
        for ex in list(self._open.values()):
            self._close(ex)
        return self._ready(everything=True)

    def __len__(self) -> int:
        return len(self._order)

    def _close(self, ex: _Exchange[T]) -> None:
        self._open.pop(ex.key, None)
        ex.done = True

    def _give_up_oldest(self) -> None:
        for _ts, _seq, ex in self._order:
            if not ex.done:
                self._close(ex)
                return

    def _ready(self, everything: bool = False) -> list[tuple[T | None, T | None]]:
        order = self._order
        out = []
        n = 0
        now = self.clock() if self.hold and not everything else None
        while n < len(order):
            ex = order[n][2]
            if now is not None and self._newest - ex.ts < self.hold and now - ex.arrived < self.hold:
                break  # another capture's stream may still bring an earlier message
            if not ex.done:
                if self._newest - ex.ts <= self.wait:
                    break
                self._close(ex)  # a newer event is past its wait: its reply is not coming
            out.append((ex.query, ex.response))
            n += 1
        if n:
            del order[:n]
        return out
