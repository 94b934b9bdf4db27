"""The log stream's bookkeeping: timestamps, resume points, and seq-based dedup/loss."""

from __future__ import annotations

import queue

from kubectl_dnstrace import protocol
from kubectl_dnstrace.kube.logstream import (
    LineReader,
    SeqTracker,
    since_time,
    split_timestamp,
    ts_seconds,
)
from kubectl_dnstrace.model import PodRef


def test_split_timestamp_as_the_kubelet_writes_it() -> None:
    # The shape recorded from a real kubelet (live/log-follow-stream-dnstrace.txt).
    line = b'2026-11-26T13:23:40.206427536Z {"type":"stats","seq":4}'
    assert split_timestamp(line) == ("2026-11-26T13:23:40.206427536Z", b'{"type":"stats","seq":4}')
    assert split_timestamp(b'{"type":"bye"}') == ("", b'{"type":"bye"}')


def test_resume_point_is_truncated_to_the_second() -> None:
    assert since_time("2026-11-26T13:23:40.206427536Z") == "2026-11-26T13:23:40Z"
    assert since_time("2026-11-26T13:23:40Z") == "2026-11-26T13:23:40Z"
    assert since_time("") == ""
    assert abs(ts_seconds("2026-11-26T13:23:40.5Z") - 1795699420.5) < 1e-6


def test_seq_tracker_drops_duplicates_and_counts_gaps() -> None:
    t = SeqTracker()
    assert [t.accept(s) for s in (0, 1, 2)] == [(True, 0)] * 3
    # A resumed stream replays from the last second: already seen, dropped.
    assert t.accept(1) == (False, 0)
    assert t.accept(2) == (False, 0)
    assert t.accept(3) == (True, 0)
    # Records 4..6 never arrived: counted, never silent.
    assert t.accept(7) == (True, 3)
    assert (t.lost, t.duplicates, t.gaps) == (3, 2, [(4, 6)])


def test_lines_come_per_read_whole_and_across_chunk_borders() -> None:
    from kubectl_dnstrace.kube.client import iter_line_reads, iter_lines

    class Resp:
        def __init__(self, *chunks: bytes) -> None:
            self.chunks = chunks

        def stream(self, amt: int, decode_content: bool):
            yield from self.chunks

    chunks = (b'{"a":1}\n{"b"', b"", b':2}\n{"c":3}\n', b'{"d"', b":4}\n", b"tail")
    assert list(iter_line_reads(Resp(*chunks))) == [
        [b'{"a":1}'], [b'{"b":2}', b'{"c":3}'], [b'{"d":4}'], [b"tail"]]
    assert list(iter_lines(Resp(*chunks))) == [
        b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}', b"tail"]


def test_line_reader_hands_over_each_read_s_records_at_once_and_the_rest_in_order() -> None:
    out: queue.Queue = queue.Queue()
    reader = LineReader(PodRef("kube-system", "coredns-1"), out)
    stamp = "2026-11-26T13:23:4{}.206427536Z "
    read = []
    for i, seq in enumerate((1, 2, 2, 5)):  # 2 replayed after a resume; 3 and 4 lost
        rec = protocol.stats(seq, seq, 0, 0, 0)
        read.append((stamp.format(i) + protocol.encode(rec)).encode())
    read.append(b"2026-11-26T13:23:49.5Z   ")  # blank: nothing
    read.append(b"2026-11-26T13:23:50.5Z Traceback (most recent call last):")
    reader.lines(read)
    assert out.qsize() == 4  # nothing of this read waits for the next one
    bye = ("2026-11-26T13:23:51.5Z " + protocol.encode(protocol.bye(6, "end"))).encode()
    reader.lines([bye, bye.replace(b'"seq":6', b'"seq":7')])  # nothing after the bye
    items = [out.get_nowait() for _ in range(out.qsize())]
    assert [(i.kind, [r["seq"] for r in i.records] or i.count or i.text) for i in items] == [
        ("records", [1, 2]), ("lost", 2), ("records", [5]),
        ("notice", "agent kube-system/coredns-1: Traceback (most recent call last):"),
        ("records", [6])]
    assert reader.last_ts == "2026-11-26T13:23:51.5Z"  # the resume point: last record's time
    assert reader.saw_bye and reader.stray == ["Traceback (most recent call last):"]
    assert (reader.seq.duplicates, reader.seq.lost) == (1, 2)


