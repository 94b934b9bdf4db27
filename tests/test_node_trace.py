"""``kubectl dnstrace node/NAME`` end to end (issue 16): through the real kubectl against the
simulated cluster, with scenario pods sending real DNS in network namespaces.

The node has a hostNetwork DaemonSet pod (the capture attaches to it and so runs in the
node's namespace), a pod asking cluster DNS, a pod asking a resolver of its own directly
(the lab's "outside" resolver, which lives inside the lab), and a pod opening TCP 853 to
it. Each is reported once, with the right resolver and bypass flag; the hostNetwork pod's
queries come from the node, with its hostNetwork pods as candidates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter

import pytest

from tests.conftest import require_lab
from tests.lab.cluster import SimCluster

pytestmark = pytest.mark.timeout(240)

KUBECTL = shutil.which("kubectl", path="/usr/bin:/usr/local/bin") or "/usr/bin/kubectl"
WEB = "web-5d8f7c9b6-x2k4p"
ROGUE = "rogue-1"
DOT = "dot-1"
PROXY = "kube-proxy-m4n5b"
UPSTREAM = "172.18.0.53"  # the lab's upstream resolver: the "outside" resolver here
SCENARIO = {
    "nodes": ["node-a"],
    "dns": {"replicas": 1, "records": {"evil.example.com": "203.0.113.66",
                                       "good.example.com": "203.0.113.7",
                                       "c2.example.net": "203.0.113.99"}},
    "pods": [
        {"name": PROXY, "namespace": "kube-system", "workload": "DaemonSet/kube-proxy",
         "hostNetwork": True, "queries": [{"name": "good.example.com", "every": "2s"}]},
        {"name": WEB, "namespace": "shop", "workload": "Deployment/web",
         "queries": [{"name": "evil.example.com", "every": "1s"}]},
        {"name": ROGUE, "namespace": "shop",
         "queries": [{"name": "c2.example.net", "every": "1s", "server": UPSTREAM}]},
        {"name": DOT, "namespace": "shop", "queries": []},
    ],
}


@pytest.fixture
def scenario(tmp_path):
    require_lab()
    if not os.path.exists(KUBECTL):
        pytest.skip("kubectl binary not installed")
    from tests.lab.scenario import ScenarioLab

    cluster = SimCluster().start()
    sl = ScenarioLab(SCENARIO, cluster=cluster, workdir=tmp_path / "lab")
    try:
        sl.start()
        yield sl
    finally:
        sl.stop()
        cluster.stop()


def dnstrace(sl, *args: str, during=None, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run ``kubectl dnstrace ARGS``; ``during()`` runs in a thread once the capture runs."""
    proc = subprocess.Popen([KUBECTL, "dnstrace", *args], env=sl.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if during is not None:
        def later():
            time.sleep(6)  # the container starts in about a second: well within
            during()
        threading.Thread(target=later, daemon=True).start()
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def open_dot(sl) -> None:
    """A connection attempt to TCP 853 of the lab's resolver (nobody listens: refused)."""
    sl.netns("shop", DOT).run(
        "python3", "-c", "import socket\ns=socket.socket()\ns.settimeout(1)\n"
        f"try: s.connect(({UPSTREAM!r}, 853))\nexcept OSError: pass", check=False)


def test_node_trace_reports_bypass_encrypted_dns_and_the_node(scenario):
    sl = scenario
    r = dnstrace(sl, "node/node-a", "--duration", "12s", "-o", "ndjson",
                 during=lambda: open_dot(sl))
    assert r.returncode == 0, r.stderr
    assert f"capturing through hostNetwork pod kube-system/{PROXY} (DaemonSet kube-proxy)" \
        in r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    dns = [x for x in lines if x["type"] == "dns"]
    enc = [x for x in lines if x["type"] == "encrypted-dns"]

    def by(name):
        return [x for x in dns if x["client"]["name"] == name]

    web, rogue = by(WEB), by(ROGUE)
    assert web and rogue
    # Cluster DNS: not a bypass. The pod's own resolver: a bypass to an external address.
    assert {json.dumps(x["resolver"]) for x in web} == {json.dumps(
        {"ip": sl.dns_pod_ips[0], "kind": "cluster-dns", "bypass": False})}
    assert {json.dumps(x["resolver"]) for x in rogue} == {json.dumps(
        {"ip": UPSTREAM, "kind": "external", "bypass": True})}
    assert {x["qname"] for x in rogue} == {"c2.example.net"}
    # The DNS pod's own upstream queries are its job, not a bypass.
    upstream_leg = [x for x in dns if x["client"]["name"].startswith("coredns-")
                    and x["qr"] == "query"]
    assert upstream_leg and all(not x["resolver"]["bypass"] for x in upstream_leg)
    # The hostNetwork pod's queries: the node, with its hostNetwork pods as candidates.
    node = [x for x in dns if x["client"]["kind"] == "node" and x["qname"] == "good.example.com"
            and x["qr"] == "query"]
    assert node and {x["client"]["name"] for x in node} == {"node-a"}
    assert {tuple(x["client"]["candidates"]) for x in node} == {(f"kube-system/{PROXY}",)}
    # Once each: no message twice (veth and bridge copies), and as many as the pod sent.
    keys = Counter((x["qr"], x["src"], x["sport"], x["id"], x["qname"]) for x in dns)
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
    asked = [x["ts"] for x in rogue if x["qr"] == "query"]
    sent = [q for q in sl.query_log("shop", ROGUE)
            if min(asked) - 0.05 <= q["ts"] <= max(asked) + 0.05]
    assert len(asked) == len(sent)  # every query the pod sent while captured, once
    # The DoT attempt: once, from the SYN, named.
    assert [(x["protocol"], x["src"], x["dst"], x["dport"], x["client"]["name"]) for x in enc] \
        == [("dot", sl.pod_ip("shop", DOT), UPSTREAM, 853, DOT)]


def test_node_trace_summary_sections(scenario):
    sl = scenario
    r = dnstrace(sl, "no/node-a", "--duration", "10s", during=lambda: open_dot(sl))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # Live lines: the bypassing queries marked, the DoT attempt as a line of its own.
    live = out.split("\n\n")[0]  # the live lines, before the summary table
    rogue_lines = [x for x in live.splitlines() if ROGUE in x and "c2.example.net" in x]
    assert rogue_lines and all("BYPASS to " in x for x in rogue_lines)  # (may be shortened)
    assert not [x for x in live.splitlines() if WEB in x and "BYPASS" in x]
    [dot_line] = [x for x in live.splitlines() if "ENCRYPTED DNS attempt" in x]
    assert DOT in dot_line and f"{UPSTREAM}:853" in dot_line and "DOT" in dot_line
    assert "Queries that bypassed cluster DNS:" in out
    [line] = [x for x in out.splitlines() if x.startswith(f"  shop/{ROGUE}")]
    assert f"-> {UPSTREAM} (external) -> c2.example.net x" in line
    assert "Encrypted DNS attempts" in out
    [line] = [x for x in out.splitlines() if x.startswith(f"  shop/{DOT}")]
    assert line.endswith(f"-> {UPSTREAM}:853 (dot) x1")
    assert WEB not in out.split("Queries that bypassed cluster DNS:")[1]


def test_refusals(scenario):
    sl = scenario
    r = dnstrace(sl, "node/nope")
    assert r.returncode == 4 and "node 'nope' not found" in r.stderr
    r = dnstrace(sl, "node/node-a", "--via-pod", f"shop/{WEB}")
    assert r.returncode == 2 and "it is not a hostNetwork pod" in r.stderr
    r = dnstrace(sl, "pod/" + WEB, "-n", "shop", "--create-pod")
    assert r.returncode == 2 and "go with node/NAME or nodes targets" in r.stderr
    r = dnstrace(sl, "node/node-a", "--via-pod", f"kube-system/{PROXY}", "--create-pod")
    assert r.returncode == 2 and "choose one" in r.stderr
    r = dnstrace(sl, "nodes", "-l", "no-such=label")
    assert r.returncode == 4 and "no nodes match -l no-such=label" in r.stderr


FANOUT = {
    "nodes": ["node-a", "node-b"],
    "dns": {"replicas": 1, "records": {"good.example.com": "203.0.113.7"}},
    "pods": [
        {"name": "kube-proxy-aaaaa", "namespace": "kube-system", "node": "node-a",
         "workload": "DaemonSet/kube-proxy", "hostNetwork": True, "queries": []},
        {"name": "kube-proxy-bbbbb", "namespace": "kube-system", "node": "node-b",
         "workload": "DaemonSet/kube-proxy", "hostNetwork": True, "queries": []},
        {"name": "web-a", "namespace": "shop", "node": "node-a",
         "queries": [{"name": "good.example.com", "every": "1s"}]},
    ],
}


def test_nodes_goes_on_when_one_node_fails(tmp_path):
    """``nodes``: node-b's kubelet is down (its capture never starts); node-a is traced and
    the summary says which node was not covered and why."""
    require_lab()
    if not os.path.exists(KUBECTL):
        pytest.skip("kubectl binary not installed")
    from tests.lab.scenario import ScenarioLab

    cluster = SimCluster().start()
    sl = ScenarioLab(FANOUT, cluster=cluster, workdir=tmp_path / "lab")
    try:
        sl.start()
        cluster.kubelet.nodes_without_kubelet.add("node-b")
        r = dnstrace(sl, "nodes", "--duration", "8s", "--timeout", "4s", "--no-lines")
    finally:
        sl.stop()
        cluster.stop()
    assert r.returncode == 0, r.stderr
    assert "node node-b is not covered: kube-system/kube-proxy-bbbbb:" in r.stderr
    assert "capturing in 1 pod(s)" in r.stderr
    assert "web-a" in r.stdout  # node-a's pod, seen from node-a
    tail = r.stdout.split("Nodes not covered:")[1].strip().splitlines()
    assert len(tail) == 1 and tail[0].startswith("node-b: kube-system/kube-proxy-bbbbb:")
