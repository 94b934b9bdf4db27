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
        ("cronjob/report", "cronjobs", "report"),
        ("cj/report", "cronjobs", "report"),
        ("cronjobs.batch/report", "cronjobs", "report"),
        ("replicaset/web-5d8f7c9b6", "replicasets", "web-5d8f7c9b6"),
        ("coredns", "dns", ""),
        ("dns", "dns", ""),
        ("CoreDNS", "dns", ""),
    ],
)
def test_valid_targets(text: str, kind: str, name: str) -> None:
    assert parse_target(text) == Target(kind, name, text)


@pytest.mark.parametrize("text", ["foo/bar/baz", "svc/kube-dns", "cronjobs.apps/x", "deploy/", "/web",
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


# ---- against the simulated API server -----------------------------------------------------------

from kubectl_dnstrace.errors import NotFound  # noqa: E402
from kubectl_dnstrace.kube.targets import resolve_targets  # noqa: E402
from tests.kubesim import connect, running_pod, service, sim_cluster, workload  # noqa: E402


@pytest.fixture
def cluster():
    with sim_cluster() as c:
        yield c


def keys(res) -> list[str]:
    return sorted(p.key for p in res.pods)


def test_deployment_means_its_running_pods_through_its_replicasets(cluster, tmp_path) -> None:
    dep = workload(cluster, "Deployment", "shop", "web", {"app": "web"})
    rs = workload(cluster, "ReplicaSet", "shop", "web-5d8f7c9b6", {"app": "web"}, owner=dep)
    running_pod(cluster, "shop", "web-5d8f7c9b6-aaaaa", {"app": "web"}, owner=rs)
    running_pod(cluster, "shop", "web-5d8f7c9b6-bbbbb", {"app": "web"}, owner=rs, phase="Pending")
    # Another workload whose pods the selector also matches: ownerReferences exclude them.
    other = workload(cluster, "ReplicaSet", "shop", "web-canary", {"app": "web", "t": "c"})
    running_pod(cluster, "shop", "web-canary-ccccc", {"app": "web", "t": "c"}, owner=other)
    kube = connect(cluster, tmp_path, namespace="shop")
    res = resolve_targets(kube, ["deploy/web"])
    assert keys(res) == ["shop/web-5d8f7c9b6-aaaaa"]
    assert res.skipped == [("shop/web-5d8f7c9b6-bbbbb", "not running (phase Pending)")]
    # The long form, rs/, and several targets naming the same pod: traced once.
    res = resolve_targets(kube, ["deployment/web", "rs/web-5d8f7c9b6", "pod/web-5d8f7c9b6-aaaaa"])
    assert keys(res) == ["shop/web-5d8f7c9b6-aaaaa"]


@pytest.mark.parametrize("kind,word", [("DaemonSet", "ds"), ("StatefulSet", "sts"), ("Job", "job")])
def test_other_workloads(cluster, tmp_path, kind, word) -> None:
    wl = workload(cluster, kind, "batch", "w", {"app": "w"})
    running_pod(cluster, "batch", "w-1", {"app": "w"}, owner=wl)
    running_pod(cluster, "batch", "w-2", {"app": "w"}, owner=wl)
    kube = connect(cluster, tmp_path)
    assert keys(resolve_targets(kube, [f"{word}/w"], namespace="batch")) == ["batch/w-1", "batch/w-2"]


def _job_of(cluster, cronjob: dict, name: str, pod_phase: str) -> None:
    """A Job as the CronJob controller makes it (owned by ``cronjob``), with one pod."""
    labels = {"batch.kubernetes.io/job-name": name}
    job = workload(cluster, "Job", "batch", name, labels, owner=cronjob)
    running_pod(cluster, "batch", f"{name}-x7k2p", labels, owner=job, phase=pod_phase)


def test_cronjob_means_the_pods_of_its_running_jobs(cluster, tmp_path) -> None:
    cj = workload(cluster, "CronJob", "batch", "report", {})
    _job_of(cluster, cj, "report-29123450", "Succeeded")  # an earlier run, kept
    _job_of(cluster, cj, "report-29123460", "Running")
    other = workload(cluster, "CronJob", "batch", "cleanup", {})
    _job_of(cluster, other, "cleanup-29123460", "Running")  # not report's
    kube = connect(cluster, tmp_path)
    for text in ("cronjob/report", "cj/report", "cronjobs.batch/report"):
        res = resolve_targets(kube, [text], namespace="batch")
        assert keys(res) == ["batch/report-29123460-x7k2p"]
        assert res.skipped == [("batch/report-29123450-x7k2p", "not running (phase Succeeded)")]
    assert keys(resolve_targets(kube, ["cronjob/report"], all_namespaces=True)) == [
        "batch/report-29123460-x7k2p"]


def test_cronjob_between_runs_says_so_and_what_to_do(cluster, tmp_path) -> None:
    cj = workload(cluster, "CronJob", "batch", "report", {})
    _job_of(cluster, cj, "report-29123450", "Succeeded")
    kube = connect(cluster, tmp_path)
    with pytest.raises(NotFound) as info:
        resolve_targets(kube, ["cronjob/report"], namespace="batch")
    assert info.value.message == (
        "no job is running now for cronjob/report in namespace batch (job report-29123450 has "
        "no running pod); batch/report-29123450-x7k2p is not running (phase Succeeded)")
    assert "kubectl dnstrace coredns --domain" in info.value.hint
    assert info.value.hint.endswith(
        "kubectl create job --from=cronjob/report report-manual -n batch, "
        "then: kubectl dnstrace job/report-manual -n batch")
    # Never run yet, or not since its last Job was cleaned up: when it last ran, if known.
    workload(cluster, "CronJob", "batch", "nightly", {})
    with pytest.raises(NotFound) as info:
        resolve_targets(kube, ["cj/nightly"], namespace="batch")
    assert info.value.message == "no job is running now for cronjob/nightly in namespace batch (no job yet)"
    cluster.store.create({"kind": "CronJob", "metadata": {"name": "weekly", "namespace": "batch"},
                          "spec": {"schedule": "0 3 * * 0", "jobTemplate": {"spec": {}}},
                          "status": {"lastScheduleTime": "2026-11-22T03:00:00Z"}})
    with pytest.raises(NotFound) as info:
        resolve_targets(kube, ["cronjob/weekly"], namespace="batch")
    assert info.value.message == ("no job is running now for cronjob/weekly in namespace batch "
                                  "(last scheduled 2026-11-22T03:00:00Z)")
    assert info.value.exit_code == ExitCode.NOT_FOUND
    # With another target that has pods, the trace goes on and the idle CronJob is a note.
    running_pod(cluster, "batch", "worker-1")
    res = resolve_targets(kube, ["cronjob/report", "pod/worker-1"], namespace="batch")
    assert keys(res) == ["batch/worker-1"]
    assert "cronjob/report in namespace batch has no running job now" in res.notes
    with pytest.raises(NotFound) as info:
        resolve_targets(kube, ["cronjob/nope"], namespace="batch")
    assert info.value.message == "cronjob 'nope' not found in namespace batch"


def test_selector_namespace_flag_and_all_namespaces(cluster, tmp_path) -> None:
    running_pod(cluster, "shop", "a", {"tier": "front"})
    running_pod(cluster, "shop", "b", {"tier": "back"})
    running_pod(cluster, "blog", "c", {"tier": "front"})
    kube = connect(cluster, tmp_path, namespace="shop")
    assert keys(resolve_targets(kube, [], "tier=front")) == ["shop/a"]
    assert keys(resolve_targets(kube, [], "tier=front", namespace="blog")) == ["blog/c"]
    assert keys(resolve_targets(kube, [], "tier=front", all_namespaces=True)) == ["blog/c", "shop/a"]
    assert keys(resolve_targets(kube, ["pod/c"], all_namespaces=True)) == ["blog/c"]
    assert keys(resolve_targets(kube, ["b"])) == ["shop/b"]  # bare NAME is a pod


def test_host_network_pod_target_warns_it_sees_the_whole_node(cluster, tmp_path) -> None:
    running_pod(cluster, "monitoring", "agent-x7k2p", host_network=True, node="node-b")
    kube = connect(cluster, tmp_path)
    res = resolve_targets(kube, ["pod/agent-x7k2p"], namespace="monitoring")
    assert any("hostNetwork" in n and "node node-b" in n for n in res.notes)


def test_unknown_pod_and_unknown_namespace_are_told_apart(cluster, tmp_path) -> None:
    running_pod(cluster, "shop", "a")
    kube = connect(cluster, tmp_path)
    with pytest.raises(NotFound) as info:
        resolve_targets(kube, ["pod/nope"], namespace="shop")
    assert "pod 'nope' not found in namespace shop" in info.value.message
    with pytest.raises(NotFound) as info:
        resolve_targets(kube, ["pod/a"], namespace="no-such-ns")
    assert "namespace 'no-such-ns' not found" in info.value.message
    with pytest.raises(NotFound) as info:
        resolve_targets(kube, ["deploy/nope"], namespace="shop")
    assert "deployment 'nope' not found in namespace shop" in info.value.message
    with pytest.raises(NotFound) as info:
        resolve_targets(kube, [], "app=nothing", namespace="shop")
    assert info.value.exit_code == ExitCode.NOT_FOUND


def test_only_not_running_pods_is_not_found_with_the_reasons(cluster, tmp_path) -> None:
    running_pod(cluster, "shop", "a", phase="Pending")
    kube = connect(cluster, tmp_path)
    with pytest.raises(NotFound) as info:
        resolve_targets(kube, ["pod/a"], namespace="shop")
    assert "shop/a is not running (phase Pending)" in info.value.message


def test_coredns_uses_the_kube_dns_service_selector_not_labels(cluster, tmp_path) -> None:
    service(cluster, "kube-system", "kube-dns", {"k8s-app": "kube-dns"}, {"k8s-app": "kube-dns"})
    # NodeLocal DNSCache's upstream Service carries the same label and selects the same pods.
    service(cluster, "kube-system", "kube-dns-upstream", {"k8s-app": "kube-dns"},
            {"k8s-app": "kube-dns"})
    running_pod(cluster, "kube-system", "coredns-1", {"k8s-app": "kube-dns"})
    running_pod(cluster, "kube-system", "coredns-2", {"k8s-app": "kube-dns"})
    kube = connect(cluster, tmp_path)
    res = resolve_targets(kube, ["coredns"])
    assert keys(res) == ["kube-system/coredns-1", "kube-system/coredns-2"]
    assert {p.role for p in res.pods} == {"coredns"}
    assert not any("NodeLocal" in n for n in res.notes)


def test_coredns_with_node_local_dns_traces_the_host_network_cache_too(cluster, tmp_path) -> None:
    service(cluster, "kube-system", "kube-dns", {"k8s-app": "coredns-x"})
    running_pod(cluster, "kube-system", "coredns-1", {"k8s-app": "coredns-x"})
    ds = workload(cluster, "DaemonSet", "kube-system", "node-local-dns", {"k8s-app": "node-local-dns"})
    running_pod(cluster, "kube-system", "node-local-dns-abcde", {"k8s-app": "node-local-dns"},
                owner=ds, host_network=True)
    kube = connect(cluster, tmp_path)
    res = resolve_targets(kube, ["dns"])
    assert keys(res) == ["kube-system/coredns-1", "kube-system/node-local-dns-abcde"]
    roles = {p.key: (p.role, p.host_network) for p in res.pods}
    assert roles["kube-system/node-local-dns-abcde"] == ("node-local-dns", True)
    assert any("NodeLocal DNSCache detected" in n and "real pod IPs" in n for n in res.notes)


def test_coredns_fallback_label_and_overrides(cluster, tmp_path) -> None:
    running_pod(cluster, "kube-system", "coredns-1", {"k8s-app": "kube-dns"})
    running_pod(cluster, "dns", "my-dns-1", {"app": "my-dns"})
    kube = connect(cluster, tmp_path)
    res = resolve_targets(kube, ["coredns"])
    assert keys(res) == ["kube-system/coredns-1"]
    assert any("no Service kube-dns" in n for n in res.notes)
    res = resolve_targets(kube, ["coredns"], dns_namespace="dns", dns_selector="app=my-dns")
    assert keys(res) == ["dns/my-dns-1"]
    with pytest.raises(NotFound) as info:
        resolve_targets(kube, ["coredns"], dns_namespace="dns")
    assert "--dns-selector" in info.value.hint
