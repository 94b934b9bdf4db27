"""The kernel filter, checked by running it: a small classic-BPF interpreter executes
``port53_filter()`` on crafted packets exactly as the kernel would on a SOCK_DGRAM socket
(offsets from the network header, the ethertype from the SKF_AD_PROTOCOL ancillary load)."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from kubectl_dnstrace.agent.capture import SNAPLEN, _sock_fprog, port53_filter


def run_bpf(program, packet: bytes, ethertype: int) -> int:
    """Execute classic BPF (the opcodes the filter uses); out-of-range loads reject, as in
    the kernel."""
    a = x = 0
    pc = 0
    while True:
        op, jt, jf, k = program[pc]
        pc += 1
        try:
            if op == 0x28:  # ldh [k] (or ancillary)
                a = ethertype if k == 0xFFFFF000 else struct.unpack_from("!H", packet, k)[0]
            elif op == 0x30:  # ldb [k]
                a = packet[k]
            elif op == 0x48:  # ldh [x + k]
                a = struct.unpack_from("!H", packet, x + k)[0]
            elif op == 0xB1:  # ldxb 4*([k]&0xf)
                x = 4 * (packet[k] & 0x0F)
            elif op == 0x15:  # jeq #k
                pc += jt if a == k else jf
            elif op == 0x45:  # jset #k
                pc += jt if a & k else jf
            elif op == 0x06:  # ret #k
                return k
            else:
                raise AssertionError(f"opcode {op:#x} not emulated")
        except (IndexError, struct.error):
            return 0


V4, V6 = 0x0800, 0x86DD


@pytest.mark.parametrize(
    ("packet", "ethertype", "accepted"),
    [
        (IP() / UDP(sport=1234, dport=53), V4, True),
        (IP() / UDP(sport=53, dport=1234), V4, True),
        (IP() / TCP(sport=1234, dport=53), V4, True),
        (IP() / TCP(sport=53, dport=1234), V4, True),
        (IP() / UDP(sport=1234, dport=54), V4, False),
        (IP() / UDP(sport=5353, dport=5353), V4, False),
        (IP(options=b"\x01\x01\x01\x00") / UDP(sport=1, dport=53), V4, True),  # options: x = ihl
        (IP(flags="MF") / UDP(sport=1, dport=53), V4, True),  # a first fragment has ports
        (IP(frag=100) / Raw(b"\x00\x35\x00\x35" * 4), V4, False),  # later fragment
        (IP(proto=1) / Raw(b"\x00\x35\x00\x35" * 4), V4, False),  # ICMP
        (IPv6() / UDP(sport=1, dport=53), V6, True),
        (IPv6() / TCP(sport=53, dport=1), V6, True),
        (IPv6() / UDP(sport=1, dport=2), V6, False),
        (IPv6() / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=53), V6, True),  # user space decides
        (IPv6() / ICMPv6EchoRequest(), V6, False),
        (IP() / UDP(sport=1, dport=53), 0x0806, False),  # ARP ethertype
        (Raw(b"\x45"), V4, False),  # truncated: loads out of range reject
    ],
)
def test_filter_accepts_port_53_only(packet, ethertype, accepted):
    verdict = run_bpf(port53_filter(), bytes(packet), ethertype)
    assert verdict == (SNAPLEN if accepted else 0)


def test_jumps_stay_inside_the_program():
    program = port53_filter()
    for pc, (op, jt, jf, _k) in enumerate(program):
        if op in (0x15, 0x45):
            assert pc + 1 + max(jt, jf) < len(program)
    assert program[-1] == (0x06, 0, 0, 0)


def test_sock_fprog_points_at_the_instructions():
    program = port53_filter()
    fprog, buf = _sock_fprog(program)
    assert struct.unpack_from("=H", fprog)[0] == len(program)
    assert bytes(buf)[:8] == struct.pack("=HBBI", program[0][0], program[0][1], program[0][2], program[0][3])
