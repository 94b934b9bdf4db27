"""EventBuilder: protocol records from DNS messages, filters, query/response matching."""

from __future__ import annotations

import base64
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, UDP

from kubectl_dnstrace import protocol
from kubectl_dnstrace.agent.events import EventBuilder
from kubectl_dnstrace.agent.filters import DnsFilter
from kubectl_dnstrace.agent.frames import FrameDecoder

CLIENT = "10.244.0.5"
SERVER = "10.244.0.2"


def q_packet(name, ident=7, qtype="A", sport=41000):
    return bytes(IP(src=CLIENT, dst=SERVER) / UDP(sport=sport, dport=53) / DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype=qtype)))


def r_packet(name, ident=7, qtype="A", rcode=0, answers=(), sport=41000):
    an = [DNSRR(rrname=name, type="A", rdata=a, ttl=60) for a in answers]
    dns = DNS(id=ident, qr=1, rd=1, ra=1, rcode=rcode, qd=DNSQR(qname=name, qtype=qtype), an=an)
    return bytes(IP(src=SERVER, dst=CLIENT) / UDP(sport=53, dport=sport) / dns)


def seg(packet, ts):
    (s,) = FrameDecoder().decode_ip(packet, ts)
    return s


def valid(rec):
    rec = dict(rec, seq=1)
    protocol.validate(rec)
    return rec


def test_query_and_response_records_with_latency():
    b = EventBuilder(DnsFilter())
    q = valid(b.build(seg(q_packet("www.example.com"), 10.0), "eth0"))
    assert q == {
        "type": "dns", "seq": 1, "ts": 10.0, "qr": "query", "proto": "udp",
        "src": CLIENT, "sport": 41000, "dst": SERVER, "dport": 53, "id": 7,
        "qname": "www.example.com", "qtype": "A", "iface": "eth0",
    }
    r = valid(b.build(seg(r_packet("www.example.com", answers=["10.0.0.7", "10.0.0.8"]), 10.0025), "eth0"))
    assert r["qr"] == "response"
    assert r["rcode"] == "NOERROR"
    assert r["answers"] == ["10.0.0.7", "10.0.0.8"]
    assert r["latency_ms"] == 2.5
    assert (r["src"], r["dst"]) == (SERVER, CLIENT)
    assert b.matched == 2


def test_response_without_seen_query_has_null_latency():
    b = EventBuilder(DnsFilter())
    r = valid(b.build(seg(r_packet("gone.example", rcode=3), 1.0), "eth0"))
    assert r["rcode"] == "NXDOMAIN"
    assert r["latency_ms"] is None
    assert r["answers"] == []


def test_domain_filter_reports_query_and_its_response_only():
    b = EventBuilder(DnsFilter(domains=["evil.example.com"]))
    assert b.build(seg(q_packet("notevil.example.com", 1), 1.0), "eth0") is None
    assert b.build(seg(r_packet("notevil.example.com", 1), 1.1), "eth0") is None
    assert b.build(seg(q_packet("a.EVIL.example.com", 2), 2.0), "eth0")["qname"] == "a.EVIL.example.com"
    r = b.build(seg(r_packet("a.EVIL.example.com", 2), 2.1), "eth0")
    assert r["qr"] == "response"
    assert abs(r["latency_ms"] - 100.0) < 0.01
    assert b.matched == 2


def test_rcode_filter_reports_responses_only():
    b = EventBuilder(DnsFilter(rcodes=["NXDOMAIN"]))
    assert b.build(seg(q_packet("x.example", 1), 1.0), "eth0") is None
    assert b.build(seg(r_packet("x.example", 1, rcode=0), 1.01), "eth0") is None
    assert b.build(seg(q_packet("y.example", 2), 1.0), "eth0") is None
    r = b.build(seg(r_packet("y.example", 2, rcode=3), 1.02), "eth0")
    assert r["rcode"] == "NXDOMAIN"
    assert abs(r["latency_ms"] - 20.0) < 0.01


