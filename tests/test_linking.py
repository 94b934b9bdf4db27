"""Upstream-leg linking as a sandwich: a list of events -> attribute + link -> what it says."""

from __future__ import annotations

import pytest

from kubectl_dnstrace.attribution import Attributor, clock
from kubectl_dnstrace.kube.inventory import Inventory
from kubectl_dnstrace.linking import Annotation, Linker, describe_link
from kubectl_dnstrace.model import DnsEvent
from tests.test_inventory import T0, node, owner, pod

COREDNS = "kube-system/coredns-7db6d8ff4d-abcde"
NLD_A = "kube-system/node-local-dns-aaaaa"


def q(ts, src, dst, qid, name, qtype="A", seen=COREDNS, sport=40000):
    return DnsEvent(ts=T0 + ts, qr="query", proto="udp", src=src, sport=sport, dst=dst,
                    dport=53, id=qid, qname=name, qtype=qtype, observed_at=seen)


def r(query: DnsEvent, dt=0.002, rcode="NOERROR", answers=("203.0.113.66",)):
    return DnsEvent(ts=query.ts + dt, qr="response", proto=query.proto, src=query.dst, sport=53,
                    dst=query.src, dport=query.sport, id=query.id, qname=query.qname,
                    qtype=query.qtype, rcode=rcode, answers=list(answers), latency_ms=dt * 1000,
                    observed_at=query.observed_at)


@pytest.fixture
def attributor():
    pods = [
        pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", owner=("ReplicaSet", "web-5d8f7c9b6")),
        pod("api-0", "10.244.1.5", node="node-b", owner=("StatefulSet", "api")),
        pod("coredns-7db6d8ff4d-abcde", "10.244.1.2", namespace="kube-system", node="node-b",
            labels={"k8s-app": "kube-dns"}),
        pod("node-local-dns-aaaaa", "172.18.0.10", namespace="kube-system", host_network=True,
            labels={"k8s-app": "node-local-dns"}, owner=("DaemonSet", "node-local-dns")),
    ]
    nodes = [node("node-a", "172.18.0.10", "10.244.0.0/24"),
             node("node-b", "172.18.0.11", "10.244.1.0/24")]
    owners = [owner("ReplicaSet", "web-5d8f7c9b6", "shop", ("Deployment", "web"))]
    return Attributor(Inventory.from_objects(pods, nodes, owners=owners, since=T0 - 60))


def run(attributor: Attributor, events: list[DnsEvent], **linker_args):
    """attribute -> link, collecting each event's annotation."""
    inv = attributor.inventory
    linker = Linker(
        {p.key for role in ("coredns", "node-local-dns") for p in inv.dns_pods(role)},
        {p.node for p in inv.dns_pods("node-local-dns")},
        server_of=attributor.attribute, **linker_args)
    out: list[Annotation] = []
    for ev in events:
        client = attributor.attribute(ev.src if ev.qr == "query" else ev.dst, ev.ts)
        out.append(linker.observe(ev, client))
    return linker, out


def test_a_coredns_upstream_query_is_linked_to_the_client_query_before_it(attributor):
    client_q = q(0.000, "10.244.0.5", "10.244.1.2", 4242, "evil.example.com")
    upstream_q = q(0.001, "10.244.1.2", "172.18.0.53", 777, "evil.example.com", sport=51000)
    again = q(1.0, "10.244.0.5", "10.244.1.2", 4243, "evil.example.com", sport=40001)
    events = [client_q, upstream_q, r(upstream_q, 0.001), r(client_q, 0.003), again, r(again)]
    linker, notes = run(attributor, events)
    [link] = linker.links
    assert notes[1].link is link
    assert link.upstream
    assert [c.name for c in link.causes] == ["web-5d8f7c9b6-x2k4p"]
    assert describe_link(link, clock) == (
        "upstream lookup of evil.example.com A at 14:00:00 by "
        "kube-system/coredns-7db6d8ff4d-abcde to 172.18.0.53 caused by "
        "shop/web-5d8f7c9b6-x2k4p (Deployment/web)")
    assert notes[3].served == "forwarded"
    assert notes[5].served == "cache"  # answered a second later, without a forward


def test_every_waiting_client_is_a_cause_and_other_names_or_types_are_not(attributor):
    a = q(0.000, "10.244.0.5", "10.244.1.2", 1, "evil.example.com")
    b = q(0.001, "10.244.1.5", "10.244.1.2", 2, "evil.example.com")
    other_name = q(0.001, "10.244.1.5", "10.244.1.2", 3, "good.example.com", sport=40001)
    other_type = q(0.001, "10.244.1.5", "10.244.1.2", 4, "evil.example.com", "AAAA", sport=40002)
    up = q(0.002, "10.244.1.2", "172.18.0.53", 9, "evil.example.com", sport=51000)
    linker, _ = run(attributor, [a, b, other_name, other_type, up])
    assert [c.name for c in linker.links[0].causes] == ["web-5d8f7c9b6-x2k4p", "api-0"]