def test_hostile_agent_lines_are_notices_and_the_trace_s_table_still_draws() -> None:
    """Lines a broken or hostile agent could write: a time no clock shows, NaN, an agg group
    whose count is text. Each used to reach the back half and end the trace with an internal
    error (or, in -o ndjson, write invalid JSON); now each is a notice naming the pod."""
    import io

    from kubectl_dnstrace.model import DnsEvent, OutputOptions
    from kubectl_dnstrace.pipeline import Pipeline

    out: queue.Queue = queue.Queue()
    reader = LineReader(PodRef("kube-system", "coredns-1"), out)
    good = {"type": "dns", "seq": 1, "ts": 1795704421.5, "qr": "query", "proto": "udp",
            "src": "10.244.0.101", "sport": 49559, "dst": "10.244.0.53", "dport": 53,
            "id": 1, "qname": "www.example.com", "qtype": "A", "iface": "eth0"}
    agg = {"type": "agg", "seq": 5, "ts": 1795704422.0, "interval": 1.0,
           "groups": [{"client": "10.244.0.101", "qname": "www.example.com", "qtype": "A",
                       "rcode": None, "count": 7}]}
    lines = [protocol.encode(good),
             protocol.encode(dict(good, seq=2)).replace('"ts":1795704421.5', '"ts":1e400'),
             protocol.encode(dict(good, seq=3)).replace('"ts":1795704421.5', '"ts":NaN'),
             protocol.encode(dict(agg, seq=4, groups=[dict(agg["groups"][0], count="x")])),
             protocol.encode(agg)]
    reader.lines([f"2026-11-26T13:23:4{i}.5Z {line}".encode() for i, line in enumerate(lines)])
    items = [out.get_nowait() for _ in range(out.qsize())]
    notices = [i.text for i in items if i.kind == "notice"]
    assert len(notices) == 3 and all(n.startswith("agent kube-system/coredns-1: {") for n in notices)
    records = [r for i in items if i.kind == "records" for r in i.records]
    assert [r["seq"] for r in records] == [1, 5]
    for fmt in ("table", "json", "ndjson"):
        text = io.StringIO()
        pipeline = Pipeline(OutputOptions(format=fmt), text, io.StringIO())
        pipeline.feed(DnsEvent.from_record(records[0], "kube-system/coredns-1"))
        pipeline.feed_aggregate(records[1], "kube-system/coredns-1")
        pipeline.finish()
        assert "www.example.com" in text.getvalue()
        assert "nan" not in text.getvalue().lower() and "inf" not in text.getvalue()


# ---- against the simulated kubelet: real follow streams, really cut -------------------------------

import time  # noqa: E402

import pytest  # noqa: E402

from kubectl_dnstrace.kube.ephemeral import (  # noqa: E402
    CaptureSpec,
    add_capture_container,
    wait_running,
)
from kubectl_dnstrace.kube.logstream import AgentStream  # noqa: E402
from kubectl_dnstrace.kube.targets import resolve_targets  # noqa: E402
from tests.kubesim import PYTHON_IMAGE, connect, emitter_command, running_pod, sim_cluster  # noqa: E402


@pytest.fixture
def cluster():
    with sim_cluster() as c:
        running_pod(c, "shop", "web-1")
        yield c


def _dns(seq: int) -> dict:
    return {"type": "dns", "seq": seq, "ts": 1795699420.0 + seq, "qr": "query", "proto": "udp",
            "src": "10.244.0.10", "sport": 40000 + seq, "dst": "10.96.0.10", "dport": 53,
            "id": seq, "qname": f"q{seq}.example.com", "qtype": "A", "iface": "eth0"}


