"""Attribution: an address and an instant become a pod, a node with candidates, a Service,
or an explicit external / unknown / ambiguous — never a guess, never dropped."""

from __future__ import annotations

import pytest

from kubectl_dnstrace.attribution import Attributor
from kubectl_dnstrace.kube.inventory import Inventory
from kubectl_dnstrace.model import Client
from tests.test_inventory import T0, node, owner, pod, service


@pytest.fixture
def attributor() -> Attributor:
    pods = [
        pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", owner=("ReplicaSet", "web-5d8f7c9b6")),
        pod("report-28471-abcde", "10.244.1.9", namespace="batch", node="node-b",
            start=T0, finished=T0 + 4, owner=("Job", "report-28471")),
        pod("old", "10.244.0.4", start=T0, finished=T0 + 10),
        pod("new", "10.244.0.4", start=T0 + 20),
        pod("kube-proxy-a", "172.18.0.10", namespace="kube-system", host_network=True,
            owner=("DaemonSet", "kube-proxy")),
        pod("agent-x", "172.18.0.10", namespace="monitoring", host_network=True),
        pod("overlap-old", "10.244.1.7", node="node-b", start=T0, finished=T0 + 10),
        pod("overlap-new", "10.244.1.7", node="node-b", start=T0 + 10),
    ]
    nodes = [node("node-a", "172.18.0.10", "10.244.0.0/24", external="203.0.113.10"),
             node("node-b", "172.18.0.11", "10.244.1.0/24")]
    owners = [owner("ReplicaSet", "web-5d8f7c9b6", "shop", ("Deployment", "web")),
              owner("Job", "report-28471", "batch", ("CronJob", "report"))]
    inv = Inventory.from_objects(pods, nodes, [service("kube-dns", "kube-system", "10.96.0.10")],
                                 owners, since=T0 - 60)
    return Attributor(inv)


CASES = [
    # a running pod
    ("10.244.0.5", T0 + 30, Client(kind="pod", ip="10.244.0.5", namespace="shop",
                                   name="web-5d8f7c9b6-x2k4p", workload="Deployment/web",
                                   node="node-a")),
    # a CronJob pod that lived four seconds
    ("10.244.1.9", T0 + 2, Client(kind="pod", ip="10.244.1.9", namespace="batch",
                                  name="report-28471-abcde", workload="CronJob/report",
                                  node="node-b")),
    # IP reuse: the old pod for old events, the new pod for new ones
    ("10.244.0.4", T0 + 5, Client(kind="pod", ip="10.244.0.4", namespace="shop", name="old",
                                  node="node-a")),
    ("10.244.0.4", T0 + 25, Client(kind="pod", ip="10.244.0.4", namespace="shop", name="new",
                                   node="node-a")),
    # between two holders: unknown, saying who held it when
    ("10.244.0.4", T0 + 15, Client(
        kind="unknown", ip="10.244.0.4",
        reason="no known pod held this address then (shop/old from 14:00:00 to 14:00:11; "
               "shop/new from 14:00:20)")),
    # inside a handover overlap: ambiguous, both named
    ("10.244.1.7", T0 + 10.5, Client(
        kind="ambiguous", ip="10.244.1.7", candidates=["shop/overlap-new", "shop/overlap-old"],
        reason="the address changed hands around 14:00:10: shop/overlap-new or shop/overlap-old")),
    # a node address: the node, its hostNetwork pods as candidates, never one of them
    ("172.18.0.10", T0 + 1, Client(
        kind="node", ip="172.18.0.10", name="node-a", node="node-a",
        candidates=["kube-system/kube-proxy-a", "monitoring/agent-x"],
        reason="InternalIP of node node-a: a node process or one of its hostNetwork pods")),
    ("203.0.113.10", T0 + 1, Client(
        kind="node", ip="203.0.113.10", name="node-a", node="node-a",
        candidates=["kube-system/kube-proxy-a", "monitoring/agent-x"],
        reason="ExternalIP of node node-a: a node process or one of its hostNetwork pods")),
    ("172.18.0.11", T0 + 1, Client(
        kind="node", ip="172.18.0.11", name="node-b", node="node-b",
        reason="InternalIP of node node-b: a node process or one of its hostNetwork pods "
               "(none known)")),
    # the CNI gateway: an address in the podCIDR that no pod ever held
    ("10.244.1.1", T0 + 1, Client(
        kind="node", ip="10.244.1.1", name="node-b", node="node-b",
        reason="address in node-b's podCIDR held by no pod: the node's CNI gateway "
               "(bridge x.x.x.1 / flannel x.x.x.0 / tunl0 / cilium_host)")),
    ("10.244.0.0", T0 + 1, Client(
        kind="node", ip="10.244.0.0", name="node-a", node="node-a",
        candidates=["kube-system/kube-proxy-a", "monitoring/agent-x"],
        reason="address in node-a's podCIDR held by no pod: the node's CNI gateway "
               "(bridge x.x.x.1 / flannel x.x.x.0 / tunl0 / cilium_host)")),
    # a Service ClusterIP
    ("10.96.0.10", T0 + 1, Client(kind="service", ip="10.96.0.10", namespace="kube-system",
                                  name="kube-dns", reason="Service ClusterIP")),
    # outside: external (public) or unknown (private), shown, never dropped
    ("8.8.8.8", T0 + 1, Client(kind="external", ip="8.8.8.8",
                               reason="a public address outside the cluster")),
    ("192.168.7.7", T0 + 1, Client(
        kind="unknown", ip="192.168.7.7",
        reason="not a pod, node or Service address known to the inventory")),
]


@pytest.mark.parametrize(("ip", "ts", "expected"), CASES, ids=[f"{c[0]}@{c[1] - T0:g}" for c in CASES])
def test_attribute(attributor, ip, ts, expected):
    assert attributor.attribute(ip, ts) == expected
    assert attributor.attribute(ip, ts) == expected  # and again, from the cache


def test_the_cache_follows_time_and_inventory_changes(attributor):
    assert attributor.attribute("10.244.0.4", T0 + 5).name == "old"
    assert attributor.attribute("10.244.0.4", T0 + 25).name == "new"
    assert attributor.attribute("10.244.0.4", T0 + 6).name == "old"
    assert attributor.attribute("10.244.0.99", T0 + 30).kind == "node"
    attributor.inventory.upsert_pod(pod("late", "10.244.0.99", start=T0 + 29), observed=T0 + 29)
    assert attributor.attribute("10.244.0.99", T0 + 30).name == "late"


def test_a_snapshot_inventory_says_an_earlier_pod_may_be_gone():
    inv = Inventory.from_objects([], [node("node-a", "172.18.0.10", "10.244.0.0/24")],
                                 since=T0 + 100)
    client = Attributor(inv).attribute("10.244.0.33", T0)
    assert client.kind == "node"
    assert client.reason.endswith(", or a pod deleted before the inventory was taken (14:01:40)")


def test_no_inventory_gives_addresses_only():
    a = Attributor()
    assert a.attribute("10.1.2.3", T0) == Client(
        kind="unknown", ip="10.1.2.3", reason="no cluster inventory (offline): address only")
    assert a.attribute("2606:4700::1111", T0).kind == "external"
