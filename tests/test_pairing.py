"""Pairing replies to queries: by the client's end and the question, never the server's address.

The case that made it: at node-local-dns (host network) a query goes to the kube-dns Service
address and its reply comes back from the CoreDNS pod kube-proxy's DNAT chose.
"""

from __future__ import annotations

import dataclasses
import io

from kubectl_dnstrace.attribution import Attributor
from kubectl_dnstrace.model import DnsEvent, OutputOptions
from kubectl_dnstrace.pairing import Pairing
from kubectl_dnstrace.pipeline import Pipeline
from tests.test_linking import q, r
from tests.test_render import inventory

NODE = "172.18.0.10"
SERVICE = "10.96.0.10"
COREDNS_POD = "10.244.1.2"


def dnat_reply(query: DnsEvent, dt: float = 0.002) -> DnsEvent:
    """The reply as the client's capture sees it behind DNAT: from the pod, not the Service."""
    return dataclasses.replace(r(query, dt), src=COREDNS_POD)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pairing(clock=None) -> Pairing[DnsEvent]:
    return Pairing(lambda ev: ev, wait=3.0, clock=clock or Clock())


def test_a_reply_from_another_address_than_asked_is_its_query_s_reply():
    p = pairing()
    ask = q(0.0, NODE, SERVICE, 7, "api.shop.svc.cluster.local", sport=53000)
    assert p.add(ask) == []
    reply = dnat_reply(ask)
    assert p.add(reply) == [(ask, reply)]
    assert p.flush() == []


def test_same_id_other_question_or_other_client_port_is_not_a_reply():
    p = pairing()
    ask = q(0.0, NODE, SERVICE, 7, "a.example.com", sport=53000)
    p.add(ask)
    other_name = dataclasses.replace(dnat_reply(ask), qname="b.example.com")
    other_port = dataclasses.replace(dnat_reply(ask), dport=53001)
    assert p.add(other_name) == []  # held behind the older query, in time order
    assert p.add(other_port) == []
    assert p.flush() == [(ask, None), (None, other_name), (None, other_port)]


def test_no_response_only_after_the_wait_and_lines_stay_in_time_order():
    clock = Clock()
    p = pairing(clock)
    lost = q(0.0, NODE, SERVICE, 1, "slow.example.com", sport=53000)
    answered = q(0.5, NODE, SERVICE, 2, "fast.example.com", sport=53001)
    assert p.add(lost) == []
    assert p.add(answered) == []
    reply = dnat_reply(answered)
    assert p.add(reply) == []  # behind the older query that still waits
    clock.now = 2.9
    assert p.expire() == []
    clock.now = 3.1  # wall time: the captures went quiet
    assert p.expire() == [(lost, None), (answered, reply)]


def test_a_newer_event_past_the_wait_gives_up_an_older_query():
    p = pairing()
    lost = q(0.0, NODE, SERVICE, 1, "slow.example.com", sport=53000)
    later = q(3.5, NODE, SERVICE, 2, "x.example.com", sport=53001)
    p.add(lost)
    assert p.add(later) == [(lost, None)]


def test_a_late_reply_within_the_wait_is_paired_not_no_response():
    p = pairing()
    ask = q(0.0, NODE, SERVICE, 1, "slow.example.com", sport=53000)
    p.add(ask)
    p.add(q(2.0, NODE, SERVICE, 2, "x.example.com", sport=53001))
    reply = dnat_reply(ask, dt=2.5)
    assert p.add(reply) == [(ask, reply)]


def test_live_lines_and_linker_agree_behind_dnat_at_node_local_dns():
    """Through the Pipeline (trace and analyze both use it): no "no response" for answered
    queries asked of the Service address, and lines in time order."""
    seen = "kube-system/node-local-dns-abcde"
    evs = []
    for i in range(20):
        ask = q(i * 0.25, NODE, SERVICE, 100 + i, f"n{i}.shop.svc.cluster.local",
                seen=seen, sport=50000 + i)
        evs.append(ask)
        evs.append(dnat_reply(ask, dt=0.001 + (i % 3) * 0.3))
    evs.sort(key=lambda e: e.ts)
    out, err = io.StringIO(), io.StringIO()
    p = Pipeline(OutputOptions(format="table", width=120), out, err,
                 attributor=Attributor(inventory()), meta={"targets": []})
    for ev in evs:
        p.feed(ev)
    p.finish()
    lines = out.getvalue().split("\n\n")[0].splitlines()[1:]
    assert len(lines) == 20
    assert not [line for line in lines if "no response" in line]
    times = [line.split()[0] for line in lines]
    assert times == sorted(times)


def test_with_a_hold_an_earlier_exchange_from_a_slower_stream_still_comes_first():
    clock = Clock()
    p = Pairing(lambda ev: ev, wait=3.0, clock=clock, hold=1.0)
    fast = q(1.0, NODE, SERVICE, 1, "a.example.com", seen="kube-system/node-local-dns-a")
    slow = q(0.5, "10.244.0.5", COREDNS_POD, 2, "b.example.com", seen="kube-system/coredns-1")
    assert p.add(fast) == []
    assert p.add(fast_reply := dnat_reply(fast)) == []  # held: a slower stream may be behind
    clock.now = 0.4
    assert p.add(slow) == []
    assert p.add(slow_reply := r(slow)) == []
    clock.now = 1.5  # the hold has passed in wall time for both
    assert p.expire() == [(slow, slow_reply), (fast, fast_reply)]


def test_analyze_of_a_node_capture_behind_dnat_pairs_every_reply(tmp_path, capsys):
    """The same pairing in ``analyze``: a host-network capture where each query goes to the
    Service address and each reply comes from the CoreDNS pod."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, UDP
    from scapy.utils import wrpcap

    from kubectl_dnstrace.cli import main

    packets = []
    for i in range(10):
        ts = 1_764_165_600.0 + i * 0.2
        query = IP(src=NODE, dst=SERVICE) / UDP(sport=50000 + i, dport=53) / DNS(
            id=i, rd=1, qd=DNSQR(qname=f"n{i}.example.com"))
        reply = IP(src=COREDNS_POD, dst=NODE) / UDP(sport=53, dport=50000 + i) / DNS(
            id=i, qr=1, qd=DNSQR(qname=f"n{i}.example.com"),
            an=DNSRR(rrname=f"n{i}.example.com", rdata="203.0.113.9"))
        query.time, reply.time = ts, ts + 0.001 + (i % 3) * 0.25
        packets += [query, reply]
    packets.sort(key=lambda p: p.time)
    path = tmp_path / "node.pcap"
    wrpcap(str(path), packets)
    assert main(["analyze", "--offline", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.split("\n\n")[0].splitlines()[1:]
    assert len(lines) == 10
    assert not [ln for ln in lines if "no response" in ln]
    assert [ln.split()[0] for ln in lines] == sorted(ln.split()[0] for ln in lines)
