"""Encrypted DNS attempts (issue 16): the kernel filter admits TCP SYNs to 853 and to listed
DoH resolvers on 443 besides port 53, and the agent reports each attempt once, from the SYN.

The filter is checked twice: by the classic-BPF interpreter of test_agent_capture on crafted
packets, and by the kernel on real connections between lab namespaces (the "public resolver"
is a lab address given with --doh-resolver: no test sends anything outside the lab).
"""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop

from kubectl_dnstrace import protocol
from kubectl_dnstrace.agent.capture import SNAPLEN
from kubectl_dnstrace.agent.encrypted import (
    KERNEL_V4_MAX,
    PUBLIC_RESOLVERS,
    EncryptedDnsWatcher,
    capture_filter,
)
from kubectl_dnstrace.agent.main import UsageError, parse_args
from tests import test_agent_capture
from tests.lab.dnslab import dig
from tests.test_agent_lab import DNS4, AgentRun, dlab  # noqa: F401 (fixture)

V4, V6 = 0x0800, 0x86DD


def run_bpf(program, packet: bytes, ethertype: int) -> int:
    """test_agent_capture's interpreter plus the three opcodes this filter adds."""
    a = x = 0
    pc = 0
    while True:
        op, jt, jf, k = program[pc]
        pc += 1
        try:
            if op == 0x20:  # ld [k] (a word)
                a = struct.unpack_from("!I", packet, k)[0]
            elif op == 0x50:  # ldb [x + k]
                a = packet[x + k]
            elif op == 0x54:  # and #k
                a &= k
            elif op == 0x28:
                a = ethertype if k == 0xFFFFF000 else struct.unpack_from("!H", packet, k)[0]
            elif op == 0x30:
                a = packet[k]
            elif op == 0x48:
                a = struct.unpack_from("!H", packet, x + k)[0]
            elif op == 0xB1:
                x = 4 * (packet[k] & 0x0F)
            elif op == 0x15:
                pc += jt if a == k else jf
            elif op == 0x45:
                pc += jt if a & k else jf
            elif op == 0x06:
                return k
            else:
                raise AssertionError(f"opcode {op:#x} not emulated")
        except (IndexError, struct.error):
            return 0


@pytest.mark.parametrize(
    ("packet", "ethertype", "accepted"),
    [
        (IP() / UDP(sport=1234, dport=53), V4, True),  # port 53 as before
        (IP() / TCP(sport=53, dport=1234, flags="A"), V4, True),
        (IP(dst="10.0.0.9") / TCP(dport=853, flags="S"), V4, True),  # DoT to anyone
        (IP(dst="10.0.0.9") / TCP(dport=853, flags="SA"), V4, False),  # not the opening SYN
        (IP(dst="10.0.0.9") / TCP(dport=853, flags="A"), V4, False),  # no payload ever
        (IP(dst="1.1.1.1") / TCP(dport=443, flags="S"), V4, True),  # DoH to a listed resolver
        (IP(dst="149.112.112.112") / TCP(dport=443, flags="S"), V4, True),
        (IP(dst="93.184.216.34") / TCP(dport=443, flags="S"), V4, False),  # plain HTTPS
        (IP(dst="1.1.1.1") / TCP(dport=80, flags="S"), V4, False),
        (IP(dst="1.1.1.1", options=b"\x01\x01\x01\x00") / TCP(dport=443, flags="S"), V4, True),
        (IP(dst="1.1.1.1", frag=10) / TCP(dport=443, flags="S"), V4, False),
        (IP(dst="1.1.1.1") / UDP(sport=1000, dport=443), V4, False),
        (IPv6(dst="2606:4700:4700::1111") / TCP(dport=443, flags="S"), V6, True),
        (IPv6(dst="2620:fe::fe:11") / TCP(dport=443, flags="S"), V6, True),
        (IPv6(dst="2606:4700:4700::1119") / TCP(dport=443, flags="S"), V6, False),
        (IPv6(dst="fd00::1") / TCP(dport=853, flags="S"), V6, True),
        (IPv6(dst="fd00::1") / TCP(dport=853, flags="SA"), V6, False),
        (IPv6() / UDP(sport=1, dport=53), V6, True),
        (IPv6() / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=53), V6, True),  # user space decides
        (IPv6(dst="fd00::1") / TCP(dport=22, flags="S"), V6, False),
    ],
)
def test_filter_admits_encrypted_dns_syns(packet, ethertype, accepted):
    verdict = run_bpf(capture_filter(), bytes(packet), ethertype)
    assert verdict == (SNAPLEN if accepted else 0)


def test_port_53_verdicts_match_the_plain_filter():
    """The extended filter says what port53_filter says on every port-53 case."""
    cases = test_agent_capture.test_filter_accepts_port_53_only.pytestmark[0].args[1]
    assert len(cases) > 10
    for packet, ethertype, accepted in cases:
        verdict = run_bpf(capture_filter(), bytes(packet), ethertype)
        assert verdict == (SNAPLEN if accepted else 0), packet.summary()


