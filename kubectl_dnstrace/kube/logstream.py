"""Follow each agent's output through pods/log, resuming a broken stream without loss.

One stream per pod, each on its own ``Kube.clone()`` (own connection pool), each in its own
thread, all feeding one queue that the trace's main loop drains.

The log API gives no offsets, only ``sinceTime``. With ``timestamps=true`` every line starts
with the kubelet's RFC 3339 timestamp; after a break the stream is reopened with
``sinceTime`` set to the last timestamp seen (truncated to the second, because the API's
``metav1.Time`` may drop the fraction), and every record whose ``seq`` was already seen is
dropped. A ``seq`` that jumps forward after a resume means lines really were lost (for
example rotated away): counted and reported, never silently.

The stream of a live container ends about a second after the agent's last record (a real
kubelet closes it when the container exits); the agent's ``bye`` record is the real end.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kubectl_dnstrace import protocol
from kubectl_dnstrace.errors import AgentFailed, DnstraceError, Forbidden, NotFound
from kubectl_dnstrace.kube.client import Kube, iter_line_reads
from kubectl_dnstrace.model import PodRef

READ_TIMEOUT = 30.0  # the agent writes a stats record every few seconds
MAX_RESUMES_WITHOUT_PROGRESS = 8
# Records per queue item, at most: a hand-over per record cost more than the record's own
# checks, and a whole 64 KiB read (some 200 records) decoded before any is used no longer
# fits the CPU's caches (of 1, 16, 32, 64 and 200 tried, 32 was the quickest).
HANDOVER_RECORDS = 32


@dataclass(slots=True)
class StreamItem:
    """One thing a stream reports: the records of one read, a notice, lost events, or its
    end."""

    pod: PodRef
    kind: str  # "records" | "notice" | "lost" | "end" | "fail"
    records: list[dict] = field(default_factory=list)
    text: str = ""
    count: int = 0
    error: DnstraceError | None = None


def split_timestamp(line: bytes) -> tuple[str, bytes]:
    """``b"2026-11-26T13:23:40.206427536Z {...}"`` -> ("2026-...Z", b"{...}")."""
    head, sep, rest = line.partition(b" ")
    if sep and head[-1:] == b"Z" and head[:4].isdigit() and b"T" in head:
        return head.decode("ascii", "replace"), rest
    return "", line


def since_time(ts: str) -> str:
    """The sinceTime to resume from: the timestamp's second (earlier is safe: seq dedups)."""
    return ts.split(".")[0].rstrip("Z") + "Z" if ts else ""


def ts_seconds(ts: str) -> float:
    """An RFC 3339 timestamp with nanoseconds as epoch seconds (for the record's clock)."""
    if not ts:
        return 0.0
    base, _, frac = ts.rstrip("Z").partition(".")
    dt = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return dt.timestamp() + (float("0." + frac) if frac else 0.0)


@dataclass(slots=True)
class SeqTracker:
    """Drops records already seen and counts the ones that never arrived."""

    last: int | None = None
    lost: int = 0
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)

    def accept(self, seq: int) -> tuple[bool, int]:
        """(keep this record?, how many were lost just before it)."""
        if self.last is None:
            self.last = seq
            return True, 0
        if seq <= self.last:
            self.duplicates += 1
            return False, 0
        gap = seq - self.last - 1
        if gap:
            self.lost += gap
            self.gaps.append((self.last + 1, seq - 1))
        self.last = seq
        return True, gap


class LineReader:
    """What a stream does with each line of the log: the record in it, checked, once.

    Apart from the thread and the API (``AgentStream`` owns one) so the per-line cost — a
    live trace pays it for every DNS message — can be measured on its own
    (benchmarks/pipeline_throughput.py). ``out`` is the queue the trace's loop drains: the
    records of one read go into it as few items (``HANDOVER_RECORDS`` each), anything else
    as it comes, in order.
    """

    def __init__(self, pod: PodRef, out: queue.Queue) -> None:
        self.pod = pod
        self.out = out
        self.seq = SeqTracker()
        self.last_ts = ""
        self.saw_bye = False
        self.stray: list[str] = []
        self._records: list[dict] = []

    def lines(self, lines: list[bytes]) -> None:
        """The lines of one read (up to the agent's final record), then ``flush``."""
        line = self.line
        for raw in lines:
            line(raw)
            if self.saw_bye:
                break
        self.flush()

    def flush(self) -> None:
        """The records read so far go out as one item."""
        if self._records:
            self.out.put(StreamItem(self.pod, "records", self._records))
            self._records = []

    def line(self, line: bytes) -> None:
        """One line; its record waits in this reader for ``flush`` (which it calls itself
        once ``HANDOVER_RECORDS`` wait)."""
        ts, payload = split_timestamp(line)
        try:
            rec = protocol.decode(payload)
        except protocol.ProtocolError as exc:
            if not payload.strip():
                return  # a blank line: nothing to say
            self.flush()  # what came before goes first
            if "speaks protocol" in str(exc):
                # An agent of another version (e.g. an older project image): say so plainly.
                raise AgentFailed(
                    f"agent protocol mismatch: {exc}",
                    "use the default image, or the project image tagged with this plugin's "
                    "version (kubectl dnstrace --version)",
                ) from None
            text = payload.decode("utf-8", "replace").rstrip()
            self.stray.append(text)
            del self.stray[:-20]
            self.out.put(StreamItem(self.pod, "notice", text=f"agent {self.pod.key}: {text}"))
            return
        keep, lost = self.seq.accept(rec["seq"])
        if ts:
            self.last_ts = ts
        if lost:
            self.flush()
            self.out.put(StreamItem(self.pod, "lost", count=lost))
        if not keep:
            return
        records = self._records
        records.append(rec)
        if rec["type"] == "bye":
            self.saw_bye = True
        elif len(records) >= HANDOVER_RECORDS:
            self.flush()


