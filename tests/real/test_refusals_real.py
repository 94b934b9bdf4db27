"""Every refusal a real cluster gives, as the user sees it: one clear message, the documented
exit code, and nothing changed in the cluster (or, where a container was added before the
cluster said no, nothing left running)."""

from __future__ import annotations

import json

import pytest

from kubectl_dnstrace.errors import ExitCode
from tests.real.cluster import RealCluster

UNPULLABLE = "127.0.0.1:9/dnstrace/unpullable:1"  # refused on loopback: no traffic leaves


def ephemeral(real: RealCluster, ns: str, pod: str) -> list[str]:
    spec = real.get_json("pod", pod, "-n", ns)["spec"]
    return [c["name"] for c in spec.get("ephemeralContainers") or []]


@pytest.fixture(scope="module")
def levels(real: RealCluster):
    """The same compliant pod in a baseline and a restricted namespace."""
    with real.namespace("rt-baseline", psa="baseline") as base, \
            real.namespace("rt-restricted", psa="restricted") as restricted:
        for ns in (base, restricted):
            real.apply("psa-pods.yaml", ns)
        for ns in (base, restricted):
            real.wait_pods(ns, "app=asker")
        yield base, restricted


def test_restricted_refuses_before_any_change_and_says_what_works_instead(real, levels):
    _, ns = levels
    done = real.plugin("pod/asker", "-n", ns, "--duration", "5s")
    assert done.returncode == ExitCode.POD_SECURITY, done.stderr
    assert "restricted" in done.stderr and "NET_RAW" in done.stderr
    assert "analyze" in done.stderr  # an alternative that works
    assert "Traceback" not in done.stderr
    assert ephemeral(real, ns, "asker") == []


def test_baseline_traces_as_root_without_added_capabilities(real, levels):
    ns, _ = levels
    done = real.plugin("pod/asker", "-n", ns, "--duration", "6s", "-o", "json")
    assert done.returncode == ExitCode.MATCHED, done.stderr
    assert "baseline" in done.stderr
    doc = json.loads(done.stdout)
    assert {e["client"]["name"] for e in doc["summary"]} == {"asker"}
    added = real.get_json("pod", "asker", "-n", ns)["spec"]["ephemeralContainers"]
    assert len(added) == 1 and "capabilities" not in added[0]["securityContext"]


def test_rbac_without_ephemeral_containers_names_the_permission_and_changes_nothing(real, levels):
    ns, _ = levels
    kubeconfig = real.user("rt-viewer")
    real.apply("rbac-viewer.yaml", ns, user="rt-viewer")
    before = ephemeral(real, ns, "asker")
    done = real.plugin("pod/asker", "-n", ns, "--duration", "5s", kubeconfig=kubeconfig)
    assert done.returncode == ExitCode.FORBIDDEN, done.stderr
    assert "pods/ephemeralcontainers" in done.stderr
    assert "kubectl dnstrace rbac" in done.stderr
    assert "Traceback" not in done.stderr
    assert ephemeral(real, ns, "asker") == before


def test_an_image_that_cannot_be_pulled_is_a_clear_failure_with_nothing_running(real, levels):
    ns, _ = levels
    done = real.plugin("pod/asker", "-n", ns, "--duration", "5s", "--image", UNPULLABLE,
                       "--timeout", "60s")
    assert done.returncode == ExitCode.CONTAINER_FAILED, done.stderr
    assert "cannot be pulled" in done.stderr and UNPULLABLE in done.stderr
    assert "--image" in done.stderr
    assert "Traceback" not in done.stderr
    assert real.running_agents([(ns, "asker", c) for c in ephemeral(real, ns, "asker")]) == []


@pytest.mark.parametrize(("args", "code", "says"), [
    (["pod/nope", "-n", "rt-baseline"], ExitCode.NOT_FOUND, "pod 'nope' not found in namespace rt-baseline"),
    (["pod/nope", "-n", "rt-no-such-ns"], ExitCode.NOT_FOUND, "namespace 'rt-no-such-ns' not found"),
    (["deploy/nope", "-n", "rt-baseline"], ExitCode.NOT_FOUND, "not found"),
    (["pod/a/b"], ExitCode.USAGE, "pod/a/b"),
    (["--duration", "-5s", "pod/asker", "-n", "rt-baseline"], ExitCode.USAGE, "duration"),
])
def test_bad_targets_and_flags_are_refused_with_nothing_changed(real, levels, args, code, says):
    ns, _ = levels
    before = ephemeral(real, ns, "asker")
    done = real.plugin(*args)
    assert done.returncode == code, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert ephemeral(real, ns, "asker") == before
