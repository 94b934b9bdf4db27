"""The plugin on a real cluster, through the real kubectl, as a responder runs it.

The cluster DNS is real CoreDNS forwarding to an in-cluster upstream (``evil.example.test``
-> 10.66.6.6); the clients are the project's manifests: ``web`` asks for the alerted name,
``benign`` for others, and the Job ``c2`` lives a few seconds and asks for a subdomain over TCP.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.real.cluster import BackgroundTrace, RealCluster, clients

DOMAIN = "evil.example.test"


@pytest.fixture(scope="module")
def shop(real: RealCluster):
    """A namespace with the client Deployments running: (namespace, web pod, benign pod)."""
    with real.namespace("rt-shop") as ns:
        real.apply("clients.yaml", ns)
        web = real.wait_pods(ns, "app=web")[0]["metadata"]["name"]
        benign = real.wait_pods(ns, "app=benign")[0]["metadata"]["name"]
        yield ns, web, benign


def test_coredns_trace_names_the_deployment_and_a_job_that_lived_seconds(real, shop):
    ns, web, benign = shop
    coredns = real.coredns_pods()
    trace = BackgroundTrace(real, "coredns", "--domain", DOMAIN, "--duration", "35s", "-o", "json")
    trace.wait_capturing()
    real.apply("job.yaml", ns)
    real.kubectl("wait", "-n", ns, "--for=condition=complete", "job/c2", "--timeout=60s")
    job_pod = real.get_json("pods", "-n", ns, "-l", "job-name=c2")["items"][0]["metadata"]["name"]
    done = trace.finish()
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    seen = clients(doc)
    assert DOMAIN in seen[f"{ns}/{web}"]
    assert f"c2.{DOMAIN}" in seen[f"{ns}/{job_pod}"]
    # Nothing else asked: the only other clients are CoreDNS itself, asking its upstream.
    others = set(seen) - {f"{ns}/{web}", f"{ns}/{job_pod}"}
    if real.reused:  # a shared cluster may have other askers; none of them in our namespace
        others = {o for o in others if o.startswith(f"{ns}/") or o.startswith("kube-system/")}
    assert others <= {f"kube-system/{p}" for p in coredns}, others
    assert f"{ns}/{benign}" not in seen
    # The Job's pod asked over TCP, and its workload is the Job.
    job_events = [e for e in doc["events"] if e.get("client", {}).get("name") == job_pod]
    assert job_events and {e["proto"] for e in job_events} == {"tcp"}
    assert {e["client"]["workload"] for e in job_events} == {"Job/c2"}
    web_answers = {a for e in doc["events"] if e["qr"] == "response"
                   and e.get("client", {}).get("name") == web for a in e.get("answers", [])}
    assert web_answers == {"10.66.6.6"}
    # Every capture this run added was reported, one per CoreDNS pod.
    assert sorted(p for _, p, _ in real.added[-2:]) == coredns
    real.kubectl("delete", "job", "c2", "-n", ns, "--wait=false")


@pytest.mark.parametrize("target", ["pod", "deploy", "selector"])
def test_pod_workload_and_selector_targets_see_the_pods_own_queries(real, shop, target):
    ns, web, _ = shop
    how = {"pod": [f"pod/{web}"], "deploy": ["deploy/web"], "selector": ["-l", "app=web"]}[target]
    done = real.plugin(*how, "-n", ns, "--duration", "8s", "-o", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert clients(doc) == {f"{ns}/{web}": {DOMAIN}}
    assert "Added ephemeral container dnstrace-" in done.stderr and f"{ns}/{web}" in done.stderr
    responses = [e for e in doc["events"] if e["qr"] == "response"]
    assert responses and {e["rcode"] for e in responses} == {"NOERROR"}


def test_table_output_names_the_culprit_and_says_nothing_matched_otherwise(real, shop):
    ns, web, _ = shop
    done = real.plugin(f"pod/{web}", "-n", ns, "--duration", "6s", "--domain", DOMAIN,
                       env={"COLUMNS": "160"})
    assert done.returncode == 0, done.stderr
    assert max(map(len, done.stdout.splitlines())) <= 160
    header = next(ln for ln in done.stdout.splitlines() if ln.startswith("NAMESPACE"))
    assert "POD" in header and "NAMES" in header
    row = next(ln for ln in done.stdout.splitlines() if web in ln and "Deployment/web" in ln)
    assert DOMAIN in row
    none = real.plugin(f"pod/{web}", "-n", ns, "--duration", "5s", "--domain", "nothing.test")
    assert none.returncode == 1, none.stderr


def test_pcap_evidence_opens_in_tshark_and_analyze_attributes_the_same_pod(real, shop, tmp_path):
    ns, web, _ = shop
    pcap = tmp_path / "evidence.pcapng"
    done = real.plugin(f"pod/{web}", "-n", ns, "--duration", "8s", "--domain", DOMAIN,
                       "--pcap", str(pcap), "-o", "json")
    assert done.returncode == 0, done.stderr
    assert pcap.stat().st_mode & 0o777 == 0o600
    live = clients(json.loads(done.stdout))
    tshark = shutil.which("tshark")
    assert tshark, "tshark is installed by packaging/debian-deps.sh"
    fields = subprocess.run([tshark, "-r", str(pcap), "-Y", "dns", "-T", "fields",
                             "-e", "dns.qry.name"], capture_output=True, text=True, check=True)
    names = set(fields.stdout.split())
    assert names == {DOMAIN}
    again = real.plugin("analyze", str(pcap), "-o", "json")
    assert again.returncode == 0, again.stderr
    assert clients(json.loads(again.stdout)) == live == {f"{ns}/{web}": {DOMAIN}}


def test_the_project_image_runs_the_preinstalled_agent(real, shop):
    ns, web, _ = shop
    done = real.plugin(f"pod/{web}", "-n", ns, "--duration", "6s", "--domain", DOMAIN,
                       "--image", real.project_image, "--image-pull-policy", "IfNotPresent",
                       "-o", "json")
    assert done.returncode == 0, done.stderr
    assert clients(json.loads(done.stdout)) == {f"{ns}/{web}": {DOMAIN}}
    name = next(c for n, p, c in reversed(real.added) if p == web)
    spec = real.get_json("pod", web, "-n", ns)["spec"]["ephemeralContainers"]
    ours = next(c for c in spec if c["name"] == name)
    assert ours["image"] == real.project_image
    assert ours["command"][:3] == ["python3", "-m", "kubectl_dnstrace.agent"]
