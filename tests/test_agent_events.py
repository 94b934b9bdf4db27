"""EventBuilder: protocol records from DNS messages, filters, query/response matching."""

from __future__ import annotations

import base64

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
