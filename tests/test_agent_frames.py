"""FrameDecoder on crafted frames: every link type analyze meets, IPv4/IPv6, UDP, and
DNS-over-TCP reassembly (split messages, several messages per segment, duplicates)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.layers.l2 import CookedLinux, Dot1Q, Ether

from kubectl_dnstrace.agent import frames
from kubectl_dnstrace.agent.frames import FrameDecoder


def query(name="www.example.com", ident=0x1234) -> bytes:
    return bytes(DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype="A")))


def response(name="www.example.com", ident=0x1234) -> bytes:
    return bytes(DNS(id=ident, qr=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata="10.0.0.7")))


def udp4(payload=None, src="10.244.0.5", dst="10.96.0.10", sport=40000, dport=53) -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / (payload or query()))


def test_udp_ipv4_raw():
    segs = FrameDecoder().decode_ip(udp4(), 1.5)
    assert len(segs) == 1
    s = segs[0]
    assert (s.ts, s.proto, s.src, s.sport, s.dst, s.dport) == (1.5, "udp", "10.244.0.5", 40000, "10.96.0.10", 53)
    assert s.payload == query()
    assert s.packet == udp4()


def test_address_texts_are_made_once_and_the_memo_stays_bounded(monkeypatch):
    monkeypatch.setattr(frames, "ADDR_CACHE_MAX", 3)
    dec = FrameDecoder()
    seen = []
    for i in range(1, 8):
        (seg,) = dec.decode_ip(udp4(src=f"10.244.0.{i}"), float(i))
        (again,) = dec.decode_ip(udp4(src=f"10.244.0.{i}"), float(i))
        seen.append(seg.src)
        assert again.src is seg.src  # one text per address: the back half hashes it once
        assert again.dst is seg.dst == "10.96.0.10"
        assert len(dec._addrs) <= 3
    assert seen == [f"10.244.0.{i}" for i in range(1, 8)]


def test_udp_ipv6_compressed_addresses():
    pkt = bytes(IPv6(src="fd00:244::5", dst="fd00:244:0:0:0:0:0:53") / UDP(sport=5353, dport=53) / query())
    (s,) = FrameDecoder().decode_ip(pkt, 0.0)
    assert (s.src, s.dst, s.sport) == ("fd00:244::5", "fd00:244::53", 5353)
    assert s.payload == query()


def test_ipv6_extension_header_walked():
    pkt = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrDestOpt() / UDP(sport=1000, dport=53) / query())
    (s,) = FrameDecoder().decode_ip(pkt, 0.0)
    assert s.payload == query()


def test_ipv6_real_fragment_skipped():
    pkt = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(m=1, offset=0) / UDP(sport=1000, dport=53) / query())
    assert FrameDecoder().decode_ip(pkt, 0.0) == []


def test_ipv4_fragment_skipped():
    pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / UDP(sport=1000, dport=53) / query())
    assert FrameDecoder().decode_ip(pkt, 0.0) == []


def test_not_port_53_ignored():
    assert FrameDecoder().decode_ip(udp4(sport=1000, dport=1001), 0.0) == []


def test_ethernet_padding_trimmed():
    short = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53) / query("a.b"))
    frame = bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02", type=0x0800) / short) + b"\x00" * 20
    (s,) = FrameDecoder().decode_link(frames.LINKTYPE_ETHERNET, frame, 0.0)
    assert s.payload == query("a.b")
    assert s.packet == short


def test_ethernet_vlan():
    frame = bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / Dot1Q(vlan=5) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=53) / query())
    (s,) = FrameDecoder().decode_link(frames.LINKTYPE_ETHERNET, frame, 0.0)
    assert s.src == "10.0.0.1"


def test_linux_cooked_sll():
    frame = bytes(CookedLinux(proto=0x0800) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=53) / query())
    (s,) = FrameDecoder().decode_link(frames.LINKTYPE_LINUX_SLL, frame, 0.0)
    assert s.dst == "10.0.0.2"


def test_linux_cooked_sll2():
    ip = udp4()
    # SLL2: protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) addrlen(1) addr(8)
    header = struct.pack("!HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, b"\x02" * 6 + b"\x00\x00")
    (s,) = FrameDecoder().decode_link(frames.LINKTYPE_LINUX_SLL2, header + ip, 0.0)
    assert s.src == "10.244.0.5"


@pytest.mark.parametrize("order", ["<I", ">I"])
def test_bsd_loopback_null(order):
    frame = struct.pack(order, 2) + udp4()
    (s,) = FrameDecoder().decode_link(frames.LINKTYPE_NULL, frame, 0.0)
    assert s.src == "10.244.0.5"
    frame6 = struct.pack(order, 30) + bytes(IPv6(src="::1", dst="::1") / UDP(sport=1, dport=53) / query())
    (s6,) = FrameDecoder().decode_link(frames.LINKTYPE_NULL, frame6, 0.0)
    assert s6.src == "::1"


def test_unknown_linktype_and_garbage_yield_nothing():
    d = FrameDecoder()
    assert d.decode_link(9999, b"\x00" * 64, 0.0) == []
    assert d.decode_ip(b"", 0.0) == []
    assert d.decode_ip(b"\x45" + b"\x00" * 30, 0.0) == []
    assert d.decode_ip(b"\x60" + b"\xff" * 60, 0.0) == []


def test_short_udp_payload_is_not_dns():
    assert FrameDecoder().decode_ip(udp4(payload=b"abc"), 0.0) == []


# -- DNS over TCP ---------------------------------------------------------------------


def framed(msg: bytes) -> bytes:
    return struct.pack("!H", len(msg)) + msg


def tcp(data: bytes, seq: int, flags="PA", src="10.244.0.5", sport=40001) -> bytes:
    return bytes(IP(src=src, dst="10.96.0.10") / TCP(sport=sport, dport=53, seq=seq, flags=flags) / data)


def test_tcp_message_split_across_segments():
    d = FrameDecoder()
    wire = framed(query("split.example.com"))
    assert d.decode_ip(tcp(b"", 999, flags="S"), 0.0) == []
    assert d.decode_ip(tcp(wire[:1], 1000), 0.1) == []
    assert d.decode_ip(tcp(wire[1:10], 1001), 0.2) == []
    (s,) = d.decode_ip(tcp(wire[10:], 1010), 0.3)
    assert s.proto == "tcp" and s.payload == query("split.example.com")
    assert s.ts == 0.3


def test_tcp_several_messages_in_one_segment():
    d = FrameDecoder()
    msgs = [query("a.example.com", 1), query("b.example.com", 2), query("c.example.com", 3)]
    wire = b"".join(framed(m) for m in msgs)
    segs = d.decode_ip(tcp(wire[:-3], 5000), 0.0)
    assert [s.payload for s in segs] == msgs[:2]
    segs = d.decode_ip(tcp(wire[-3:], 5000 + len(wire) - 3), 0.0)
    assert [s.payload for s in segs] == msgs[2:]


def test_tcp_segment_captured_twice_reported_once():
    d = FrameDecoder()
    wire = framed(query())
    pkt = tcp(wire, 77)
    assert len(d.decode_ip(pkt, 0.0)) == 1
    assert d.decode_ip(pkt, 0.0) == []  # same segment on the bridge: a duplicate


def test_tcp_out_of_order_segment_held_until_gap_filled():
    d = FrameDecoder()
    wire = framed(query("ooo.example.com"))
    d.decode_ip(tcp(b"", 9, flags="S"), 0.0)
    assert d.decode_ip(tcp(wire[8:], 18), 0.0) == []
    (s,) = d.decode_ip(tcp(wire[:8], 10), 0.0)
    assert s.payload == query("ooo.example.com")


def test_tcp_overlapping_retransmission_trimmed():
    d = FrameDecoder()
    wire = framed(query("ovl.example.com"))
    d.decode_ip(tcp(b"", 99, flags="S"), 0.0)
    assert d.decode_ip(tcp(wire[:10], 100), 0.0) == []
    (s,) = d.decode_ip(tcp(wire[5:], 105), 0.0)
    assert s.payload == query("ovl.example.com")


def test_tcp_sequence_wraps():
    d = FrameDecoder()
    wire = framed(query())
    start = 0xFFFFFFFF - 4
    d.decode_ip(tcp(b"", start - 1, flags="S"), 0.0)
    assert d.decode_ip(tcp(wire[:6], start), 0.0) == []
    (s,) = d.decode_ip(tcp(wire[6:], (start + 6) & 0xFFFFFFFF), 0.0)
    assert s.payload == query()


def test_tcp_both_directions_are_separate_flows():
    d = FrameDecoder()
    q = tcp(framed(query()), 1)
    r = bytes(IP(src="10.96.0.10", dst="10.244.0.5") / TCP(sport=53, dport=40001, seq=1, flags="PA") / framed(response()))
    assert [s.payload for s in d.decode_ip(q, 0.0)] == [query()]
    assert [s.payload for s in d.decode_ip(r, 0.0)] == [response()]


def test_tcp_fin_forgets_flow_and_memory_is_bounded():
    d = FrameDecoder(flow_limit=8)
    d.decode_ip(tcp(b"\x00", 1), 0.0)
    assert len(d.flows) == 1
    d.decode_ip(tcp(b"", 2, flags="FA"), 0.0)
    assert d.flows == {}
    for port in range(100):
        d.decode_ip(tcp(b"\x00\x30", 1, sport=20000 + port), float(port))
    assert len(d.flows) <= 8


def test_tcp_idle_flows_expire():
    d = FrameDecoder(idle_seconds=10)
    d.decode_ip(tcp(b"\x00", 1, sport=1111), 0.0)
    d.decode_ip(tcp(b"\x00", 1, sport=2222), 100.0)
    assert [k[1] for k in d.flows] == [2222]


def test_tcp_garbage_length_prefix_does_not_grow_without_bound():
    d = FrameDecoder()
    seq = 1
    for _ in range(40):  # claims a 65535-byte message, then keeps sending
        chunk = b"\xff\xff" + b"x" * 2000 if seq == 1 else b"x" * 2000
        d.decode_ip(tcp(chunk, seq), 0.0)
        seq += len(chunk)
    assert d.buffered() <= frames.TCP_BUFFER_LIMIT


# ---- the IPv4/UDP fast path gives what the general decoder gives -----------------------

_FRAME_BASES = [
    bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.244.0.5", dst="10.96.0.10") / UDP(sport=40000, dport=53) / query()),
    bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.96.0.10", dst="10.244.0.5") / UDP(sport=53, dport=40000)
          / response()) + b"\x00" * 6,  # Ethernet padding
    bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.244.0.5", dst="10.96.0.10", flags="MF") / UDP(dport=53)
          / query()),
    bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.244.0.5", dst="10.96.0.10") / UDP(sport=40000, dport=5353)
          / query()),
]


def _general_path(monkeypatch, linktype, frame):
    with monkeypatch.context() as m:
        m.setattr(FrameDecoder, "_udp4", lambda self, frame, off, ts: None)
        return FrameDecoder().decode_link(linktype, frame, 1.0)


def _same(a, b):
    return [(s.proto, s.src, s.sport, s.dst, s.dport, s.payload, s.packet) for s in a] == \
        [(s.proto, s.src, s.sport, s.dst, s.dport, s.payload, s.packet) for s in b]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(_FRAME_BASES),
       st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=4),
       st.integers(0, 200))
def test_ipv4_udp_fast_path_agrees_with_the_general_decoder(monkeypatch, base, edits, cut):
    frame = bytearray(base)
    for at, value in edits:  # header bytes: lengths, flags, protocol, ports, IHL
        frame[at % len(frame)] = value
    frame = bytes(frame[:len(frame) - cut % 40])
    fast = FrameDecoder().decode_link(frames.LINKTYPE_ETHERNET, frame, 1.0)
    assert _same(fast, _general_path(monkeypatch, frames.LINKTYPE_ETHERNET, frame))
    ip = frame[14:]
    assert _same(FrameDecoder().decode_ip(ip, 1.0),
                 _general_path(monkeypatch, frames.LINKTYPE_RAW, ip))


def test_ipv4_udp_fast_path_is_taken_for_plain_packets(monkeypatch):
    calls = []
    real = FrameDecoder._udp4
    monkeypatch.setattr(FrameDecoder, "_udp4",
                        lambda self, *a: calls.append(a[1]) or real(self, *a))
    (seg,) = FrameDecoder().decode_link(frames.LINKTYPE_ETHERNET, _FRAME_BASES[1], 2.0)
    assert calls == [14]
    assert (seg.src, seg.sport, seg.dst, seg.dport) == ("10.96.0.10", 53, "10.244.0.5", 40000)
    assert seg.payload == response() and len(seg.packet) == 20 + 8 + len(response())
