"""NodeLocal DNSCache on the real cluster: a trace at the cluster DNS pairs every reply.

The set-up is the addon's (tests/real/manifests/nodelocal.yaml): node-cache on the host
network at 169.254.20.10, forwarding over UDP to the kube-dns Service and over TCP to
kube-dns-upstream, both answered by a CoreDNS pod behind kube-proxy's DNAT; a client whose
resolv.conf names 169.254.20.10. The capture at node-local-dns sees a query to a Service
address and its reply from a pod address: each such query once showed as "no response".

The cluster is shared: the cache binds 169.254.20.10 only (kube-dns is untouched), lives for
this module only, and the module checks the host's root namespace is as before afterwards.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.real.cluster import BackgroundTrace, RealCluster

NS = "i18-nodelocal"
IFACE = "nodelocaldns"


def _iface_present() -> bool:
    return subprocess.run(["ip", "link", "show", IFACE], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def nodelocal(real: RealCluster):
    """NodeLocal DNSCache in kube-system and a client of it; removed again, interface too."""
    if _iface_present():
        pytest.fail(f"interface {IFACE} already exists on the host: another NodeLocal set-up "
                    "is running; not touching it")
    try:
        real.apply("nodelocal.yaml", "kube-system")
        pod = real.wait_pods("kube-system", "k8s-app=node-local-dns", timeout=120)[0]
        with real.namespace(NS) as ns:
            real.apply("nodelocal-client.yaml", ns, ns=ns)
            client = real.wait_pods(ns, "app=nl-client")[0]["metadata"]["name"]
            yield ns, client, pod["metadata"]["name"]
    finally:
        real.kubectl("delete", "-n", "kube-system", "daemonset/node-local-dns",
                     "service/kube-dns-upstream", "configmap/node-local-dns",
                     "--ignore-not-found", "--wait=true", check=False, timeout=120)
        end = time.monotonic() + 60
        while time.monotonic() < end and (
                _iface_present() or real.get_json("pods", "-n", "kube-system", "-l",
                                                  "k8s-app=node-local-dns")["items"]):
            time.sleep(1)
        left = _iface_present()
        if left:  # the pod's own clean-up did not run: remove it, and say so
            subprocess.run(["ip", "link", "del", IFACE], capture_output=True)
        assert not left, f"interface {IFACE} was left on the host by node-local-dns"


def test_a_coredns_trace_with_nodelocal_shows_no_false_no_response(real, nodelocal):
    """20 s at CoreDNS and node-local-dns: every query of the client is answered (it asks a
    reachable name every second), so no line of it may say "no response"; and at
    COLUMNS=120 no line of the live table or the summary is wider."""
    _ns, client, cache = nodelocal
    wide = BackgroundTrace(real, "coredns", "--duration", "20s", "-o", "wide")
    narrow = BackgroundTrace(real, "coredns", "--duration", "20s", env={"COLUMNS": "120"})
    done_wide, done_narrow = wide.finish(), narrow.finish()
    assert done_wide.returncode == 0, done_wide.stderr
    assert done_narrow.returncode == 0, done_narrow.stderr
    assert "NodeLocal DNSCache is on" in done_wide.stderr
    ours = [ln for ln in done_wide.stdout.split("\n\n")[0].splitlines()
            if f" {client} " in ln]
    at_cache = [ln for ln in ours if f"kube-system/{cache}" in ln]
    assert len(at_cache) >= 20, done_wide.stdout[:3000]  # two names a second, 20 s
    false = [ln for ln in ours if ln.rstrip().endswith("no response")]
    assert not false, "\n".join(false)
    lines = done_narrow.stdout.splitlines()
    assert lines and max(len(ln) for ln in lines) <= 120, max(lines, key=len)
    times = [ln.split()[0] for ln in done_narrow.stdout.split("\n\n")[0].splitlines()[1:]]
    assert times == sorted(times)


def test_a_pod_trace_does_not_say_nodelocal_is_on(real, nodelocal):
    ns, client, _ = nodelocal
    done = real.plugin(f"pod/{client}", "-n", ns, "--duration", "5s", env={"COLUMNS": "250"})
    assert done.returncode == 0, done.stderr
    assert "NodeLocal DNSCache" not in done.stderr
    assert client in done.stdout