def test_qtype_filter():
    b = EventBuilder(DnsFilter(qtypes=["AAAA"]))
    assert b.build(seg(q_packet("x.example", qtype="A"), 1.0), "eth0") is None
    assert b.build(seg(q_packet("x.example", qtype="AAAA"), 1.0), "eth0")["qtype"] == "AAAA"


def test_malformed_is_counted_not_raised():
    b = EventBuilder(DnsFilter())
    bad = bytes(IP(src=CLIENT, dst=SERVER) / UDP(sport=1, dport=53) / (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc"))
    assert b.build(seg(bad, 1.0), "eth0") is None
    assert b.malformed == 1


def test_raw_packet_rides_along_with_pcap():
    b = EventBuilder(DnsFilter(), with_raw=True)
    pkt = q_packet("www.example.com")
    rec = b.build(seg(pkt, 1.0), "eth0")
    assert base64.b64decode(rec["raw"]) == pkt


def test_tally_for_aggregate_mode():
    b = EventBuilder(DnsFilter())
    assert b.tally(seg(q_packet("WWW.example.com"), 1.0)) == (CLIENT, "www.example.com", "A", None)
    assert b.tally(seg(r_packet("www.example.com", rcode=3), 1.0)) == (CLIENT, "www.example.com", "A", "NXDOMAIN")


# ---- questions remembered by their bytes -------------------------------------------------

def _udp(payload: bytes, sport=41000) -> bytes:
    return bytes(IP(src=CLIENT, dst=SERVER) / UDP(sport=sport, dport=53) / payload)


def test_a_remembered_question_reads_like_a_fresh_one():
    warm = EventBuilder(DnsFilter())
    for i in range(3):  # the second and third are answered from the question cache
        rec = warm.build(seg(q_packet("www.example.com", ident=i), 1.0 + i), "eth0")
        assert (rec["qname"], rec["qtype"], rec["id"]) == ("www.example.com", "A", i)
    assert len(warm._questions) == 1
    resp = warm.build(seg(r_packet("www.example.com", ident=2, answers=["10.0.0.1"]), 3.5), "")
    fresh = EventBuilder(DnsFilter()).build(
        seg(r_packet("www.example.com", ident=2, answers=["10.0.0.1"]), 3.5), "")
    assert {k: v for k, v in resp.items() if k != "latency_ms"} == \
        {k: v for k, v in fresh.items() if k != "latency_ms"}
    assert resp["latency_ms"] == 500.0 and fresh["latency_ms"] is None


def test_the_header_still_decides_after_a_remembered_question():
    b = EventBuilder(DnsFilter())
    q = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="www.example.com")))
    assert b.build(seg(_udp(q), 1.0), "") is not None
    no_question = q[:4] + b"\x00\x00" + q[6:]  # same bytes, qdcount 0
    assert b.build(seg(_udp(no_question), 1.1), "") is None
    cut = q[:-1]  # the class cut short: not the remembered question
    assert b.build(seg(_udp(cut), 1.2), "") is None
    assert b.malformed == 1


def test_a_name_with_a_zero_octet_is_read_every_time_never_remembered():
    b = EventBuilder(DnsFilter())
    wire = b"\x03a\x00b\x07example\x03com\x00\x00\x01\x00\x01"
    q = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + wire
    rec = b.build(seg(_udp(q), 1.0), "")
    assert rec["qname"] == "a\\000b.example.com"
    assert b._questions == {}
    # A message whose bytes up to that zero match a remembered question's is not it.
    short = struct.pack("!HHHHHH", 10, 0x0100, 1, 0, 0, 0) + b"\x03a\x00\x00\x01\x00\x01"
    with_b = EventBuilder(DnsFilter())
    assert with_b.build(seg(_udp(short), 1.0), "") is None  # "a" + zero: label runs past
    assert with_b.build(seg(_udp(q), 1.1), "")["qname"] == "a\\000b.example.com"


def test_the_filter_verdict_is_remembered_with_the_question():
    b = EventBuilder(DnsFilter(domains=["example.com"]))
    assert b.build(seg(q_packet("www.example.org"), 1.0), "") is None
    assert b.build(seg(q_packet("www.example.org", ident=8), 1.1), "") is None
    assert b.build(seg(q_packet("WWW.Example.COM"), 1.2), "")["qname"] == "WWW.Example.COM"
    assert b.matched == 1


