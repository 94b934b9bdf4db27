"""Workload targets follow their pods on the real cluster: a rollout during a trace.

``deploy/web`` is traced while ``kubectl rollout restart`` replaces its pod: the trace
attaches to the new pod when it runs, says which pod went away and which replaces it, and
reports the new pod's queries; the summary lists both pods with their spans.
"""

from __future__ import annotations

import json

import pytest

from kubectl_dnstrace.errors import ExitCode
from tests.real.cluster import BackgroundTrace, RealCluster

DOMAIN = "evil.example.test"


@pytest.fixture
def shop(real: RealCluster):
    with real.namespace("i18-follow") as ns:
        real.apply("clients.yaml", ns)
        web = real.wait_pods(ns, "app=web")[0]["metadata"]["name"]
        yield ns, web


def test_a_deploy_trace_during_a_rollout_reports_the_replacement_pod(real, shop):
    ns, old = shop
    trace = BackgroundTrace(real, "deploy/web", "-n", ns, "--duration", "45s", "-o", "json")
    trace.wait_capturing()
    real.kubectl("rollout", "restart", "deploy/web", "-n", ns)
    real.kubectl("rollout", "status", "deploy/web", "-n", ns, "--timeout=90s", timeout=120)
    new = next(p["metadata"]["name"] for p in real.wait_pods(ns, "app=web")
               if p["metadata"]["name"] != old)
    trace.wait_for(rf"^now tracing {ns}/{new}\b", timeout=60)
    trace.wait_for(rf"^{ns}/{old} went away", timeout=60)
    done = trace.finish()
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    asked = {e["client"]["name"] for e in doc["events"]
             if e["qr"] == "query" and e["qname"] == DOMAIN}
    assert {old, new} <= asked
    spans = {c["pod"]: c for c in doc["meta"]["coverage"]}
    assert spans[f"{ns}/{old}"]["went_away"] in ("terminating", "deleted")
    assert spans[f"{ns}/{old}"]["replaced_by"] == f"{ns}/{new}"
    assert spans[f"{ns}/{new}"]["replaces"] == f"{ns}/{old}"
    assert spans[f"{ns}/{new}"]["to"] > spans[f"{ns}/{new}"]["from"]


def test_a_pod_gone_without_replacement_is_its_own_exit_code(real, shop):
    """Scaled to zero mid-trace: the pod goes, nothing replaces it: exit 15 (COVERAGE_GAP), said why."""
    ns, old = shop
    trace = BackgroundTrace(real, "deploy/web", "-n", ns, "--duration", "20s")
    trace.wait_capturing()
    real.kubectl("scale", "deploy/web", "-n", ns, "--replicas=0")
    trace.wait_for(rf"^{ns}/{old} went away", timeout=60)
    done = trace.finish()
    assert done.returncode == ExitCode.COVERAGE_GAP, done.stderr
    assert f"{ns}/{old} went away and no replacement was traced" in done.stderr
    assert "Pods traced:" in done.stdout and "not replaced: a gap" in done.stdout
