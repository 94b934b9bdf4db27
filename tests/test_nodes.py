"""Choosing how a node is captured (kube/nodes.py), the --create-pod pod, rbac --nodes, and
the resolver classification of bypass.py: pure functions over plain dicts and dataclasses."""

from __future__ import annotations

import pytest
import yaml

from kubectl_dnstrace.attribution import Attributor
from kubectl_dnstrace.bypass import BypassReport, ResolverClassifier, summary_text
from kubectl_dnstrace.errors import UsageError
from kubectl_dnstrace.kube.inventory import Inventory
from kubectl_dnstrace.kube.nodes import candidate_pods, capture_pod, describe_choice, is_mirror
from kubectl_dnstrace.kube.targets import parse_target
from kubectl_dnstrace.model import DnsEvent, PodRef
from kubectl_dnstrace.options import load_resolver_file
from kubectl_dnstrace.rbac import policy_documents, render_rbac


def pod(name, ns="kube-system", node="node-7", host=True, owner=None, phase="Running",
        annotations=None, ip="172.18.0.17", labels=None, uid=None):
    meta = {"name": name, "namespace": ns, "uid": uid or f"uid-{name}",
            "annotations": annotations or {}, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True,
                                    "uid": "o-" + owner[1]}]
    return {"metadata": meta,
            "spec": {"nodeName": node, "hostNetwork": host, "containers": [{"name": "c"}]},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}],
                       "startTime": "2026-01-01T00:00:00Z"}}


def test_targets_parse():
    assert parse_target("node/node-7").kind == "nodes"
    assert parse_target("no/node-7").name == "node-7"
    assert parse_target("nodes/node-7").name == "node-7"
    assert (parse_target("nodes").kind, parse_target("nodes").name) == ("nodes", "")
    with pytest.raises(UsageError):
        parse_target("node/Node_7")


def test_the_carrier_is_a_running_daemonset_pod_never_a_mirror_pod():
    pods = [
        pod("etcd-node-7", annotations={"kubernetes.io/config.mirror": "abc"}),
        pod("kube-apiserver-node-7", owner=("Node", "node-7")),
        pod("agent-x", ns="monitoring", owner=("DaemonSet", "agent")),
        pod("kube-proxy-abc", owner=("DaemonSet", "kube-proxy")),
        pod("old-proxy", owner=("DaemonSet", "kube-proxy"), phase="Pending"),
        pod("web", ns="shop", host=False),
        pod("kube-proxy-other", node="node-8", owner=("DaemonSet", "kube-proxy")),
        pod("bare-host", ns="default"),
    ]
    assert is_mirror(pods[0]) and is_mirror(pods[1]) and not is_mirror(pods[2])
    good, refused = candidate_pods(pods, "node-7")
    assert [p["metadata"]["name"] for p in good] == ["kube-proxy-abc", "agent-x", "bare-host"]
    assert refused == [
        "kube-system/etcd-node-7 is a static (mirror) pod, which takes no ephemeral container",
        "kube-system/kube-apiserver-node-7 is a static (mirror) pod, which takes no ephemeral "
        "container",
        "kube-system/old-proxy is not running (phase Pending)"]
    assert describe_choice(good[0], "node-7", 2) == (
        "node node-7: capturing through hostNetwork pod kube-system/kube-proxy-abc (DaemonSet "
        "kube-proxy): it shares the node's network namespace; 2 other hostNetwork pod(s) there")


def test_the_created_pod_is_pinned_host_network_and_dies_with_the_trace():
    ref = PodRef("dt", "dnstrace-abc123-node-7", node="node-7", host_network=True, role="node")
    container = {"name": "dnstrace-abc123", "image": "python:3.13-alpine", "command": ["x"],
                 "targetContainerName": "dnstrace-abc123"}
    obj = capture_pod(ref, container, "abc123", 300)
    spec = obj["spec"]
    assert (spec["nodeName"], spec["hostNetwork"], spec["restartPolicy"]) == ("node-7", True, "Never")
    assert spec["activeDeadlineSeconds"] == 360
    assert spec["containers"] == [{"name": "dnstrace-abc123", "image": "python:3.13-alpine",
                                   "command": ["x"]}]
    assert obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kubectl-dnstrace",
                                         "dnstrace.io/run": "abc123"}


def test_rbac_nodes_adds_creating_pods_in_the_pod_namespace():
    docs = [d for d in yaml.safe_load_all(render_rbac(False, "dt", None, nodes=True)) if d]
    cluster = policy_documents(True, None, None)
    assert docs[:len(cluster)] == cluster  # everything --cluster grants
    role, binding = docs[len(cluster):]
    assert (role["kind"], binding["kind"]) == ("Role", "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "dt"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                              "verbs": ["create", "delete"]}]


def test_resolver_file(tmp_path):
    f = tmp_path / "doh.txt"
    f.write_text("# mine\n10.0.0.53\n fd00::53  # v6\n\n")
    assert load_resolver_file(str(f)) == ["10.0.0.53", "fd00::53"]
    f.write_text("dns.google\n")
    with pytest.raises(UsageError, match=r"line 1: 'dns\.google' is not an IP address"):
        load_resolver_file(str(f))


def classify_setup():
    objs = [pod("coredns-1", host=False, ip="10.244.1.2", labels={"k8s-app": "kube-dns"},
                owner=("ReplicaSet", "coredns-5d")),
            pod("rogue", ns="shop", host=False, ip="10.244.0.9"),
            pod("web", ns="shop", host=False, ip="10.244.0.5"),
            pod("node-local-dns-x", node="node-a", ip="172.18.0.10",
                labels={"k8s-app": "node-local-dns"}, owner=("DaemonSet", "node-local-dns"))]
    nodes = [{"metadata": {"name": "node-a"}, "spec": {"podCIDR": "10.244.0.0/24"},
              "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.10"}]}},
             {"metadata": {"name": "node-b"}, "spec": {"podCIDR": "10.244.1.0/24"},
              "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.11"}]}}]
    services = [{"metadata": {"name": "kube-dns", "namespace": "kube-system"},
                 "spec": {"clusterIP": "10.96.0.10"}},
                {"metadata": {"name": "web", "namespace": "shop"},
                 "spec": {"clusterIP": "10.96.5.5"}}]
    inv = Inventory.from_objects(objs, nodes, services)
    return ResolverClassifier(Attributor(inv)), Attributor(inv)


