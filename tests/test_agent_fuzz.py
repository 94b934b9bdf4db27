"""Hostile bytes never stop the capture: the decoders, the record builder and the hot loop
take any packet without raising (port 53 carries whatever anyone sends)."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from kubectl_dnstrace.agent import frames
from kubectl_dnstrace.agent.events import EventBuilder
from kubectl_dnstrace.agent.filters import DnsFilter
from kubectl_dnstrace.agent.frames import FrameDecoder
from kubectl_dnstrace.agent.main import Agent, parse_args
from kubectl_dnstrace.agent.output import Output
from tests.test_agent_hotpath import ring

GOOD = [
    bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53) / DNS(id=1, qd=DNSQR(qname="a.example"))),
    bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=53, dport=1000) / DNS(id=1, qr=1, qd=DNSQR(qname="a.example"))),
    bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=53, seq=5) / (b"\x00\x1d" + bytes(DNS(id=2, qd=DNSQR(qname="b.example"))))),
]


def mutated():
    """A real packet with some bytes replaced, cut short or extended."""
    return st.tuples(st.sampled_from(GOOD), st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=8),
                     st.integers(0, 130), st.binary(max_size=20)).map(
        lambda t: _mutate(*t))


def _mutate(base, changes, cut, tail):
    b = bytearray(base)
    for pos, value in changes:
        if pos < len(b):
            b[pos] = value
    return bytes(b[: max(1, cut)]) + tail if cut < len(b) else bytes(b) + tail


packets = st.one_of(mutated(), st.binary(min_size=1, max_size=200))


@settings(max_examples=200, deadline=None)
@given(st.lists(packets, min_size=1, max_size=10))
def test_decoders_and_builder_never_raise(pkts):
    decoder = FrameDecoder()
    builder = EventBuilder(DnsFilter(["example"]), with_raw=True)
    for i, p in enumerate(pkts):
        for linktype in (frames.LINKTYPE_RAW, frames.LINKTYPE_ETHERNET, frames.LINKTYPE_LINUX_SLL,
                         frames.LINKTYPE_LINUX_SLL2, frames.LINKTYPE_NULL):
            for seg in decoder.decode_link(linktype, p, float(i)):
                rec = builder.build(seg, "eth0")
                assert rec is None or rec["type"] == "dns"


@settings(max_examples=150, deadline=None)
@given(st.lists(packets, min_size=1, max_size=10), st.booleans())
def test_hot_loop_never_raises(pkts, aggregating):
    agent = Agent(parse_args(["--domain", "example"]), Output(os.open(os.devnull, os.O_WRONLY)),
                  DnsFilter(["example"]))
    agent._only_ifindex = -1
    agent.volume.aggregating = aggregating
    agent.volume._agg_start = 0.0
    items = [(p, 2, 0, 100.0 + i) for i, p in enumerate(pkts)]
    agent.run_block(ring(items), 0, len(items))
    assert agent.seen == len(items)
    if aggregating:
        agent.volume.take(200.0, agent.text_key)
