"""``node/NAME`` on the real cluster (issue 16), through the real kubectl.

The node runs no hostNetwork pod of its own (kube-proxy is a host process there), so the
refusal is tested first; then ``--create-pod``; then the ordinary way, attaching to a
hostNetwork DaemonSet pod. What goes around cluster DNS stays inside the cluster: a pod
(``asker``) asks a resolver of its own (``rogue``, dnsmasq in a pod) by pod IP, and a pod
(``dot``) opens TCP 853 to it. No test sends anything to an outside address.
"""

from __future__ import annotations

import json
import re

import pytest

from kubectl_dnstrace.errors import ExitCode
from tests.conftest import IN_CI
from tests.real.cluster import BackgroundTrace, RealCluster

NODE = "realk8s-node"


@pytest.fixture(scope="module")
def bypass(real: RealCluster):
    """(namespace, rogue resolver's IP, dot pod's IP) with rogue, dot and asker running."""
    with real.namespace("rt-node") as ns:
        real.apply("bypass.yaml", ns)
        pods = {p["metadata"]["name"]: p for p in real.wait_pods(ns, "app in (rogue,dot)", 2)}
        rogue_ip = pods["rogue"]["status"]["podIP"]
        real.apply("asker.yaml", ns, rogue=rogue_ip)
        real.wait_pods(ns, "app=asker")
        yield ns, rogue_ip, pods["dot"]["status"]["podIP"]


def hostnet_pods(real: RealCluster) -> list[str]:
    return [f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            for p in real.get_json("pods", "-A")["items"] if p["spec"].get("hostNetwork")
            and p["spec"].get("nodeName") == NODE]


def open_dot(real: RealCluster, ns: str, rogue_ip: str) -> None:
    real.kubectl("exec", "-n", ns, "dot", "--", "python3", "-c",
                 "import socket\ns=socket.socket()\ns.settimeout(2)\n"
                 f"try: s.connect(({rogue_ip!r}, 853))\nexcept OSError: pass")


def lines(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.strip()]


def check_bypass(records: list[dict], ns: str, rogue_ip: str, dot_ip: str) -> None:
    dns = [r for r in records if r["type"] == "dns"]
    asker = [r for r in dns if r["client"].get("name") == "asker"
             and r["client"].get("namespace") == ns and r["qr"] == "query"]
    to_rogue = [r for r in asker if r["dst"] == rogue_ip]
    to_cluster = [r for r in asker if r["dst"] != rogue_ip]
    assert to_rogue and {r["qname"] for r in to_rogue} == {"c2.bypass.test"}
    assert {json.dumps(r["resolver"]) for r in to_rogue} == {
        json.dumps({"ip": rogue_ip, "kind": "pod", "bypass": True})}
    assert to_cluster and all(r["resolver"]["kind"] == "cluster-dns"
                              and not r["resolver"]["bypass"] for r in to_cluster)
    # Once each: the query before kube-proxy's DNAT and after it is one query. (The asker's
    # dig uses a new socket per query; a forwarder such as node-local-dns reuses its port,
    # and over a run two of its queries may share an id.)
    keys = [(r["qr"], r["src"], r["sport"], r["id"], r["qname"]) for r in dns
            if r["client"].get("name") == "asker" and r["client"].get("namespace") == ns]
    assert keys and len(keys) == len(set(keys))
    enc = [r for r in records if r["type"] == "encrypted-dns" and r["src"] == dot_ip]
    assert [(r["protocol"], r["dst"], r["dport"], r["client"]["name"]) for r in enc] == [
        ("dot", rogue_ip, 853, "dot")]


