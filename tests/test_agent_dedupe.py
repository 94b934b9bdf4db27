"""Deduper: one report per message even when the capture sees it on several interfaces or
before and after DNAT; real repeats outside the short window are reported again."""

from __future__ import annotations

from kubectl_dnstrace.agent.dedupe import Deduper
from kubectl_dnstrace.agent.frames import DnsSegment

QUERY = bytes.fromhex("123401000001000000000000") + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
RESPONSE = bytes([0x12, 0x34, 0x81, 0x80]) + QUERY[4:]


def seg(ts, src, sport, dst, dport, payload, proto="udp"):
    return DnsSegment(ts, proto, src, sport, dst, dport, payload, b"")


def test_same_query_on_veth_and_bridge_once():
    d = Deduper()
    assert not d.seen(seg(1.0, "10.244.0.5", 4000, "10.244.0.2", 53, QUERY))
    assert d.seen(seg(1.00001, "10.244.0.5", 4000, "10.244.0.2", 53, QUERY))
    assert d.duplicates == 1


def test_query_before_and_after_dnat_once():
    d = Deduper()
    assert not d.seen(seg(1.0, "10.244.0.5", 4000, "10.96.0.10", 53, QUERY))
    assert d.seen(seg(1.0001, "10.244.0.5", 4000, "10.244.1.9", 53, QUERY))


def test_response_before_and_after_reverse_dnat_once():
    d = Deduper()
    assert not d.seen(seg(1.0, "10.244.1.9", 53, "10.244.0.5", 4000, RESPONSE))
    assert d.seen(seg(1.0001, "10.96.0.10", 53, "10.244.0.5", 4000, RESPONSE))


def test_query_and_its_response_are_different_messages():
    d = Deduper()
    assert not d.seen(seg(1.0, "10.244.0.5", 4000, "10.96.0.10", 53, QUERY))
    assert not d.seen(seg(1.001, "10.96.0.10", 53, "10.244.0.5", 4000, RESPONSE))


def test_other_client_or_port_or_transport_is_not_a_duplicate():
    d = Deduper()
    assert not d.seen(seg(1.0, "10.244.0.5", 4000, "10.96.0.10", 53, QUERY))
    assert not d.seen(seg(1.0, "10.244.0.6", 4000, "10.96.0.10", 53, QUERY))
    assert not d.seen(seg(1.0, "10.244.0.5", 4001, "10.96.0.10", 53, QUERY))
    assert not d.seen(seg(1.0, "10.244.0.5", 4000, "10.96.0.10", 53, QUERY, proto="tcp"))


def test_a_retry_after_the_window_is_reported_again():
    d = Deduper(window=0.2)
    assert not d.seen(seg(1.0, "10.244.0.5", 4000, "10.96.0.10", 53, QUERY))
    assert not d.seen(seg(2.0, "10.244.0.5", 4000, "10.96.0.10", 53, QUERY))


def test_memory_is_bounded():
    d = Deduper(window=10.0, max_entries=100)
    for i in range(10_000):
        d.seen(seg(1.0, "10.0.0.1", i, "10.0.0.2", 53, QUERY))
    assert len(d._cur) <= 100 and len(d._old) <= 100
    assert all(isinstance(k, int) for k in d._cur)  # hashes: no message bytes held


def test_a_longer_memory_keeps_a_late_copy_but_not_a_retry():
    """Remembered for 5 s, a copy within 1 s: a copy from a capture whose stream came 3 s
    later (its copy carries the original's time) is still one; a repeat 2 s apart is not."""
    d = Deduper(window=5.0, within=1.0)
    assert not d.seen(seg(1.0, "10.244.0.5", 4000, "10.96.0.10", 53, QUERY))
    for t in (2.0, 3.0, 4.0):  # other traffic moves the table's clock on
        assert not d.seen(seg(t, "10.244.0.6", int(t), "10.96.0.10", 53, QUERY))
    assert d.seen(seg(1.0001, "10.244.0.5", 4000, "10.244.1.9", 53, QUERY))
    assert not d.seen(seg(3.5, "10.244.0.5", 4000, "10.96.0.10", 53, QUERY))
    assert Deduper(window=0.2).within == 0.2


def test_last_gives_the_previous_sighting_and_peek_notes_nothing():
    d = Deduper(window=30.0, max_entries=100)
    assert d.peek(7) is None
    assert d.last(7, 1.0) is None
    assert d.last(7, 1.5) == 1.0
    assert d.peek(7) == 1.5 and d.peek(8) is None
    assert d.last(7, 40.0) == 1.5  # the previous generation still answers
    assert d.last(7, 100.0) == 40.0
    assert d.peek(7) == 100.0
    d.last(9, 200.0)  # two windows later: everything before is forgotten
    d.last(10, 231.0)
    assert d.peek(7) is None and d.last(7, 231.5) is None