def test_long_lists_keep_jumps_short_and_fall_back_to_user_space():
    many = [f"10.{i // 250}.{i % 250}.1" for i in range(KERNEL_V4_MAX + 50)]
    program = capture_filter(many + [f"fd00::{i:x}" for i in range(400)])
    assert all(0 <= jt <= 255 and 0 <= jf <= 255 for _op, jt, jf, _k in program)
    assert len(program) < 4096
    # Over the kernel limit every SYN to 443 passes the kernel; the watcher decides.
    assert run_bpf(program, bytes(IP(dst="93.184.216.34") / TCP(dport=443, flags="S")), V4)
    assert run_bpf(program, bytes(IP(dst="93.184.216.34") / TCP(dport=80, flags="S")), V4) == 0
    w = EncryptedDnsWatcher(many)
    assert w.inspect(bytes(IP(dst="93.184.216.34") / TCP(dport=443, flags="S")), 1.0) is None
    assert w.inspect(bytes(IP(dst=many[-1]) / TCP(dport=443, flags="S")), 1.0)["protocol"] == "doh"


def test_watcher_reports_once_per_attempt_and_caps_the_rate():
    w = EncryptedDnsWatcher(rate=3)
    syn = bytes(IP(src="10.244.0.5", dst="9.9.9.9") / TCP(sport=40000, dport=853, seq=7, flags="S"))
    rec = w.inspect(syn, 100.0, "veth1")
    assert rec == {"type": "encrypted-dns", "seq": 0, "ts": 100.0, "protocol": "dot",
                   "client": "10.244.0.5", "sport": 40000, "dst": "9.9.9.9", "dport": 853,
                   "iface": "veth1"}
    protocol.validate(dict(rec, seq=1))
    assert w.inspect(syn, 100.0001, "cni0") is None  # the bridge's copy
    assert w.inspect(syn, 101.0, "veth1") is None  # the retransmission a second later
    got = [w.inspect(bytes(IP(src="10.244.0.5", dst="9.9.9.9")
                           / TCP(sport=40001 + i, dport=853, flags="S")), 200.0) for i in range(5)]
    assert [g is not None for g in got] == [True, True, True, False, False]
    later = w.inspect(bytes(IP(src="10.244.0.6", dst="9.9.9.9") / TCP(sport=1, dport=853,
                                                                      flags="S")), 201.0)
    assert later["suppressed"] == 2 and w.suppressed == 2
    v6 = w.inspect(bytes(IPv6(src="fd00::5", dst="2001:4860:4860::8888")
                         / TCP(sport=5, dport=443, flags="S")), 300.0)
    assert (v6["protocol"], v6["client"], v6["dst"]) == ("doh", "fd00::5", "2001:4860:4860::8888")


def test_protocol_refuses_bad_encrypted_dns_records():
    good = protocol.encrypted_dns(4, 1.5, "doh", "10.0.0.1", 1, "1.1.1.1", 443)
    assert protocol.decode(protocol.encode(good)) == good
    for bad in (dict(good, protocol="quic"), dict(good, dport="443"), dict(good, ts=-1)):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode(protocol.encode(bad))


def test_agent_arguments():
    assert parse_args(["--encrypted-dns"]).encrypted_dns
    with pytest.raises(UsageError, match="needs --encrypted-dns"):
        parse_args(["--doh-resolver", "10.0.0.1"])
    with pytest.raises(UsageError, match="not an IP address"):
        parse_args(["--encrypted-dns", "--doh-resolver", "one.one.one.one"])
    assert "1.1.1.1" in PUBLIC_RESOLVERS and "2001:4860:4860::8888" in PUBLIC_RESOLVERS


def test_kernel_admits_attempts_and_dns_still_flows(dlab, tmp_path):  # noqa: F811
    """Real connections between lab namespaces: a SYN to 853, one to the "DoH resolver" (the
    DNS namespace's address, listed with --doh-resolver) on 443, one to a port nobody lists;
    DNS keeps being reported beside them."""
    d, client, ip4, _ip6 = dlab
    agent = AgentRun(d.dns, ["--duration", "60", "--encrypted-dns", "--doh-resolver", DNS4],
                     tmp_path)
    agent.wait_hello()
    for port in (853, 443, 8443):
        client.run("python3", "-c", "import socket,sys\ns=socket.socket()\ns.settimeout(1)\n"
                   f"try: s.connect(({DNS4!r}, {port}))\nexcept OSError: pass", check=False)
    assert dig(client, DNS4, "www.example.com").returncode == 0
    records = agent.stop()
    attempts = [(r["protocol"], r["client"], r["dst"], r["dport"]) for r in records
                if r["type"] == "encrypted-dns"]
    assert attempts == [("dot", ip4, DNS4, 853), ("doh", ip4, DNS4, 443)]
    assert [(r["qr"], r["qname"]) for r in agent.dns()] == [
        ("query", "www.example.com"), ("response", "www.example.com")]
    assert agent.returncode == 0 and agent.stderr == ""