def test_refusals_without_a_hostnetwork_pod(real, bypass):
    ns, _, _ = bypass
    if hostnet_pods(real):
        why = f"the node has hostNetwork pods now: {hostnet_pods(real)}"
        if IN_CI or not real.reused:  # a cluster of this session's own has none here
            pytest.fail(why)
        pytest.skip(why)  # a shared cluster where someone runs node-local-dns
    done = real.plugin(f"node/{NODE}", "--duration", "5s")
    assert done.returncode == ExitCode.NOT_FOUND, done.stderr
    assert "no running hostNetwork pod that can take an ephemeral container" in done.stderr
    assert "--create-pod" in done.stderr and "--via-pod" in done.stderr
    with real.namespace("rt-node-baseline", psa="baseline") as base:
        done = real.plugin(f"node/{NODE}", "--create-pod", "--pod-namespace", base,
                           "--duration", "5s")
        assert done.returncode == ExitCode.POD_SECURITY, done.stderr
        assert f"namespace {base} enforces Pod Security level baseline" in done.stderr
        assert real.get_json("pods", "-n", base)["items"] == []  # nothing was created
    done = real.plugin(f"node/{NODE}", "--via-pod", f"{ns}/dot", "--duration", "5s")
    assert done.returncode == ExitCode.USAGE and "not a hostNetwork pod" in done.stderr


def test_create_pod_captures_the_node_and_deletes_its_pod(real, bypass):
    ns, rogue_ip, dot_ip = bypass
    before = hostnet_pods(real)
    trace = BackgroundTrace(real, f"node/{NODE}", "--create-pod", "--pod-namespace", ns,
                            "--duration", "20s", "-o", "ndjson")
    trace.wait_capturing()
    assert "(--create-pod: no ephemeral container is added to the node's own pods)" in \
        trace.wait_for(r"creating capture pod")
    created = trace.wait_for(r"^created pod ")
    name = created.split()[2].split("/")[1]
    pod = real.get_json("pod", name, "-n", ns)
    assert pod["spec"]["hostNetwork"] and pod["spec"]["nodeName"] == NODE
    assert pod["spec"]["activeDeadlineSeconds"] == 80
    open_dot(real, ns, rogue_ip)
    done = trace.finish()
    assert done.returncode == 0, done.stderr
    check_bypass(lines(done.stdout), ns, rogue_ip, dot_ip)
    assert f"deleted capture pod {ns}/{name}" in done.stderr
    gone = real.kubectl("get", "pod", name, "-n", ns, check=False)
    assert gone.returncode != 0 or "Terminating" in gone.stdout
    # Nothing was added to the node's own hostNetwork pods.
    assert not [a for a in real.added if a[0:2] in {tuple(p.split("/")) for p in before}]


def test_attach_to_a_hostnetwork_daemonset_pod(real, bypass):
    ns, rogue_ip, dot_ip = bypass
    real.apply("hostnet-agent.yaml", ns)
    [carrier] = real.wait_pods(ns, "app=hostnet-agent")
    mine = f"{ns}/{carrier['metadata']['name']}"
    trace = BackgroundTrace(real, f"node/{NODE}", "--duration", "20s", "-o", "ndjson")
    trace.wait_capturing()
    # A DaemonSet's hostNetwork pod: ours, or one the shared cluster runs (node-local-dns is
    # preferred when present: its job is DNS).
    chosen = re.search(r"capturing through hostNetwork pod (\S+) \(DaemonSet (\S+)\)",
                       trace.stderr)
    assert chosen, trace.stderr
    assert chosen.group(1) == mine or chosen.group(2) == "node-local-dns", chosen.group(0)
    open_dot(real, ns, rogue_ip)
    done = trace.finish()
    assert done.returncode == 0, done.stderr
    check_bypass(lines(done.stdout), ns, rogue_ip, dot_ip)
    # Ours named with --via-pod, through -o table: the bypass section names the pod, the
    # resolver, the name.
    done = real.plugin(f"node/{NODE}", "--via-pod", mine, "--duration", "8s", "--no-lines")
    assert f"capturing through {mine} (--via-pod)" in done.stderr
    assert done.returncode == 0, done.stderr
    section = done.stdout.split("Queries that bypassed cluster DNS:")[1]
    assert f"  {ns}/asker -> {rogue_ip} (pod {ns}/rogue) -> c2.bypass.test x" in section