def test_an_answered_or_old_query_is_not_a_cause(attributor):
    old = q(0.0, "10.244.0.5", "10.244.1.2", 1, "evil.example.com")
    answered = q(10.0, "10.244.1.5", "10.244.1.2", 2, "evil.example.com")
    up = q(10.5, "10.244.1.2", "172.18.0.53", 9, "evil.example.com", sport=51000)
    linker, _ = run(attributor, [old, answered, r(answered, 0.001), up])
    link = linker.links[0]
    assert link.causes == []
    assert describe_link(link, clock).endswith(
        "caused by no client query seen just before it (cause outside the capture)")


def test_the_chain_pod_to_node_local_dns_to_coredns_to_upstream(attributor):
    # node-local-dns on node-a (hostNetwork, its capture sees the pod's own address) ...
    pod_q = q(0.000, "10.244.0.5", "169.254.20.10", 100, "evil.example.com", seen=NLD_A)
    nld_fwd = q(0.001, "172.18.0.10", "10.244.1.2", 200, "evil.example.com", seen=NLD_A,
                sport=45000)
    # ... CoreDNS on node-b sees node-a's address, then asks upstream.
    at_coredns = q(0.002, "172.18.0.10", "10.244.1.2", 200, "evil.example.com", sport=45000)
    up = q(0.003, "10.244.1.2", "172.18.0.53", 300, "evil.example.com", sport=51000)
    linker, notes = run(attributor, [pod_q, nld_fwd, at_coredns, up])
    hop, hop_seen_at_coredns, upstream = linker.links
    assert not hop.upstream and hop.server.name == "coredns-7db6d8ff4d-abcde"
    assert [c.name for c in hop.causes] == ["web-5d8f7c9b6-x2k4p"]
    assert [c.name for c in hop_seen_at_coredns.causes] == ["web-5d8f7c9b6-x2k4p"]
    assert upstream.upstream
    assert [c.name for c in upstream.causes] == ["web-5d8f7c9b6-x2k4p"]
    assert [c.kind + "/" + c.name for c in upstream.via] == ["node/node-a"]
    assert notes[3].link is upstream


def test_a_pod_on_another_node_is_never_blamed_for_node_a_forwarding(attributor):
    elsewhere = q(0.000, "10.244.1.5", "169.254.20.10", 1, "evil.example.com", seen="node-b-cap")
    at_coredns = q(0.002, "172.18.0.10", "10.244.1.2", 2, "evil.example.com", sport=45000)
    linker, _ = run(attributor, [elsewhere, at_coredns])
    assert linker.links[0].causes == []


def test_a_cause_from_a_lagging_log_stream_is_linked_late(attributor):
    at_coredns = q(0.002, "172.18.0.10", "10.244.1.2", 2, "evil.example.com", sport=45000)
    pod_q = q(0.000, "10.244.0.5", "169.254.20.10", 1, "evil.example.com", seen=NLD_A)
    linker, _ = run(attributor, [at_coredns, pod_q])
    assert [c.name for c in linker.links[0].causes] == ["web-5d8f7c9b6-x2k4p"]


def test_resolvers_are_learnt_from_traffic_without_an_inventory():
    # analyze --offline: the address that received queries and then sends some forwards.
    events = [q(0.0, "10.244.0.5", "10.244.1.2", 1, "evil.example.com", seen="f.pcap"),
              q(0.001, "10.244.1.2", "8.8.8.8", 2, "evil.example.com", seen="f.pcap", sport=5)]
    linker, notes = run(Attributor(), events)
    [link] = linker.links
    assert link.upstream and [c.ip for c in link.causes] == ["10.244.0.5"]
    assert notes[0].link is None


def test_node_local_dns_going_upstream_itself_names_the_pod(attributor):
    # Names outside the cluster domain go from node-local-dns straight to the upstream.
    pod_q = q(0.000, "10.244.0.5", "169.254.20.10", 100, "evil.example.com", seen=NLD_A)
    up = q(0.001, "172.18.0.10", "172.18.0.53", 200, "evil.example.com", seen=NLD_A, sport=45000)
    linker, _ = run(attributor, [pod_q, up])
    assert describe_link(linker.links[0], clock) == (
        "upstream lookup of evil.example.com A at 14:00:00 by node/node-a (node-local-dns) to "
        "172.18.0.53 caused by shop/web-5d8f7c9b6-x2k4p (Deployment/web)")


def test_an_answer_delivered_early_by_another_stream_does_not_hide_the_cause(attributor):
    # The node-local-dns stream delivers the pod's query *and its answer* before the
    # CoreDNS stream delivers the hop it caused: waiting is judged by event time.
    pod_q = q(0.000, "10.244.0.5", "169.254.20.10", 1, "evil.cluster.local", seen=NLD_A)
    at_coredns = q(0.002, "172.18.0.10", "10.244.1.2", 2, "evil.cluster.local", sport=45000)
    linker, _ = run(attributor, [pod_q, r(pod_q, 0.005), at_coredns])
    assert [c.name for c in linker.links[0].causes] == ["web-5d8f7c9b6-x2k4p"]