def _records(seqs: list[int]) -> list[dict]:
    recs = [protocol.hello(0, "test", ["eth0"], {})]
    recs += [_dns(s) for s in seqs]
    recs.append(protocol.bye(max(seqs) + 1, "deadline"))
    return recs


def _collect(cluster, tmp_path, records: list[dict], delay: float = 0.02) -> tuple[list, AgentStream]:
    kube = connect(cluster, tmp_path)
    pod = resolve_targets(kube, ["pod/web-1"], namespace="shop").pods[0]
    spec = CaptureSpec("5eq5eq", PYTHON_IMAGE, emitter_command(records, delay=delay))
    add_capture_container(kube, spec, pod, ["NET_RAW"])
    wait_running(kube, pod, spec.container_name, time.monotonic() + 20)
    q: queue.Queue = queue.Queue()
    stream = AgentStream(kube, pod, spec.container_name, q)
    stream.start()
    stream.join(60)
    assert not stream.is_alive()
    items = []
    while not q.empty():
        items.append(q.get())
    return items, stream


def test_broken_stream_resumes_without_loss_or_duplicates(cluster, tmp_path) -> None:
    cluster.faults.break_log_after(7, times=4)  # four cuts, each after 7 lines
    items, stream = _collect(cluster, tmp_path, _records(list(range(1, 41))))
    seqs = [r["seq"] for i in items for r in i.records]
    assert seqs == list(range(0, 42))  # hello, 40 dns, bye: each exactly once, in order
    assert stream.resumes >= 4
    assert stream.seq.lost == 0 and stream.seq.duplicates > 0  # replays were dropped
    assert items[-1].kind == "end" and items[-1].text == "bye"
    assert any(i.kind == "notice" and "resuming from" in i.text for i in items)


def test_a_real_gap_is_counted_not_hidden(cluster, tmp_path) -> None:
    items, stream = _collect(cluster, tmp_path, _records([1, 2, 3, 7, 8]))
    lost = [i.count for i in items if i.kind == "lost"]
    assert lost == [3] and stream.seq.gaps == [(4, 6)]


def test_stream_without_bye_ends_when_the_container_ends(cluster, tmp_path) -> None:
    records = _records([1, 2])[:-1]  # no bye: the agent died
    items, _ = _collect(cluster, tmp_path, records)
    assert [r["seq"] for i in items for r in i.records] == [0, 1, 2]
    assert items[-1].kind == "end" and "without its final record" in items[-1].text


def test_close_ends_a_silent_stream_at_once_and_reports_nothing_more(cluster, tmp_path) -> None:
    # The agent says hello, then stays silent for a minute: the stream's thread sits in a
    # read. close() interrupts it, so the thread can be joined at once (none is left in a
    # TLS read when the process exits), and nothing is reported after it.
    kube = connect(cluster, tmp_path)
    pod = resolve_targets(kube, ["pod/web-1"], namespace="shop").pods[0]
    spec = CaptureSpec("c1o5ed", PYTHON_IMAGE, emitter_command(_records([1]), delay=60))
    add_capture_container(kube, spec, pod, ["NET_RAW"])
    wait_running(kube, pod, spec.container_name, time.monotonic() + 20)
    q: queue.Queue = queue.Queue()
    stream = AgentStream(kube, pod, spec.container_name, q)
    stream.start()
    first = q.get(timeout=20)
    assert first.kind == "records" and first.records[0]["type"] == "hello"
    time.sleep(0.3)  # the read is open and waiting
    started = time.monotonic()
    stream.close()
    stream.join(2.0)
    assert not stream.is_alive()
    assert time.monotonic() - started < 2.0
    time.sleep(0.2)
    assert q.empty()


# ---- what the trace makes of each stream item ------------------------------------------------------

import io  # noqa: E402
import json  # noqa: E402

