"""Which pods a trace covered, and for how long: what "deploy/web for 5 minutes" really saw.

A workload's pods come and go while it is traced (rollouts, evictions, crashes). The trace
follows them (kube/follow.py); this keeps the account: each pod's span, which pod went away,
which new pod replaced it. A pod that went away with no replacement traced is a gap — the
workload asked its questions, for the rest of the run, where nobody listened — and the run
says so and ends with its own exit code (COVERAGE_GAP), never as if it had covered it all.

Pairing is by workload (the follow that found them), oldest first: a rolling update starts
the new pod before the old one stops, so a replacement may be traced before its predecessor
goes away.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Span:
    key: str  # "ns/pod"
    group: str  # the workload that found it: "deploy/web"
    start: float  # wall clock: capturing from
    end: float | None = None  # went away (or the run ended)
    why: str = ""  # why it ended early: "terminating", "deleted", ...
    replaced_by: str = ""
    replaces: str = ""
    added: bool = False  # attached during the run (followed), not at the start


@dataclass(slots=True)
class Coverage:
    spans: dict[str, Span] = field(default_factory=dict)

    def traced(self, key: str, group: str, at: float | None = None, added: bool = False) -> str:
        """A pod whose capture runs now; returns what to tell the user ("" at the start)."""
        span = self.spans.get(key)
        if span is None:
            span = self.spans[key] = Span(key, group, time.time() if at is None else at,
                                          added=added)
        if not added:
            return ""
        gone = self._unreplaced(group)
        if gone is not None:
            gone.replaced_by, span.replaces = key, gone.key
            return f"now tracing {key}: it replaces {gone.key} of {group}"
        return f"now tracing {key}: a new pod of {group}"

    def gone(self, key: str, why: str, at: float | None = None, group: str = "") -> str:
        """A traced pod went away; ``group``: its workload, when the start did not say."""
        span = self.spans.get(key)
        if span is None or span.end is not None:
            return ""
        span.group = span.group or group
        span.end, span.why = (time.time() if at is None else at), why
        new = self._spare(span.group, key)
        if new is not None:
            span.replaced_by, new.replaces = new.key, key
            return (f"{key} went away ({why}); its replacement {new.key} is traced since "
                    f"{_clock(new.start)}")
        return (f"{key} went away ({why}); no replacement of {span.group} is traced yet: "
                "its queries from now on are not seen until one runs")

    def _unreplaced(self, group: str) -> Span | None:
        return next((s for s in self.spans.values()
                     if s.group == group and s.end is not None and not s.replaced_by), None)

    def _spare(self, group: str, key: str) -> Span | None:
        return next((s for s in self.spans.values() if s.group == group and s.added
                     and s.key != key and not s.replaces and s.end is None), None)

    @property
    def changed(self) -> bool:
        return any(s.added or s.end is not None for s in self.spans.values())

    def gaps(self) -> list[Span]:
        return [s for s in self.spans.values() if s.end is not None and not s.replaced_by]

    def lines(self, until: float) -> list[str]:
        """One line per pod: its span and what became of it."""
        out = []
        for s in sorted(self.spans.values(), key=lambda s: (s.start, s.key)):
            end = s.end if s.end is not None else until
            text = f"{s.key}  {_clock(s.start)}-{_clock(end)} ({max(0.0, end - s.start):.0f}s)"
            if s.replaces:
                text += f", replaces {s.replaces}"
            if s.end is not None:
                text += f", went away ({s.why})"
                text += (f", replaced by {s.replaced_by}" if s.replaced_by
                         else ", not replaced: a gap")
            out.append(text)
        return out

    def json(self, until: float) -> list[dict]:
        return [{"pod": s.key, "workload": s.group, "from": s.start,
                 "to": s.end if s.end is not None else until, "went_away": s.why or None,
                 "replaces": s.replaces or None, "replaced_by": s.replaced_by or None}
                for s in sorted(self.spans.values(), key=lambda s: (s.start, s.key))]


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))
