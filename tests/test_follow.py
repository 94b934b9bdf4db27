"""Workload targets follow their pods, in the simulated cluster with real packets.

A Deployment's pod is replaced while ``deploy/web`` is traced (the new pod starts, the old
one is deleted, as a rolling update does): the trace attaches to the new pod, says which went
away and which replaces it, and its JSON names both pods' queries and spans. Scaled down
with no replacement, the run ends with exit 15 (COVERAGE_GAP) and says why. The pure account (coverage)
is tested alone first.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from kubectl_dnstrace.coverage import Coverage
from kubectl_dnstrace.errors import ExitCode
from tests.conftest import require_lab
from tests.lab.cluster import SimCluster
from tests.test_trace_e2e import KUBECTL

OLD, NEW = "web-5d8f7c9b6-aaaaa", "web-5d8f7c9b6-bbbbb"


def test_a_replacement_traced_before_or_after_its_predecessor_goes_is_paired():
    cov = Coverage()
    cov.traced("shop/a", "", at=0.0)
    cov.traced("shop/b", "", at=0.0)
    # Rolling update: the new pod runs before the old one goes.
    assert cov.traced("shop/c", "deploy/web", at=5.0, added=True) == \
        "now tracing shop/c: a new pod of deploy/web"
    assert cov.gone("shop/a", "terminating", at=6.0, group="deploy/web").startswith(
        "shop/a went away (terminating); its replacement shop/c is traced since")
    # Recreate: the old one goes first, the new one comes later.
    assert "no replacement of deploy/web" in cov.gone("shop/b", "deleted", at=7.0,
                                                      group="deploy/web")
    assert cov.gone("shop/b", "deleted", at=7.5) == ""  # said once
    assert cov.traced("shop/d", "deploy/web", at=9.0, added=True) == \
        "now tracing shop/d: it replaces shop/b of deploy/web"
    assert cov.gaps() == []
    assert cov.lines(until=10.0)[0].endswith("went away (terminating), replaced by shop/c")


def test_a_pod_gone_with_nothing_in_its_place_is_a_gap():
    cov = Coverage()
    cov.traced("shop/a", "", at=0.0)
    assert not cov.changed
    cov.gone("shop/a", "deleted", at=3.0)
    assert [s.key for s in cov.gaps()] == ["shop/a"]
    assert cov.lines(until=10.0) == [
        "shop/a  00:00:00-00:00:03 (3s), went away (deleted), not replaced: a gap"]


def _lab(tmp_path, pods):
    require_lab()
    if not os.path.exists(KUBECTL):
        pytest.skip("kubectl binary not installed")
    from tests.lab.scenario import ScenarioLab

    scenario = {"nodes": ["node-a"],
                "dns": {"replicas": 1, "records": {"evil.example.com": "203.0.113.66"}},
                "pods": pods}
    cluster = SimCluster().start()
    sl = ScenarioLab(scenario, cluster=cluster, workdir=tmp_path / "lab")
    return cluster, sl


def _web(name: str, **timing) -> dict:
    return {"name": name, "namespace": "shop", "workload": "Deployment/web",
            "queries": [{"name": "evil.example.com", "type": "A", "every": "300ms"}], **timing}


def _trace(sl, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KUBECTL, "dnstrace", *args], env=sl.env(), capture_output=True,
                          text=True, timeout=120)


def test_a_rolled_deployment_is_followed_to_its_new_pod(tmp_path):
    cluster, sl = _lab(tmp_path, [_web(OLD, stop="6s"), _web(NEW, start="4s")])
    try:
        sl.start()
        done = _trace(sl, "deploy/web", "-n", "shop", "--duration", "12s", "-o", "json")
    finally:
        sl.stop()
        cluster.stop()
    assert done.returncode == 0, done.stderr
    assert f"now tracing shop/{NEW}" in done.stderr
    assert f"shop/{OLD} went away" in done.stderr
    doc = json.loads(done.stdout)
    asked = {e["client"]["name"] for e in doc["events"] if e["qr"] == "query"}
    assert asked == {OLD, NEW}
    observed = {e["observed_at"] for e in doc["events"]}
    assert observed == {f"shop/{OLD}", f"shop/{NEW}"}  # each captured in its own pod
    spans = {c["pod"]: c for c in doc["meta"]["coverage"]}
    assert spans[f"shop/{OLD}"]["replaced_by"] == f"shop/{NEW}"
    assert spans[f"shop/{NEW}"]["replaces"] == f"shop/{OLD}"


def test_a_deployment_scaled_down_mid_trace_is_exit_12(tmp_path):
    cluster, sl = _lab(tmp_path, [_web(OLD, stop="4s")])
    try:
        sl.start()
        done = _trace(sl, "deploy/web", "-n", "shop", "--duration", "8s")
    finally:
        sl.stop()
        cluster.stop()
    assert done.returncode == ExitCode.COVERAGE_GAP, done.stderr
    assert f"shop/{OLD} went away and no replacement was traced" in done.stderr
    assert "not replaced: a gap" in done.stdout