from kubectl_dnstrace.errors import AgentFailed, ExitCode  # noqa: E402
from kubectl_dnstrace.kube.logstream import StreamItem  # noqa: E402
from kubectl_dnstrace.model import (  # noqa: E402
    ClusterOptions,
    Filters,
    OutputOptions,
    TraceRequest,
)
from kubectl_dnstrace.pipeline import Pipeline  # noqa: E402
from kubectl_dnstrace.trace import PodRun, TraceRun  # noqa: E402


def _trace_run() -> tuple[TraceRun, PodRef, io.StringIO, io.StringIO]:
    req = TraceRequest(targets=["pod/web-1"], cluster=ClusterOptions(), filters=Filters(),
                       output=OutputOptions(format="ndjson"))
    out, err = io.StringIO(), io.StringIO()
    tr = TraceRun(req, out, err)
    tr.pipeline = Pipeline(req.output, out, err)
    pod = PodRef("shop", "web-1")
    tr.runs[pod.key] = PodRun(pod, "dnstrace-abcdef")
    return tr, pod, out, err


def _read(pod: PodRef, *records: dict) -> StreamItem:
    """What a stream hands over for one read of these records."""
    return StreamItem(pod, "records", list(records))


def test_items_become_events_notices_and_counts() -> None:
    tr, pod, out, err = _trace_run()
    tr._handle(_read(pod, _dns(1)))
    tr._handle(StreamItem(pod, "lost", count=3))
    tr._handle(_read(pod, {"type": "error", "seq": 2, "message": "boom"}))
    tr._handle(_read(pod, {
        "type": "agg", "seq": 3, "ts": 1795699420.0, "interval": 1.0, "threshold": 2000,
        "total": 5100, "groups": [{"client": "10.244.0.3", "qname": "evil.example.com",
                                   "qtype": "A", "rcode": "NOERROR", "count": 5100}]}))
    tr._handle(StreamItem(pod, "end", text="bye"))
    event, agg = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (event["qname"], event["observed_at"]) == ("q1.example.com", "shop/web-1")
    assert (agg["type"], agg["client_ip"], agg["qname"], agg["count"], agg["observed_at"]) == \
        ("agg", "10.244.0.3", "evil.example.com", 5100, "shop/web-1")
    run = tr.runs[pod.key]
    assert (run.events, run.lost, run.errors, run.ended) == (5101, 3, ["boom"], "bye")
    text = err.getvalue()
    assert "3 record(s) from shop/web-1 were lost" in text
    assert "agent shop/web-1: error: boom" in text
    assert "shop/web-1: more than 2000 DNS messages/s: the agent now sends per-second counts" in text


def test_lost_records_make_the_exit_code_say_so() -> None:
    tr, pod, _, err = _trace_run()
    tr._handle(_read(pod, _dns(1)))
    tr._handle(StreamItem(pod, "lost", count=2))
    assert tr._outcome() == ExitCode.STREAM_LOST
    assert "2 record(s) were lost in total" in err.getvalue()


def test_agent_errors_without_events_fail_the_run() -> None:
    tr, pod, _, _ = _trace_run()
    tr._handle(_read(pod, {"type": "error", "seq": 1,
                                                 "message": "socket: Operation not permitted"}))
    with pytest.raises(AgentFailed) as info:
        tr._outcome()
    assert info.value.exit_code == ExitCode.AGENT_FAILED and "CAP_NET_RAW" in info.value.hint


def test_stats_status_line_only_on_a_terminal_and_cleared_before_notices() -> None:
    from kubectl_dnstrace.progress import Progress

    tr, pod, _, err = _trace_run()
    tr.progress = Progress(err, interactive=True)
    tr._handle(_read(pod, {"type": "stats", "seq": 1, "seen": 40,
                                                 "matched": 7, "emitted": 7, "drops": 2}))
    tr._show_stats()
    assert "40 DNS packets seen, 7 matched" in err.getvalue() and "2 dropped" in err.getvalue()
    tr._handle(StreamItem(pod, "notice", text="log stream broke"))
    assert err.getvalue().endswith("\r\x1b[2Klog stream broke\n")
    quiet = io.StringIO()
    tr.progress = Progress(quiet)  # not a terminal: no status line at all
    tr._show_stats()
    assert quiet.getvalue() == ""


