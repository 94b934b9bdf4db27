"""Target syntax and the pure pieces of target resolution (selectors, pod readiness)."""

from __future__ import annotations

import pytest

from kubectl_dnstrace.errors import ExitCode, UsageError
from kubectl_dnstrace.kube.targets import (
    Resolution,
    Target,
    not_running_reason,
    parse_target,
    pod_ref,
    selector_string,
)


@pytest.mark.parametrize(
    ("text", "kind", "name"),
    [
        ("pod/web-1", "pods", "web-1"),
        ("pods/web-1", "pods", "web-1"),
        ("po/web-1", "pods", "web-1"),
        ("web-5d8f7c9b6-x2k4p", "pods", "web-5d8f7c9b6-x2k4p"),
        ("deploy/web", "deployments", "web"),
        ("deployment/web", "deployments", "web"),
        ("deployments.apps/web", "deployments", "web"),
        ("ds/node-local-dns", "daemonsets", "node-local-dns"),
        ("daemonset/x", "daemonsets", "x"),
        ("sts/db", "statefulsets", "db"),
        ("statefulset/db", "statefulsets", "db"),
        ("job/report-1", "jobs", "report-1"),
        ("jobs.batch/report-1", "jobs", "report-1"),
        ("rs/web-5d8f7c9b6", "replicasets", "web-5d8f7c9b6"),
        ("replicaset/web-5d8f7c9b6", "replicasets", "web-5d8f7c9b6"),
        ("coredns", "dns", ""),
        ("dns", "dns", ""),
        ("CoreDNS", "dns", ""),
    ],
)
def test_valid_targets(text: str, kind: str, name: str) -> None:
    assert parse_target(text) == Target(kind, name, text)


@pytest.mark.parametrize("text", ["foo/bar/baz", "svc/kube-dns", "cronjob/x", "deploy/", "/web",
                                  "Web_1", "deployments.batch/web", ""])
def test_bad_targets_are_usage_errors_listing_valid_forms(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_target(text)
    assert info.value.exit_code == ExitCode.USAGE
    assert "deploy/NAME" in info.value.hint and "coredns" in info.value.hint


def test_selector_string_covers_match_labels_and_expressions() -> None:
    sel = {
        "matchLabels": {"app": "web", "tier": "front"},
        "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "stage"]},
            {"key": "canary", "operator": "NotIn", "values": ["true"]},
            {"key": "team", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"},
        ],
    }
    assert selector_string(sel) == (
        "app=web,tier=front,env in (prod,stage),canary notin (true),team,!legacy"
    )
    assert selector_string(None) == ""
    assert selector_string({}) == ""


def _pod(name: str, phase: str = "Running", ns: str = "shop", **extra) -> dict:
    pod = {
        "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app"}, {"name": "sidecar"}],
                 "ephemeralContainers": [{"name": "dnstrace-abc123"}]},
        "status": {"phase": phase},
    }
    pod["metadata"].update(extra)
    return pod


def test_not_running_pods_are_skipped_with_a_reason_and_pods_deduplicated() -> None:
    res = Resolution()
    res.add(_pod("a"))
    res.add(_pod("a"))  # the same pod named by two targets: traced once
    res.add(_pod("b", phase="Pending"))
    res.add(_pod("c", deletionTimestamp="2026-11-26T10:00:00Z"))
    assert [p.key for p in res.pods] == ["shop/a"]
    assert res.skipped == [("shop/b", "not running (phase Pending)"), ("shop/c", "terminating")]
    assert not_running_reason(_pod("x", phase="Succeeded")) == "not running (phase Succeeded)"


def test_pod_ref_keeps_first_container_and_existing_ephemeral_names() -> None:
    ref = pod_ref(_pod("a"), role="coredns")
    assert ref.containers == ["app", "sidecar"]
    assert ref.ephemeral_containers == ["dnstrace-abc123"]
    assert (ref.node, ref.role, ref.host_network) == ("node-a", "coredns", False)
