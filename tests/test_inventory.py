"""Inventory: who held which address when — history, owners, nodes, services, the watch.

The object builders here (``pod``, ``node``, ``service``, ``owner``) are plain dicts shaped
like the API's JSON; other test modules import them.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from kubectl_dnstrace.kube.inventory import INF, Inventory, OwnerResolver, parse_time

T0 = 1_764_165_600.0  # 2025-11-26T14:00:00Z


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name: str, ip: str | None, *, namespace: str = "shop", node: str = "node-a",
        start: float = T0, finished: float | None = None, phase: str = "Running",
        owner: tuple[str, str] | None = None, host_network: bool = False,
        labels: dict | None = None, uid: str | None = None) -> dict:
    status: dict = {"phase": phase, "startTime": rfc3339(start)}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    if finished is not None:
        status["phase"] = "Succeeded" if phase == "Running" else phase
        status["containerStatuses"] = [
            {"name": "app", "state": {"terminated": {"exitCode": 0,
                                                     "finishedAt": rfc3339(finished)}}}]
    meta: dict = {"name": name, "namespace": namespace, "uid": uid or f"uid-{namespace}-{name}",
                  "creationTimestamp": rfc3339(start), "labels": dict(labels or {})}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": f"uid-{owner[1]}", "controller": True}]
    return {"kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "hostNetwork": host_network,
                     "containers": [{"name": "app", "image": "app:1"}]},
            "status": status}


def node(name: str, internal: str, cidr: str | None = None, external: str | None = None) -> dict:
    addresses = [{"type": "InternalIP", "address": internal}, {"type": "Hostname", "address": name}]
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    spec = {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {}
    return {"kind": "Node", "metadata": {"name": name}, "spec": spec,
            "status": {"addresses": addresses}}


def service(name: str, namespace: str, cluster_ip: str) -> dict:
    return {"kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip]}}


def owner(kind: str, name: str, namespace: str, parent: tuple[str, str] | None = None) -> dict:
    meta: dict = {"name": name, "namespace": namespace}
    if parent:
        meta["ownerReferences"] = [{"kind": parent[0], "name": parent[1], "controller": True}]
    return {"kind": kind, "metadata": meta}


def names(pods) -> list[str]:
    return [p.key for p in pods]


# ---- history ----------------------------------------------------------------------------


def test_parse_time_reads_api_timestamps():
    assert parse_time("2025-11-26T14:00:00Z") == T0
    assert parse_time(None) is None
    assert parse_time("yesterday") is None


def test_a_deleted_pod_is_still_named_for_events_of_its_lifetime():
    inv = Inventory.from_objects([pod("report-1-abcde", "10.244.0.9", namespace="batch")],
                                 since=T0)
    assert names(inv.holders("10.244.0.9", T0 + 2)) == ["batch/report-1-abcde"]
    # The watch says it is gone four seconds in.
    inv.upsert_pod(pod("report-1-abcde", "10.244.0.9", namespace="batch"), observed=T0 + 4,
                   deleted=True)
    assert names(inv.holders("10.244.0.9", T0 + 3.9)) == ["batch/report-1-abcde"]
    assert inv.holders("10.244.0.9", T0 + 4.1) == []


def test_a_completed_job_pod_lets_go_of_its_ip_when_its_containers_finish():
    # finishedAt is truncated to the second: one second of slack after it.
    inv = Inventory.from_objects([pod("job-x", "10.244.0.9", finished=T0 + 4)], since=T0 + 60)
    assert names(inv.holders("10.244.0.9", T0 + 4.9)) == ["shop/job-x"]
    assert inv.holders("10.244.0.9", T0 + 5.1) == []


def test_ip_reuse_old_events_go_to_the_old_pod_new_events_to_the_new_one():
    old = pod("old", "10.244.0.4", start=T0, finished=T0 + 10)
    new = pod("new", "10.244.0.4", start=T0 + 20)
    for order in ([old, new], [new, old]):  # list order does not matter
        inv = Inventory.from_objects(order, since=T0 + 30)
        assert names(inv.holders("10.244.0.4", T0 + 5)) == ["shop/old"]
        assert names(inv.holders("10.244.0.4", T0 + 25)) == ["shop/new"]
        assert inv.holders("10.244.0.4", T0 + 15) == []  # nobody held it


def test_a_new_holder_closes_an_open_holding_of_the_same_ip():
    # The old pod was never seen to end (its deletion fell between two watches), but two
    # running pods never share a pod IP: the new one proves the old one let go.
    inv = Inventory.from_objects([pod("old", "10.244.0.4", start=T0)], since=T0)
    inv.upsert_pod(pod("new", "10.244.0.4", start=T0 + 20), observed=T0 + 21)
    assert names(inv.holders("10.244.0.4", T0 + 19)) == ["shop/old"]
    assert names(inv.holders("10.244.0.4", T0 + 20.5)) == ["shop/new"]
    assert inv.history("10.244.0.4")[0].end == T0 + 20


def test_overlapping_holdings_are_ambiguous_not_guessed():
    inv = Inventory.from_objects([pod("old", "10.244.0.4", start=T0, finished=T0 + 10),
                                  pod("new", "10.244.0.4", start=T0 + 10)], since=T0 + 30)
    assert sorted(names(inv.holders("10.244.0.4", T0 + 10.5))) == ["shop/new", "shop/old"]


def test_the_first_holder_tolerates_a_little_clock_skew_before_its_start():
    inv = Inventory.from_objects([pod("web", "10.244.0.5", start=T0 + 10)], since=T0 + 30)
    assert names(inv.holders("10.244.0.5", T0 + 9)) == ["shop/web"]
    assert inv.holders("10.244.0.5", T0 + 5) == []


def test_host_network_pods_never_own_the_node_address():
    inv = Inventory.from_objects(
        [pod("kube-proxy-a", "172.18.0.10", namespace="kube-system", host_network=True),
         pod("agent-x", "172.18.0.10", namespace="monitoring", host_network=True),
         pod("web", "10.244.0.5")],
        [node("node-a", "172.18.0.10", "10.244.0.0/24")], since=T0)
    assert inv.holders("172.18.0.10", T0 + 1) == []
    assert names(inv.host_network_pods("node-a", T0 + 1)) == ["kube-system/kube-proxy-a",
                                                             "monitoring/agent-x"]
    assert inv.node_by_address["172.18.0.10"][0].name == "node-a"
    assert inv.node_for_pod_cidr("10.244.0.1").name == "node-a"
    assert inv.node_for_pod_cidr("10.245.0.1") is None


def test_services_and_dual_stack_addresses():
    svc = service("kube-dns", "kube-system", "10.96.0.10")
    svc["spec"]["clusterIPs"].append("fd00:10:96::a")
    p = pod("web", "10.244.0.5")
    p["status"]["podIPs"].append({"ip": "fd00:10:244:0:0:0:0:5"})
    inv = Inventory.from_objects([p], services=[svc], since=T0)
    assert inv.services["10.96.0.10"] == ("kube-system", "kube-dns")
    assert inv.services["fd00:10:96::a"] == ("kube-system", "kube-dns")
    assert names(inv.holders("fd00:10:244::5", T0 + 1)) == ["shop/web"]


def test_dns_pods_by_role():
    inv = Inventory.from_objects([
        pod("coredns-1", "10.244.0.2", namespace="kube-system", labels={"k8s-app": "kube-dns"}),
        pod("node-local-dns-a", "172.18.0.10", namespace="kube-system", host_network=True,
            labels={"k8s-app": "node-local-dns"}),
        pod("web", "10.244.0.5")], since=T0)
    assert names(inv.dns_pods("coredns")) == ["kube-system/coredns-1"]
    assert names(inv.dns_pods("node-local-dns")) == ["kube-system/node-local-dns-a"]
    assert inv.pod_by_key("shop/web").ips == ("10.244.0.5",)


# ---- owners -----------------------------------------------------------------------------

WORKLOADS = [
    (("ReplicaSet", "web-5d8f7c9b6"), "Deployment/web"),
    (("Job", "report-28471"), "CronJob/report"),
    (("Job", "migrate"), "Job/migrate"),
    (("DaemonSet", "agent"), "DaemonSet/agent"),
    (("StatefulSet", "db"), "StatefulSet/db"),
    (("ReplicaSet", "bare-rs"), "ReplicaSet/bare-rs"),
    (None, ""),
]


@pytest.mark.parametrize(("ref", "workload"), WORKLOADS)
def test_owners_are_named_the_way_humans_name_workloads(ref, workload):
    owners = [owner("ReplicaSet", "web-5d8f7c9b6", "shop", ("Deployment", "web")),
              owner("Job", "report-28471", "shop", ("CronJob", "report")),
              owner("Job", "migrate", "shop"),
              owner("ReplicaSet", "bare-rs", "shop")]
    inv = Inventory.from_objects([pod("p", "10.244.0.5", owner=ref)], owners=owners, since=T0)
    assert inv.workload(inv.pod_by_key("shop/p")) == workload


def test_offline_a_deployments_replicaset_is_recognised_by_its_pod_template_hash():
    inv = Inventory.from_objects([
        pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", owner=("ReplicaSet", "web-5d8f7c9b6"),
            labels={"pod-template-hash": "5d8f7c9b6"}),
        pod("odd-x", "10.244.0.6", owner=("ReplicaSet", "odd"), labels={"pod-template-hash": "1"}),
    ], since=T0)
    assert inv.workload(inv.pod_by_key("shop/web-5d8f7c9b6-x2k4p")) == "Deployment/web"
    assert inv.workload(inv.pod_by_key("shop/odd-x")) == "ReplicaSet/odd"


# ---- against the simulated API server (real HTTP, real kubernetes client) ---------------


@pytest.fixture
def cluster(tmp_path):
    from kubectl_dnstrace.kube.client import Kube
    from kubectl_dnstrace.model import ClusterOptions
    from tests.lab.cluster import SimCluster

    with SimCluster() as sim:
        sim.write_kubeconfig(tmp_path / "kubeconfig")
        sim.write_kubeconfig(tmp_path / "dev", user="dev-user")
        sim.store.ensure_namespace("shop")
        sim.store.ensure_namespace("batch")
        kube = Kube.connect(ClusterOptions(kubeconfig=str(tmp_path / "kubeconfig")))
        yield sim, kube, tmp_path
        kube.close()


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_from_cluster_lists_pods_nodes_services_and_resolves_owners(cluster):
    sim, kube, _ = cluster
    sim.store.create(node("node-a", "172.18.0.10", "10.244.0.0/24"))
    sim.store.create(service("kube-dns", "kube-system", "10.96.0.10"))
    sim.store.create(owner("ReplicaSet", "web-5d8f7c9b6", "shop", ("Deployment", "web")))
    sim.store.create(pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", owner=("ReplicaSet", "web-5d8f7c9b6")))
    inv = Inventory.from_cluster(kube)
    [p] = inv.holders("10.244.0.5", time.time())
    assert p.key == "shop/web-5d8f7c9b6-x2k4p"
    assert inv.workload(p) == "Deployment/web"
    assert inv.services["10.96.0.10"] == ("kube-system", "kube-dns")
    assert inv.node_for_pod_cidr("10.244.0.1").name == "node-a"


def test_a_403_on_apps_degrades_to_the_owner_reference(cluster):
    from kubectl_dnstrace.kube.client import Kube
    from kubectl_dnstrace.model import ClusterOptions

    sim, _, tmp = cluster
    sim.store.create(owner("ReplicaSet", "web-5d8f7c9b6", "shop", ("Deployment", "web")))
    sim.store.create(pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", owner=("ReplicaSet", "web-5d8f7c9b6")))
    sim.store.create(pod("web-5d8f7c9b6-y7q1z", "10.244.0.6", owner=("ReplicaSet", "web-5d8f7c9b6")))
    dev = Kube.connect(ClusterOptions(kubeconfig=str(tmp / "dev")))
    sim.faults.deny("dev-user", "get", "replicasets")
    resolver = OwnerResolver(dev)
    inv = Inventory.from_objects([], since=T0)
    inv.owners = resolver
    inv.upsert_pod(pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", owner=("ReplicaSet", "web-5d8f7c9b6")),
                   observed=T0)
    inv.upsert_pod(pod("web-5d8f7c9b6-y7q1z", "10.244.0.6", owner=("ReplicaSet", "web-5d8f7c9b6")),
                   observed=T0)
    first = inv.pod_by_key("shop/web-5d8f7c9b6-x2k4p")
    assert inv.workload(first) == "ReplicaSet/web-5d8f7c9b6"
    # Cached: the second pod of the same ReplicaSet asks nobody.
    assert ("replicasets", "shop") in resolver._denied
    assert inv.workload(inv.pod_by_key("shop/web-5d8f7c9b6-y7q1z")) == "ReplicaSet/web-5d8f7c9b6"
    dev.close()


def test_the_watch_keeps_history_of_pods_created_and_deleted_during_the_trace(cluster):
    sim, kube, _ = cluster
    sim.store.create(pod("web", "10.244.0.5", start=time.time() - 60))
    inv = Inventory.from_cluster(kube)
    inv.start_watch(kube, timeout_seconds=5)
    try:
        start = time.time()
        sim.store.create(pod("report-1-abcde", "10.244.0.9", namespace="batch", start=start),
                         namespace="batch")
        _wait(lambda: inv.holders("10.244.0.9", start + 0.5))
        time.sleep(1.0)  # it lives a second
        sim.store.delete("pods", "report-1-abcde", "batch")
        _wait(lambda: inv.history("10.244.0.9")[0].end != INF)
        end = inv.history("10.244.0.9")[0].end
        assert names(inv.holders("10.244.0.9", start + 0.5)) == ["batch/report-1-abcde"]
        assert inv.holders("10.244.0.9", end + 1) == []
        # The address comes back with a new pod: old and new events split at its start.
        later = time.time() + 1
        sim.store.create(pod("reuser", "10.244.0.9", start=later))
        _wait(lambda: len(inv.history("10.244.0.9")) == 2)
        assert names(inv.holders("10.244.0.9", start + 0.5)) == ["batch/report-1-abcde"]
        assert names(inv.holders("10.244.0.9", later + 1)) == ["shop/reuser"]
        assert inv.watch_error == ""
    finally:
        inv.stop()


def test_stop_ends_a_silent_watch_at_once(cluster):
    # The server would keep the watch open for a minute: stop() interrupts the read and
    # joins the thread, so none is left inside a TLS read when the process exits.
    _, kube, _ = cluster
    inv = Inventory.from_cluster(kube)
    inv.start_watch(kube, timeout_seconds=60)
    time.sleep(0.5)  # the watch request is open and waiting
    started = time.monotonic()
    inv.stop()
    assert time.monotonic() - started < 2.0
    assert not any(t.is_alive() for t in inv._threads)
    assert inv.watch_error == ""


def test_ten_thousand_pods_stay_well_under_the_memory_budget():
    import tracemalloc

    objs = [pod(f"web-{i}", f"10.{i // 65536 + 10}.{i // 256 % 256}.{i % 256}",
                owner=("ReplicaSet", f"web-{i % 500}"), labels={"app": "web"}) for i in range(10_000)]
    tracemalloc.start()
    inv = Inventory.from_objects(objs, since=T0)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(inv.pods) == 10_000
    assert size < 150 * 1024 * 1024


def test_a_relist_closes_pods_deleted_while_nobody_watched(cluster):
    # After a 410 Gone the watch relists; a pod gone in between must stop holding its IP.
    sim, kube, _ = cluster
    sim.store.create(pod("gone", "10.244.0.7", start=time.time() - 60))
    sim.store.create(pod("stays", "10.244.0.8", start=time.time() - 60))
    inv = Inventory.from_cluster(kube)
    sim.store.delete("pods", "gone", "shop")
    before = time.time()
    inv._relist(kube, None)
    [gone] = inv.history("10.244.0.7")
    assert before <= gone.end <= time.time()
    assert inv.history("10.244.0.8")[0].end == INF


def test_without_a_cluster_wide_pod_list_the_readable_namespaces_are_listed(cluster):
    # A namespace Role (what `kubectl dnstrace rbac` prints without --cluster): pods may be
    # listed in shop only. Attribution covers shop, says so, and names nobody else wrongly.
    from kubectl_dnstrace.attribution import Attributor
    from kubectl_dnstrace.errors import Forbidden

    sim, kube, _ = cluster
    sim.store.create(node("node-a", "172.18.0.10", "10.244.0.0/24"))
    sim.store.create(service("web", "shop", "10.96.5.5"))
    sim.store.create(service("kube-dns", "kube-system", "10.96.0.10"))
    sim.store.create(pod("web", "10.244.0.5", start=time.time() - 60))
    sim.store.create(pod("report-1", "10.244.0.9", namespace="batch", start=time.time() - 60),
                     namespace="batch")
    sim.faults.deny("admin", "list", "pods", namespace="")
    sim.faults.deny("admin", "list", "services", namespace="")
    sim.faults.deny("admin", "list", "pods", namespace="batch")
    with pytest.raises(Forbidden):
        Inventory.from_cluster(kube)  # no namespace to fall back to: the refusal stands
    with pytest.raises(Forbidden):
        Inventory.from_cluster(kube, namespaces=["batch"])
    inv = Inventory.from_cluster(kube, namespaces=["shop", "batch", "shop", ""])
    assert inv.scope == ("shop",)
    att = Attributor(inv)
    now = time.time()
    assert att.attribute("10.244.0.5", now).name == "web"
    assert att.attribute("10.96.5.5", now).kind == "service"  # shop's Services, listed there
    # batch/report-1's address: in node-a's podCIDR, yet not the node: unknown, and why.
    c = att.attribute("10.244.0.9", now)
    assert (c.kind, c.node) == ("unknown", "node-a")
    assert c.reason == ("address in node-a's podCIDR held by no pod of namespace shop: a pod in "
                        "another namespace, or the node's CNI gateway")
    c = att.attribute("10.1.2.3", now)
    assert c.kind == "unknown" and "no pod of namespace shop" in c.reason
    assert att.attribute("172.18.0.10", now).kind == "node"  # node addresses stay nodes
    assert att.attribute("8.8.8.8", now).kind == "external"
    # The watch follows shop (its own namespace's watch), and a relist there closes only
    # shop's pods.
    inv.start_watch(kube, timeout_seconds=5)
    try:
        start = time.time()
        sim.store.create(pod("cron-1", "10.244.0.12", start=start))
        _wait(lambda: inv.holders("10.244.0.12", start + 0.5))
        assert att.attribute("10.244.0.12", start + 0.5).name == "cron-1"
        assert inv.watch_error == ""
    finally:
        inv.stop()
    inv.upsert_pod(pod("elsewhere", "10.244.0.20", namespace="batch", start=now - 60), now)
    inv._relist(kube, "shop")
    assert inv.history("10.244.0.20")[0].end == INF


def test_pods_are_listed_in_pages_as_one_snapshot(cluster, monkeypatch):
    """1,203 pods in pages of 500 (kubectl's chunk size): each page handled as it comes,
    the continue token and remainingItemCount as the API server gives them, every pod once."""
    from kubectl_dnstrace.kube import client

    sim, kube, _ = cluster
    sim.store.create(node("node-a", "172.18.0.10", "10.244.0.0/16"))
    for i in range(1203):
        sim.store.create(pod(f"web-{i:04d}", f"10.244.{i // 250}.{i % 250 + 2}"))
    pages = list(kube.list_pages("pods", "shop"))
    assert [len(items) for items, _ in pages] == [500, 500, 203]
    assert len({rv for _, rv in pages}) == 1  # one snapshot's version on every page
    names = [p["metadata"]["name"] for items, _ in pages for p in items]
    assert names == [f"web-{i:04d}" for i in range(1203)]
    seen = []
    real = client.Kube.request

    def request(self, method, path, **kw):
        data = real(self, method, path, **kw)
        if path.endswith("/pods"):
            seen.append((kw["query"]["limit"], bool(kw["query"]["continue"]),
                         data["metadata"].get("remainingItemCount")))
        return data

    monkeypatch.setattr(client.Kube, "request", request)
    inv = Inventory.from_cluster(kube)
    assert seen == [(500, False, 703), (500, True, 203), (500, True, None)]
    now = time.time()
    assert len(inv.pods) == 1203
    assert [p.name for p in inv.holders("10.244.4.204", now)] == ["web-1202"]


def test_a_list_whose_snapshot_expired_between_pages_starts_over(cluster):
    """410 Expired on a continue token (etcd compacted the snapshot): the list starts over,
    nothing is counted twice, and a pod deleted meanwhile is not left behind as alive; a list
    that keeps expiring is an error that says what happened."""
    from kubectl_dnstrace.kube.client import LIST_ATTEMPTS, ListExpired

    sim, kube, _ = cluster
    sim.store.create(node("node-a", "172.18.0.10", "10.244.0.0/16"))
    for i in range(1100):
        sim.store.create(pod(f"web-{i:04d}", f"10.244.{i // 250}.{i % 250 + 2}"))
    sim.faults.expire_continue(1)
    items, _ = kube.list("pods", "shop")
    assert [p["metadata"]["name"] for p in items] == [f"web-{i:04d}" for i in range(1100)]

    # The first pass reads web-0000 … web-0499, then web-0003 is deleted and the next page
    # expires: the second pass no longer lists it, and the inventory holds it as gone.
    real = kube.request
    pages = []

    def request(method, path, **kw):
        data = real(method, path, **kw)
        if path.endswith("/pods") and method == "GET":
            pages.append(len(data.get("items") or []))
            if len(pages) == 1:
                sim.store.delete("pods", "web-0003", "shop")
                sim.faults.expire_continue(1)
        return data

    kube.request = request
    inv = Inventory.from_cluster(kube)
    assert pages == [500, 500, 500, 99]  # 500, expired; then the whole list again
    now = time.time()
    assert len(inv.pods) == 1100
    assert inv.holders("10.244.0.5", now) == []  # web-0003's address: held by nobody now
    assert [p.name for p in inv.holders("10.244.0.6", now)] == ["web-0004"]

    sim.faults.expire_continue(LIST_ATTEMPTS)
    with pytest.raises(ListExpired) as err:
        kube.list("pods", "shop")
    assert err.value.exit_code == 3
    assert "expired the list of pods in namespace shop while it was read in pages" in str(err.value)
    assert "too old to display a consistent list result" in str(err.value)


def test_a_watch_that_keeps_failing_is_said_and_stops_holding_events_until_it_works(cluster):
    from kubectl_dnstrace.kube.inventory import WATCH_GIVE_UP

    sim, kube, _ = cluster
    sim.faults.deny("admin", "watch", "pods")  # the list works, every watch is refused
    inv = Inventory.from_cluster(kube)
    said: list[str] = []
    inv.on_notice = said.append
    inv.start_watch(kube, timeout_seconds=5)
    try:
        assert inv.watching  # events may wait for the watch while it has a chance
        _wait(lambda: said, timeout=WATCH_GIVE_UP * 1.0 + 5)
        assert said == [f"warning: the pod watch failed {WATCH_GIVE_UP} times in a row "
                        f"({inv.watch_error}); pods created from now on may show as unknown "
                        "addresses. Still retrying"]
        assert "may not watch pods" in inv.watch_error
        assert not inv.watching  # the pipeline no longer holds events for it
        sim.faults.denials.clear()
        start = time.time()
        sim.store.create(pod("late", "10.244.0.77", start=start))
        _wait(lambda: inv.holders("10.244.0.77", start + 0.5), timeout=15)
        assert said[-1] == "the pod watch works again" and inv.watching
        assert inv.watch_error == ""
    finally:
        inv.stop()