def test_an_agent_of_another_protocol_version_fails_the_stream(cluster, tmp_path) -> None:
    hello = protocol.hello(0, "9.9", ["eth0"], {})
    hello["protocol"] = protocol.PROTOCOL_VERSION + 1
    items, _ = _collect(cluster, tmp_path, [hello, _dns(1), protocol.bye(2, "deadline")])
    [fail] = [i for i in items if i.kind == "fail"]
    assert "agent protocol mismatch" in fail.error.message
    assert fail.error.exit_code == ExitCode.AGENT_FAILED


# ---- any line an agent could write: refused, or handled without an internal error ----------

import contextlib  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kubectl_dnstrace.errors import DnstraceError  # noqa: E402

_AGENT_RECORDS = [
    protocol.hello(1, "0.1.0", ["eth0"], {"domains": []}),
    _dns(2),
    dict(_dns(3), qr="response", src="10.96.0.10", sport=53, dst="10.244.0.10", dport=40002,
         id=2, qname="q2.example.com", rcode="NOERROR", answers=["10.0.0.7"], latency_ms=0.3),
    {"type": "agg", "seq": 4, "ts": 1795699424.0, "interval": 1.0, "threshold": 2000,
     "total": 5, "groups": [{"client": "10.244.0.3", "qname": "evil.example.com",
                             "qtype": "A", "rcode": None, "count": 5}]},
    protocol.stats(5, 10, 2, 2, 0),
    protocol.error(6, "no CAP_NET_RAW"),
    protocol.bye(7, "deadline"),
]
_ANY = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
              st.floats(allow_nan=False), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


@st.composite
def _agent_record(draw):
    rec = json.loads(json.dumps(draw(st.sampled_from(_AGENT_RECORDS))))
    for _ in range(draw(st.integers(1, 3))):
        groups = rec.get("groups")
        group = (isinstance(groups, list) and groups and isinstance(groups[0], dict)
                 and draw(st.booleans()))
        target = rec["groups"][0] if group else rec
        name = draw(st.sampled_from([*sorted(target), "raw", "tc", "elapsed", "mode"]))
        if draw(st.integers(0, 4)) == 0:
            target.pop(name, None)
        else:
            target[name] = draw(_ANY)
    return rec


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_agent_record(), min_size=1, max_size=4), st.sampled_from(
    ["table", "wide", "json", "ndjson"]))
def test_whatever_an_agent_writes_is_refused_or_handled_never_an_internal_error(records, fmt):
    """The kubectl side trusts nothing in a log line: each mutated record is either refused
    by the protocol check (the stream shows it as a notice) or handled through the whole
    back half — the live lines, the status line, the summary, the exit."""
    req = TraceRequest(targets=["pod/web-1"], cluster=ClusterOptions(), filters=Filters(),
                       output=OutputOptions(format=fmt))
    out, err = io.StringIO(), io.StringIO()
    tr = TraceRun(req, out, err)
    tr.pipeline = Pipeline(req.output, out, err)
    pod = PodRef("shop", "web-1")
    tr.runs[pod.key] = PodRun(pod, "dnstrace-abcdef")
    for rec in records:
        try:
            accepted = protocol.decode(json.dumps(rec))
        except protocol.ProtocolError:
            continue
        tr._handle(_read(pod, accepted))
    tr._show_stats()
    tr._handle(StreamItem(pod, "end", text="bye"))
    with contextlib.suppress(DnstraceError):  # an agent's error record fails the run so
        tr._outcome()  # (the summary, the notices, the exit code)

    def not_json(name: str) -> None:
        pytest.fail(f"{name} in the output")

    if fmt == "ndjson":
        for line in out.getvalue().splitlines():
            json.loads(line, parse_constant=not_json)
    elif fmt == "json" and out.getvalue():
        json.loads(out.getvalue(), parse_constant=not_json)
