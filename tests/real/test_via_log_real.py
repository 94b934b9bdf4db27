"""``coredns --via log`` on the real cluster: real CoreDNS, real kubelet ConfigMap refreshes,
real ``reload``, through the real kubectl.

The cluster DNS is shared by everyone on the machine, so all but one test use CoreDNS
Deployments of their own (``manifests/coredns-own.yaml``, the same image and arguments as
kube-system's), found with ``--dns-namespace/--dns-selector`` as a user with a non-standard
CoreDNS would. Only ``test_the_shared_cluster_dns_as_a_user_would`` edits the real
``kube-system/coredns``, for one reload cycle, and checks it is byte-identical afterwards.

Their namespace enforces Pod Security ``restricted`` (labelled once the pods run), the case
the log route is for: a capture container is refused there, ``--via log`` is not.

A reload cycle (edit -> kubelet refresh -> ``reload``) takes about a minute here; only two
tests wait for one. SIGKILL, Ctrl-C with a concurrent edit and a Corefile without ``reload``
need no reload at all.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from tests.real.cluster import BackgroundTrace, RealCluster, clients

DOMAIN = "evil.example.test"
ANNOTATION = "kubectl-dnstrace.io/log-run"


@pytest.fixture(scope="module")
def own(real: RealCluster):
    """A namespace with CoreDNS dns-a (reload, no log) and dns-b (log good.example.test, no
    reload), and clients asking both: (namespace, asker pod, quiet pod)."""
    with real.namespace("i17-log-rt") as ns:
        real.apply("coredns-own.yaml", ns)
        real.wait_pods(ns, "app=dns-a", 2)
        real.wait_pods(ns, "app=dns-b", 1)
        ips = {s: real.get_json("service", s, "-n", ns)["spec"]["clusterIP"]
               for s in ("dns-a", "dns-b")}
        real.apply("log-clients.yaml", ns, dns_a=ips["dns-a"], dns_b=ips["dns-b"])
        asker = real.wait_pods(ns, "app=asker")[0]["metadata"]["name"]
        quiet = real.wait_pods(ns, "app=quiet")[0]["metadata"]["name"]
        # From now on the namespace enforces Pod Security restricted (running pods stay):
        # no capture container may be added to its CoreDNS pods, which --via log does not need.
        real.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
        yield ns, asker, quiet


def configmap(real: RealCluster, ns: str, name: str) -> tuple[str, dict, str]:
    cm = real.get_json("configmap", name, "-n", ns)
    return (cm["data"]["Corefile"], cm["metadata"].get("annotations") or {},
            cm["metadata"]["resourceVersion"])


def dns_flags(ns: str, app: str) -> list[str]:
    return ["--dns-namespace", ns, "--dns-selector", f"app={app}"]


def set_corefile(real: RealCluster, ns: str, name: str, text: str) -> None:
    real.kubectl("patch", "configmap", name, "-n", ns, "--type", "merge",
                 "-p", json.dumps({"data": {"Corefile": text}}))


def timed_trace(real: RealCluster, *args: str) -> tuple[object, float, float]:
    """Run a --via log trace in the background; (result, seconds from the edit until every
    pod logs, seconds in all)."""
    start = time.monotonic()
    trace = BackgroundTrace(real, *args)
    trace.wait_for(r"^added 'log", timeout=60)
    edited = time.monotonic()
    trace.wait_for(r"^CoreDNS logs the queries", timeout=240)
    live = time.monotonic()
    done = trace.finish(timeout=120)
    return done, live - edited, time.monotonic() - start


def test_names_the_asker_and_puts_the_corefile_back_byte_for_byte(real, own):
    ns, asker, _ = own
    before, _, _ = configmap(real, ns, "dns-a")
    # The capture route is refused here (restricted), and says what works instead.
    capture = real.plugin("coredns", *dns_flags(ns, "dns-a"), "-d", DOMAIN, "--duration", "5s")
    assert capture.returncode == 6, capture.stderr
    assert "kubectl dnstrace coredns --via log --domain NAME" in capture.stderr
    done, wait, total = timed_trace(real, "coredns", "--via", "log", *dns_flags(ns, "dns-a"),
                                    "-d", DOMAIN, "--duration", "8s", "-o", "json")
    print(f"\nreload wait (edit -> both pods logging): {wait:.1f} s; run in all {total:.1f} s")
    assert done.returncode == 0, done.stderr
    assert clients(json.loads(done.stdout)) == {f"{ns}/{asker}": {DOMAIN}}
    # Progress per pod, read from CoreDNS's own reload lines.
    pods = [p["metadata"]["name"] for p in real.get_json("pods", "-n", ns, "-l", "app=dns-a")["items"]]
    for pod in pods:
        assert re.search(rf"^{ns}/{pod}: logging \(configuration [0-9a-f]{{12}}", done.stderr, re.M), done.stderr
    after, annotations, _ = configmap(real, ns, "dns-a")
    assert after == before and ANNOTATION not in annotations
    assert "byte-identical" in done.stderr
    events = json.loads(done.stdout)["events"]
    responses = [e for e in events if e["qr"] == "response"]
    assert responses and {e["rcode"] for e in responses} == {"NOERROR"}
    assert all("answers" not in e for e in responses)  # a log line does not carry them


def test_sigkill_mid_trace_then_restore_is_byte_identical(real, own):
    ns, _, _ = own
    before, _, _ = configmap(real, ns, "dns-a")
    trace = BackgroundTrace(real, "coredns", "--via", "log", *dns_flags(ns, "dns-a"),
                            "-d", DOMAIN, "--duration", "5m")
    trace.wait_for(r"^added 'log", timeout=60)
    os.killpg(trace.proc.pid, signal.SIGKILL)
    trace.finish(timeout=30)
    left, annotations, _ = configmap(real, ns, "dns-a")
    assert left != before and json.loads(annotations[ANNOTATION])["original"] == before
    # Another run refuses while the killed one's deadline has not passed, and says how to fix it.
    again = real.plugin("coredns", "--via", "log", *dns_flags(ns, "dns-a"), "-d", DOMAIN)
    assert again.returncode == 16 and "--restore" in again.stderr, again.stderr
    restore = real.plugin("coredns", "--restore", *dns_flags(ns, "dns-a"))
    assert restore.returncode == 0, restore.stderr
    assert "byte-identical" in restore.stderr
    after, annotations, _ = configmap(real, ns, "dns-a")
    assert after == before and ANNOTATION not in annotations


def test_a_colleagues_edit_during_the_trace_stays_ctrl_c_removes_only_our_line(real, own):
    ns, _, _ = own
    before, _, _ = configmap(real, ns, "dns-a")
    trace = BackgroundTrace(real, "coredns", "--via", "log", *dns_flags(ns, "dns-a"),
                            "-d", DOMAIN, "--duration", "5m")
    try:
        trace.wait_for(r"^added 'log", timeout=60)
        during, _, _ = configmap(real, ns, "dns-a")
        assert re.search(r"^ +log evil\.example\.test kubectl-dnstrace-run-([0-9a-f]+)\.invalid"
                         r" # kubectl-dnstrace run \1$", during, re.M), during
        set_corefile(real, ns, "dns-a", during.replace("cache 30", "cache 31"))
        os.killpg(trace.proc.pid, signal.SIGINT)
        done = trace.finish(timeout=60)
        assert done.returncode == 130, done.stderr
        assert "someone else changed the Corefile during the run" in done.stderr
        after, annotations, _ = configmap(real, ns, "dns-a")
        assert after == before.replace("cache 30", "cache 31") and ANNOTATION not in annotations
    finally:
        set_corefile(real, ns, "dns-a", before)


def test_without_reload_an_edit_is_refused_and_what_is_logged_is_read(real, own):
    ns, _, quiet = own
    state = configmap(real, ns, "dns-b")
    refused = real.plugin("coredns", "--via", "log", *dns_flags(ns, "dns-b"), "-d", DOMAIN)
    assert refused.returncode == 16, refused.stderr
    assert "no 'reload' plugin" in refused.stderr and "capture route" in refused.stderr
    assert configmap(real, ns, "dns-b") == state  # not even written: same resourceVersion
    # dns-b already logs good.example.test: --since reads it, --via log just follows it.
    since = real.plugin("coredns", "--via", "log", "--since", "10m", *dns_flags(ns, "dns-b"),
                        "-d", "good.example.test", "-o", "json")
    assert since.returncode == 0, since.stderr
    assert clients(json.loads(since.stdout)) == {f"{ns}/{quiet}": {"good.example.test"}}
    assert re.search(r"log line\(s\), the first at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", since.stderr)
    follow = real.plugin("coredns", "--via", "log", *dns_flags(ns, "dns-b"),
                         "-d", "good.example.test", "--duration", "4s", "-o", "json")
    assert follow.returncode == 0, follow.stderr
    assert "already logs these queries: nothing to change" in follow.stderr
    assert clients(json.loads(follow.stdout)) == {f"{ns}/{quiet}": {"good.example.test"}}
    assert configmap(real, ns, "dns-b") == state


@pytest.fixture
def shop(real: RealCluster):
    with real.namespace("i17-log-shop") as ns:
        real.apply("clients.yaml", ns)
        web = real.wait_pods(ns, "app=web")[0]["metadata"]["name"]
        real.wait_pods(ns, "app=benign")
        yield ns, web


def test_the_shared_cluster_dns_as_a_user_would(real, shop):
    ns, web = shop
    before = real.get_json("configmap", "coredns", "-n", "kube-system")
    try:
        done, wait, total = timed_trace(real, "coredns", "--via", "log", "--domain", DOMAIN,
                                        "--duration", "8s", "-o", "json")
        print(f"\nshared CoreDNS reload wait: {wait:.1f} s; run in all {total:.1f} s")
        assert done.returncode == 0, done.stderr
        seen = clients(json.loads(done.stdout))
        assert DOMAIN in seen[f"{ns}/{web}"]
        # Other engineers' clients may ask too; nobody of ours but web.
        assert {k for k in seen if k.startswith(f"{ns}/")} == {f"{ns}/{web}"}
    finally:
        after = real.get_json("configmap", "coredns", "-n", "kube-system")
        if after["data"] != before["data"]:  # never leave the shared Corefile changed
            real.plugin("coredns", "--restore")
    assert after["data"]["Corefile"] == before["data"]["Corefile"]
    assert ANNOTATION not in (after["metadata"].get("annotations") or {})