class AgentStream(threading.Thread):
    """Follows one capture container's log until the agent's ``bye`` (or its end)."""

    def __init__(self, kube: Kube, pod: PodRef, container: str, out: queue.Queue,
                 read_timeout: float = READ_TIMEOUT) -> None:
        super().__init__(name=f"log-{pod.key}", daemon=True)
        self.kube = kube.clone()
        self.pod = pod
        self.container = container
        self.out = out
        self.read_timeout = read_timeout
        self.reader = LineReader(pod, out)
        self.resumes = 0
        self.stopping = threading.Event()
        self.closing = threading.Event()

    @property
    def seq(self) -> SeqTracker:
        return self.reader.seq

    @property
    def last_ts(self) -> str:
        return self.reader.last_ts

    @property
    def saw_bye(self) -> bool:
        return self.reader.saw_bye

    @property
    def stray(self) -> list[str]:
        return self.reader.stray

    def close(self) -> None:
        """Stop following now, from another thread (join the thread after): the open read
        is interrupted, nothing more is reported. For the end of a trace that no longer
        waits for this agent's records: no thread is left inside a TLS read at exit."""
        self.closing.set()
        self.kube.interrupt()

    # The thread body: open, read, resume -------------------------------------------------------

    def run(self) -> None:
        try:
            self._follow()
        except DnstraceError as exc:
            if not self.closing.is_set():
                self.out.put(StreamItem(self.pod, "fail", error=exc))
        except Exception as exc:  # a bug must not hang the trace: report it as a failure
            self.out.put(StreamItem(self.pod, "fail", error=DnstraceError(
                f"reading the log of {self.pod.key} failed: {type(exc).__name__}: {exc}",
                "report this bug")))
        finally:
            self.kube.close()

    def _follow(self) -> None:
        no_progress = 0
        while not self.saw_bye:
            before = self.seq.last
            broke = ""
            try:
                self._read_once()
            except (Forbidden, NotFound, AgentFailed):
                raise
            except DnstraceError as exc:
                broke = exc.message
            if self.closing.is_set():
                return
            if self.saw_bye:
                break
            if self.stopping.is_set() and not self._container_running():
                self._end("the agent ended without its final record")
                return
            progressed = self.seq.last != before
            no_progress = 0 if progressed else no_progress + 1
            if not self._container_running():
                # One last read of a finished container returns whatever is left.
                if no_progress >= 1:
                    self._end("the agent ended without its final record")
                    return
            elif no_progress >= MAX_RESUMES_WITHOUT_PROGRESS:
                raise DnstraceError(
                    f"the log stream of {self.pod.key} keeps breaking ({broke or 'closed'})",
                    "check the API server and the node's kubelet; the agent stops at its "
                    "own deadline",
                )
            self.resumes += 1
            self.out.put(StreamItem(
                self.pod, "notice",
                text=f"log stream of {self.pod.key} {'broke: ' + broke if broke else 'closed early'}"
                f"; resuming from {since_time(self.last_ts) or 'the start'}"))
            time.sleep(min(0.2 * no_progress, 2.0))
        self._end("bye")

    def _read_once(self) -> None:
        resp = self.kube.read_log(
            self.pod.namespace, self.pod.name, self.container, follow=True, timestamps=True,
            since_time=since_time(self.last_ts) or None, read_timeout=self.read_timeout,
        )
        reader = self.reader
        try:
            if self.closing.is_set():  # closed while the request was on its way
                return
            for lines in iter_line_reads(resp):
                reader.lines(lines)
                if reader.saw_bye:
                    return
        finally:
            resp.release_conn()
            resp.close()

    def _container_running(self) -> bool:
        try:
            pod = self.kube.get("pods", self.pod.name, self.pod.namespace)
        except NotFound:
            return False
        except DnstraceError:
            return True  # cannot tell: assume it runs and try the stream again
        for st in (pod.get("status") or {}).get("ephemeralContainerStatuses") or []:
            if st.get("name") == self.container:
                return "running" in (st.get("state") or {})
        return False

    def _end(self, reason: str) -> None:
        self.out.put(StreamItem(self.pod, "end", text=reason))
