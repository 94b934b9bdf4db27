"""pods/log as the kubelet serves it (live/04, 08, 13, 16, 17, 19, log-follow-stream).

- 400 ``container "x" in pod "p" is waiting to start: REASON`` until the container has run;
  400 ``previous terminated container ...`` (ephemeral containers are never restarted);
- ``timestamps=true`` prefixes kubelet's fixed nine-digit RFC3339Nano time;
- ``sinceTime`` has whole-second precision (the apiserver re-encodes it as RFC3339 for the
  kubelet), so lines earlier in that second come back; ``sinceSeconds``, ``tailLines``,
  ``limitBytes``;
- ``follow=true`` sends one chunk per line and ends about a second after the process exits;
  the ``break_log_after`` fault cuts it without the final chunk.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import TYPE_CHECKING

from . import status as st

if TYPE_CHECKING:
    from .kubelet import ContainerRun, Kubelet

FOLLOW_GRACE = 1.0


def rfc3339nano(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    base = _dt.datetime.fromtimestamp(secs, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


def parse_rfc3339(text: str) -> float:
    text = text.strip().replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(digits):]
        text = f"{head}.{digits[:6]}{tz}"
    return _dt.datetime.fromisoformat(text).timestamp()


def log_source(kubelet: Kubelet, pod: dict, container: str, ephemeral: bool, previous: bool) -> ContainerRun:
    ns, name = pod["metadata"].get("namespace", ""), pod["metadata"]["name"]
    if previous:
        raise st.bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
    if ephemeral:
        run = kubelet.run(ns, name, container)
        if run is None or run.state == "waiting":
            reason = run.reason if run else "ContainerCreating"
            raise st.bad_request(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        return run
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    cs = next((s for s in statuses if s.get("name") == container), None)
    if cs is None or "waiting" in (cs.get("state") or {}):
        reason = ((cs or {}).get("state", {}).get("waiting") or {}).get("reason", "ContainerCreating")
        raise st.bad_request(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
    return kubelet.regular(ns, name, container)

def serve_log(kubelet: Kubelet, ex, pod: dict) -> None:
    q = ex.query
    container, ephemeral = kubelet.pick_container(pod, q.get("container"))
    ns, name = pod["metadata"].get("namespace", ""), pod["metadata"]["name"]
    if not (pod.get("spec") or {}).get("nodeName"):
        ex.send_text(200, b"")
        return
    kubelet.check_reachable(pod, f"/containerLogs/{ns}/{name}/{container}")
    run = log_source(kubelet, pod, container, ephemeral, ex.flag("previous"))
    since_ns = None
    if q.get("sinceTime"):
        try:
            since_ns = int(parse_rfc3339(q["sinceTime"])) * 1_000_000_000  # RFC3339 re-encoding: seconds
        except ValueError:
            raise st.bad_request(f'parsing time "{q["sinceTime"]}" as "2006-01-02T15:04:05Z07:00": cannot parse') from None
    elif q.get("sinceSeconds"):
        since_ns = time.time_ns() - int(q["sinceSeconds"]) * 1_000_000_000
    tail = int(q["tailLines"]) if q.get("tailLines") else None
    limit = int(q["limitBytes"]) if q.get("limitBytes") else None
    stamps = ex.flag("timestamps")

    def fmt(ts: int, line: bytes) -> bytes:
        return (rfc3339nano(ts).encode() + b" " + line) if stamps else line

    with run.cond:
        lines = [(i, ts, line) for i, (ts, line) in enumerate(run.lines) if since_ns is None or ts >= since_ns]
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        sent = len(run.lines)
    if not ex.flag("follow"):
        data = b"".join(fmt(ts, line) for _, ts, line in lines)
        ex.send_text(200, data[:limit] if limit is not None else data)
        return
    ex.start_stream(200, "text/plain")
    pending = lines
    while True:
        for i, ts, line in pending:
            every = kubelet.faults.log_break()
            # The connection breaks at log positions N, 2N, 3N ...: a resumed stream that
            # replays the sinceTime second still gets N lines further than the last cut.
            if every is not None and i >= run.cut_mark + every:
                run.cut_mark = i
                kubelet.faults.used_log_break()
                ex.abort()
                return
            if not ex.write_chunk(fmt(ts, line)):
                return
        with run.cond:
            while len(run.lines) == sent and not kubelet.stopping:
                if run.exited_at is not None and time.monotonic() - run.exited_at >= FOLLOW_GRACE:
                    break
                run.cond.wait(timeout=0.2)
            pending = [(i, *run.lines[i]) for i in range(sent, len(run.lines))]
            sent = len(run.lines)
            done = not pending and (kubelet.stopping or (run.exited_at is not None
                                                      and time.monotonic() - run.exited_at >= FOLLOW_GRACE))
        if done:
            ex.end_stream()
            return