def test_responses_outside_the_quick_shape_take_the_full_parse():
    b = EventBuilder(DnsFilter())
    dns = DNS(id=3, qr=1, rd=1, ra=1, qd=DNSQR(qname="www.example.com"),
              an=[DNSRR(rrname="www.example.com", type="CNAME", rdata="web.example.com"),
                  DNSRR(rrname="web.example.com", type="A", rdata="10.0.0.9")])
    pkt = bytes(IP(src=SERVER, dst=CLIENT) / UDP(sport=53, dport=41000) / dns)
    rec = b.build(seg(pkt, 1.0), "")
    assert rec["answers"] == ["web.example.com", "10.0.0.9"] and rec["rcode"] == "NOERROR"


def test_a_response_read_once_serves_its_repeats_only(monkeypatch):
    """The answers of a response are read once for the bytes after its id: the same
    response to other clients is not read again, and one that differs anywhere (another
    answer, a TTL that ticked down, another rcode) is."""
    from kubectl_dnstrace import dnswire

    reads = []
    read = dnswire.quick_response
    monkeypatch.setattr(dnswire, "quick_response", lambda p, qend: reads.append(p) or read(p, qend))

    def response(ident, answer="10.0.0.1", ttl=60, rcode=0, client=CLIENT):
        dns = DNS(id=ident, qr=1, rd=1, ra=1, rcode=rcode, qd=DNSQR(qname="www.example.com"),
                  an=[DNSRR(rrname="www.example.com", type="A", rdata=answer, ttl=ttl)])
        return bytes(IP(src=SERVER, dst=client) / UDP(sport=53, dport=41000) / dns.compress())

    b = EventBuilder(DnsFilter())
    first = b.build(seg(response(1), 1.0), "")
    again = b.build(seg(response(2, client="10.244.0.6"), 1.1), "")
    assert len(reads) == 1
    assert (first["answers"], again["answers"]) == (["10.0.0.1"], ["10.0.0.1"])
    assert (again["id"], again["dst"], again["rcode"]) == (2, "10.244.0.6", "NOERROR")
    other = b.build(seg(response(3, answer="10.0.0.2"), 1.2), "")
    older = b.build(seg(response(4, ttl=59), 1.3), "")
    refused = b.build(seg(response(5, rcode=5), 1.4), "")
    assert len(reads) == 4
    assert other["answers"] == ["10.0.0.2"] and older["answers"] == ["10.0.0.1"]
    assert refused["rcode"] == "REFUSED"
    fresh = EventBuilder(DnsFilter())
    for ident, rec in ((2, again), (3, other), (5, refused)):  # the same as a first reading
        want = fresh.build(seg(response(ident, **({"client": "10.244.0.6"} if ident == 2 else
                                                  {"answer": "10.0.0.2"} if ident == 3 else
                                                  {"rcode": 5})), 9.0), "")
        assert {k: rec[k] for k in ("rcode", "answers", "qname", "qtype")} == \
            {k: want[k] for k in ("rcode", "answers", "qname", "qtype")}


@settings(max_examples=300, deadline=None)
@given(st.integers(1_600_000_000_000_000, 4_000_000_000_000_000), st.integers(0, 40_000_000))
def test_latency_is_the_microseconds_between_query_and_response_in_ms(query_us, gap_us):
    """What ``round(x, 3)`` of the milliseconds gives (the cheaper arithmetic must not
    differ) for a capture's microsecond timestamps, seconds since the epoch."""
    q_ts, r_ts = query_us / 1e6, (query_us + gap_us) / 1e6
    b = EventBuilder(DnsFilter())
    b.build(seg(q_packet("www.example.com"), q_ts), "eth0")
    r = b.build(seg(r_packet("www.example.com"), r_ts), "eth0")
    assert r["latency_ms"] == round(max(0.0, r_ts - q_ts) * 1000.0, 3)
    assert r["latency_ms"] == gap_us / 1000