@pytest.mark.parametrize(("src", "dst", "kind", "bypass"), [
    ("10.244.0.5", "10.96.0.10", "cluster-dns", False),
    ("10.244.0.5", "10.244.1.2", "cluster-dns", False),  # after kube-proxy's DNAT
    ("10.244.0.5", "169.254.20.10", "node-local", False),
    ("10.244.0.5", "172.18.0.10", "node-local", False),  # the node of a node-local-dns pod
    ("10.244.0.5", "10.244.0.9", "pod", True),
    ("10.244.0.5", "10.96.5.5", "service", True),
    ("10.244.0.5", "172.18.0.11", "node", True),
    ("10.244.0.5", "8.8.8.8", "external", True),
    ("10.244.1.2", "8.8.8.8", "external", False),  # CoreDNS asking its upstream: its job
    ("172.18.0.10", "8.8.8.8", "external", False),  # a node running node-local-dns
])
def test_resolver_kinds_and_bypass(src, dst, kind, bypass):
    classifier, attributor = classify_setup()
    ev = DnsEvent(1.9e9, "query", "udp", src, 40000, dst, 53, 1, "x.example", "A")
    res = classifier.classify(ev, attributor.attribute(src, ev.ts))
    assert res == {"ip": dst, "kind": kind, "bypass": bypass}


def test_bypass_summary_names_pod_resolver_and_names():
    classifier, attributor = classify_setup()
    report = BypassReport()
    for i, name in enumerate(["c2.example.net", "c2.example.net", "x.example.net"]):
        ev = DnsEvent(1.9e9 + i, "query", "udp", "10.244.0.5", 40000 + i, "10.244.0.9", 53, i,
                      name, "A")
        client = attributor.attribute(ev.src, ev.ts)
        report.add_query(ev, client, classifier.classify(ev, client))
    report.add_encrypted({"ts": 1.9e9, "protocol": "doh", "client": "10.244.0.5", "sport": 1,
                          "dst": "1.1.1.1", "dport": 443},
                         attributor.attribute("10.244.0.5", 1.9e9), "kube-system/x")
    report.uncovered = [("node-b", "no running hostNetwork pod")]
    text = summary_text(report, lambda ip: attributor.attribute(ip, 1.9e9))
    assert text == (
        "Queries that bypassed cluster DNS:\n"
        "  shop/web -> 10.244.0.9 (pod shop/rogue) -> c2.example.net x2, x.example.net x1\n"
        "\n"
        "Encrypted DNS attempts (connection openings: DoT to port 853, DoH to public resolvers "
        "on 443; contents unseen):\n"
        "  shop/web -> 1.1.1.1:443 (doh) x1\n"
        "\n"
        "Nodes not covered:\n"
        "  node-b: no running hostNetwork pod\n")


def test_a_coredns_capture_sees_queries_to_cluster_dns_whatever_the_address():
    classifier, attributor = classify_setup()
    ev = DnsEvent(1.9e9, "query", "udp", "10.244.0.5", 40000, "10.64.0.2", 53, 1, "x.example",
                  "A")
    client = attributor.attribute(ev.src, ev.ts)
    assert classifier.classify(ev, client)["kind"] == "external"
    assert classifier.classify(ev, client, at_cluster_dns=True) == {
        "ip": "10.64.0.2", "kind": "cluster-dns", "bypass": False}
    # CoreDNS's own query to its upstream, in its own capture: classified by its address.
    up = DnsEvent(1.9e9, "query", "udp", "10.244.1.2", 5353, "8.8.8.8", 53, 2, "x.example", "A")
    assert classifier.classify(up, attributor.attribute(up.src, up.ts), at_cluster_dns=True) == {
        "ip": "8.8.8.8", "kind": "external", "bypass": False}


def test_the_bypass_section_is_bounded_and_case_folds_names():
    classifier, attributor = classify_setup()
    report = BypassReport()
    for i in range(60):
        ev = DnsEvent(1.9e9, "query", "udp", "10.244.0.5", 40000, f"192.0.2.{i + 1}", 53, i,
                      "C2.Example.NET" if i % 2 else "c2.example.net", "A")
        client = attributor.attribute(ev.src, ev.ts)
        for _ in range(100 - i):
            report.add_query(ev, client, classifier.classify(ev, client))
    lines = summary_text(report).splitlines()
    assert len(lines) == 1 + 50 + 1
    assert lines[1] == "  shop/web -> 192.0.2.1 (external) -> c2.example.net x100"
    assert lines[2] == "  shop/web -> 192.0.2.2 (external) -> c2.example.net x99"
    assert lines[-1] == ("  ... and 10 more (client, resolver) pairs with fewer queries (-o json "
                         "lists them all)")
