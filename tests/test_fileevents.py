"""The decoding stage of ``analyze`` in a child process gives what it gives in this one,
reports the file's mistakes the same way, and never outlives its reader."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from kubectl_dnstrace import fileevents
from kubectl_dnstrace.agent.filters import DnsFilter
from kubectl_dnstrace.errors import BadInput, DnstraceError
from kubectl_dnstrace.fileevents import FileEvents
from tests.test_analyze import _exchange, _write_pcap

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the child is Linux-only")


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """3,000 exchanges (6,000 packets): several batches, clients and names, NXDOMAINs."""
    packets = []
    for i in range(3000):
        packets += _exchange(f"10.244.{i % 7}.{i % 200 + 1}", f"h{i % 50}.example.com", i,
                             1_764_165_600.0 + i * 0.01, sport=20000 + i,
                             rcode=3 if i % 10 == 0 else 0,
                             answer=None if i % 10 == 0 else f"10.1.0.{i % 250 + 1}")
    path = tmp_path_factory.mktemp("fileevents") / "many.pcap"
    _write_pcap(path, packets)
    return str(path)


def _all(path, child, monkeypatch, **kw):
    monkeypatch.setattr(fileevents, "use_child", lambda p: child)
    src = FileEvents(path, DnsFilter(**kw), with_packets=True)
    records = [r for batch in src.batches() for r in batch]
    assert src.in_child is child
    return records, src.stats


def test_the_child_hands_over_exactly_what_this_process_decodes(capture, monkeypatch):
    here, here_stats = _all(capture, False, monkeypatch)
    there, there_stats = _all(capture, True, monkeypatch)
    assert len(here) == 6000
    assert there == here
    assert there_stats == here_stats
    assert here_stats["packets"] == 6000 and here_stats["matched"] == 6000
    # The records are the builder's: names, rcodes, answers, latency, and the packet.
    query, response = here[2], here[3]
    assert query[1:4] == ("query", "udp", "10.244.1.2") and query[8:10] == ("h1.example.com", "A")
    assert response[10:13] == ("NOERROR", ["10.1.0.2"], 2.0)
    assert here[1][10:12] == ("NXDOMAIN", [])
    assert response[14] is False  # not cut by a snap length
    assert isinstance(response[15], bytes) and response[15][9] == 17


def test_filters_apply_in_the_child(capture, monkeypatch):
    there, stats = _all(capture, True, monkeypatch, domains=["h7.example.com"], rcodes=["NOERROR"])
    assert {r[8] for r in there} == {"h7.example.com"}
    assert {r[1] for r in there} == {"response"}
    assert stats["matched"] == len(there) == 60


def test_a_file_that_is_not_a_capture_is_the_same_error_from_the_child(tmp_path, monkeypatch):
    path = tmp_path / "notes.pcap"
    path.write_text("this is not a capture file\n")
    with pytest.raises(BadInput) as here:
        _all(str(path), False, monkeypatch)
    with pytest.raises(BadInput) as there:
        _all(str(path), True, monkeypatch)
    assert there.value.message == here.value.message
    assert there.value.hint == here.value.hint


def _children() -> set[int]:
    """This process's child pids, from /proc."""
    me = str(os.getpid())
    kids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                kids.add(int(pid))
    return kids


def test_a_reader_that_stops_early_leaves_no_child(capture, monkeypatch):
    monkeypatch.setattr(fileevents, "use_child", lambda p: True)
    before = _children()
    batches = FileEvents(capture, DnsFilter()).batches()
    first = next(batches)
    assert len(first) == fileevents.BATCH
    assert len(_children() - before) == 1  # the decoder runs
    batches.close()  # the reader gives up (an error downstream, Ctrl-C)
    assert _children() - before == set()  # killed and reaped: no orphan, no zombie


def test_a_child_that_dies_is_reported_not_mistaken_for_the_end(capture, monkeypatch):
    monkeypatch.setattr(fileevents, "use_child", lambda p: True)
    before = _children()
    batches = FileEvents(capture, DnsFilter()).batches()
    next(batches)
    (pid,) = _children() - before
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(DnstraceError) as err:
        for _ in batches:
            pass
    assert "the decoding process ended before the file did" in err.value.message
    assert _children() - before == set()


def test_the_child_is_used_only_where_it_pays(tmp_path, capture, monkeypatch):
    small = tmp_path / "small.pcap"
    _write_pcap(small, _exchange("10.244.0.5", "a.example.com", 1, 1_764_165_600.0))
    monkeypatch.setattr(fileevents.threading, "active_count", lambda: 1)
    monkeypatch.setattr(fileevents.os, "sched_getaffinity", lambda pid: {0, 1})
    assert not fileevents.use_child(str(small))
    monkeypatch.setattr(fileevents, "CHILD_MIN_BYTES", 1)
    assert fileevents.use_child(str(small))
    monkeypatch.setattr(fileevents.os, "sched_getaffinity", lambda pid: {0})
    assert not fileevents.use_child(str(small))  # one CPU: the stages could not overlap
    monkeypatch.setattr(fileevents.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(fileevents.threading, "active_count", lambda: 2)
    assert not fileevents.use_child(str(small))  # threads: fork is not safe
    assert not fileevents.use_child(str(tmp_path / "missing.pcap"))
