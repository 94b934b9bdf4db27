"""The simulated API server through the real ``kubernetes`` client and a real kubeconfig.

Each test states one behaviour of kube-apiserver that the plugin relies on: selectors,
watch semantics, optimistic concurrency, RBAC from Role/binding objects, SelfSubjectAccessReview,
Pod Security labels, and the fault switches.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.lab.cluster import SimCluster
from tests.lab.cluster.store import Store


def pod(name: str, labels: dict | None = None, node: str = "node-a", phase: str = "Running",
        containers: tuple[str, ...] = ("app",)) -> dict:
    return {"kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeName": node, "containers": [{"name": c, "image": "nginx:1.27"} for c in containers]},
            "status": {"phase": phase}}


def ephemeral(name: str, caps: list[str] | None = None, **extra) -> dict:
    sc = {"capabilities": {"add": caps}} if caps else {}
    return {"spec": {"ephemeralContainers": [{"name": name, "image": "busybox:1.36", "command": ["sleep", "1"],
                                              "securityContext": sc, **extra}]}}


@pytest.fixture
def cluster(tmp_path):
    with SimCluster() as c:
        c.add_node("node-a")
        c.add_node("node-b", internal_ip="10.123.0.2")
        c.store.ensure_namespace("shop")
        yield c


def core(cluster: SimCluster, tmp_path, user: str = "admin") -> client.CoreV1Api:
    path = cluster.write_kubeconfig(tmp_path / f"kubeconfig-{user.replace(':', '_')}", user=user)
    return client.CoreV1Api(config.new_client_from_config(str(path)))


def names(pod_list) -> list[str]:
    return sorted(p.metadata.name for p in pod_list.items)


def test_kubeconfig_is_https_with_ca_and_token(cluster, tmp_path):
    path = cluster.write_kubeconfig(tmp_path / "kc", user="dev-user", namespace="shop")
    text = path.read_text()
    assert cluster.url.startswith("https://127.0.0.1:")
    assert "certificate-authority-data" in text and cluster.token("dev-user") in text and "namespace: shop" in text
    assert client.VersionApi(config.new_client_from_config(str(path))).get_code().minor == "35"


def test_label_and_field_selectors(cluster, tmp_path):
    v1 = core(cluster, tmp_path)
    cluster.store.create(pod("web-1", {"app": "web", "tier": "front"}), namespace="shop")
    cluster.store.create(pod("web-2", {"app": "web"}, node="node-b", phase="Pending"), namespace="shop")
    cluster.store.create(pod("db-1", {"app": "db"}), namespace="shop")
    cluster.store.create(pod("coredns-1", {"k8s-app": "kube-dns"}), namespace="kube-system")
    assert names(v1.list_namespaced_pod("shop", label_selector="app=web")) == ["web-1", "web-2"]
    assert names(v1.list_namespaced_pod("shop", label_selector="app in (web,db),tier")) == ["web-1"]
    assert names(v1.list_namespaced_pod("shop", label_selector="app!=web")) == ["db-1"]
    assert names(v1.list_namespaced_pod("shop", label_selector="!tier")) == ["db-1", "web-2"]
    assert names(v1.list_namespaced_pod("shop", field_selector="spec.nodeName=node-b")) == ["web-2"]
    assert names(v1.list_namespaced_pod("shop", field_selector="status.phase=Running,metadata.name!=db-1")) == ["web-1"]
    everywhere = v1.list_pod_for_all_namespaces(label_selector="k8s-app=kube-dns")
    assert [(p.metadata.namespace, p.metadata.name) for p in everywhere.items] == [("kube-system", "coredns-1")]
    assert v1.list_namespaced_pod("no-such-ns").items == []
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("shop", field_selector="spec.bogus=1")
    assert err.value.status == 400 and json.loads(err.value.body)["reason"] == "BadRequest"


def test_missing_pod_and_namespace_read_as_pod_not_found(cluster, tmp_path):
    v1 = core(cluster, tmp_path)
    for ns in ("shop", "no-such-ns"):
        with pytest.raises(ApiException) as err:
            v1.patch_namespaced_pod_ephemeralcontainers("web-9", ns, ephemeral("dbg"))
        body = json.loads(err.value.body)
        assert (err.value.status, body["message"], body["details"]) == (404, 'pods "web-9" not found',
                                                                         {"name": "web-9", "kind": "pods"})


def test_watch_from_resource_version_with_bookmarks_and_timeout(cluster, tmp_path):
    cluster.api.bookmark_interval = 0.3
    v1 = core(cluster, tmp_path)
    cluster.store.create(pod("old"), namespace="shop")
    rv = v1.list_namespaced_pod("shop").metadata.resource_version
    cluster.store.create(pod("new", {"app": "web"}), namespace="shop")
    cluster.store.mutate("pods", "new", "shop", lambda p: p["metadata"]["labels"].update(app="gone"))
    resp = v1.list_namespaced_pod("shop", watch=True, resource_version=rv, allow_watch_bookmarks=True,
                                  timeout_seconds=2, _preload_content=False)
    started = time.monotonic()
    events = [json.loads(line) for line in resp.read().decode().splitlines()]
    took = time.monotonic() - started
    kinds = [(e["type"], e["object"]["metadata"].get("name")) for e in events if e["type"] != "BOOKMARK"]
    assert kinds == [("ADDED", "new"), ("MODIFIED", "new")]
    assert any(e["type"] == "BOOKMARK" for e in events)
    assert took >= 1.5 and took <= 6
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


def test_watch_with_selector_sends_deleted_when_object_stops_matching(cluster, tmp_path):
    v1 = core(cluster, tmp_path)
    cluster.store.create(pod("web-1", {"app": "web"}), namespace="shop")
    seen = []

    def watcher():
        w = watch.Watch()
        for ev in w.stream(v1.list_namespaced_pod, "shop", label_selector="app=web", timeout_seconds=3):
            seen.append((ev["type"], ev["object"].metadata.name))
            if len(seen) == 2:
                w.stop()

    t = threading.Thread(target=watcher)
    t.start()
    time.sleep(0.5)
    cluster.store.mutate("pods", "web-1", "shop", lambda p: p["metadata"]["labels"].update(app="other"))
    t.join(timeout=10)
    assert seen == [("ADDED", "web-1"), ("DELETED", "web-1")]


def test_watch_too_old_resource_version_is_410_expired():
    store = Store()
    store.ensure_namespace("shop")
    for i in range(5):
        store.create(pod(f"p{i}"), namespace="shop")
    store._history.clear()  # a compacted history, like etcd after compaction
    store.create(pod("late"), namespace="shop")
    w = store.watch("pods", "shop", lambda o: True, "101")
    etype, status = w.events.get(timeout=1)
    assert etype == "ERROR" and status["code"] == 410 and status["reason"] == "Expired"


def test_ephemeral_put_with_stale_resource_version_conflicts(cluster, tmp_path):
    v1 = core(cluster, tmp_path)
    cluster.store.create(pod("web-1", node=""), namespace="shop")  # unscheduled: no kubelet status writes
    first = v1.patch_namespaced_pod_ephemeralcontainers("web-1", "shop", ephemeral("dbg-1"))
    stale = v1.api_client.sanitize_for_serialization(first)
    stale["spec"]["ephemeralContainers"].append({"name": "dbg-2", "image": "busybox:1.36"})
    updated = v1.replace_namespaced_pod_ephemeralcontainers("web-1", "shop", stale)
    assert [c.name for c in updated.spec.ephemeral_containers] == ["dbg-1", "dbg-2"]
    with pytest.raises(ApiException) as err:
        v1.replace_namespaced_pod_ephemeralcontainers("web-1", "shop", stale)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"


def test_rbac_from_role_and_binding_objects(cluster, tmp_path):
    cluster.store.create(pod("web-1"), namespace="shop")
    rbac = client.RbacAuthorizationV1Api(config.new_client_from_config(str(cluster.write_kubeconfig(tmp_path / "a"))))
    rbac.create_namespaced_role("shop", {"metadata": {"name": "reader"}, "rules": [
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}]})
    rbac.create_namespaced_role_binding("shop", {"metadata": {"name": "reader"},
                                                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                                                 "subjects": [{"kind": "User", "name": "dev-user"}]})
    dev = core(cluster, tmp_path, "dev-user")
    assert names(dev.list_namespaced_pod("shop")) == ["web-1"]
    with pytest.raises(ApiException) as err:
        dev.patch_namespaced_pod_ephemeralcontainers("web-1", "shop", ephemeral("dbg"))
    body = json.loads(err.value.body)
    assert err.value.status == 403
    assert body["message"] == ('pods "web-1" is forbidden: User "dev-user" cannot patch resource '
                               '"pods/ephemeralcontainers" in API group "" in the namespace "shop"')
    with pytest.raises(ApiException) as err:
        dev.list_namespaced_pod("kube-system")
    assert json.loads(err.value.body)["message"] == ('pods is forbidden: User "dev-user" cannot list resource "pods" '
                                                     'in API group "" in the namespace "kube-system"')
    with pytest.raises(ApiException) as err:
        dev.list_node()
    assert json.loads(err.value.body)["message"].endswith('cannot list resource "nodes" in API group "" at the cluster scope')

    authz = client.AuthorizationV1Api(dev.api_client)

    def can(verb, resource, sub="", ns="shop"):
        review = {"spec": {"resourceAttributes": {"namespace": ns, "verb": verb, "resource": resource,
                                                  "subresource": sub}}}
        return authz.create_self_subject_access_review(review).status.allowed

    assert can("get", "pods", "log") and not can("patch", "pods", "ephemeralcontainers")
    rbac.create_cluster_role({"metadata": {"name": "debugger"}, "rules": [
        {"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["patch", "update"]}]})
    rbac.create_cluster_role_binding({"metadata": {"name": "debuggers"},
                                      "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "debugger"},
                                      "subjects": [{"kind": "Group", "name": "dev-group"}]})
    assert can("patch", "pods", "ephemeralcontainers") and can("patch", "pods", "ephemeralcontainers", ns="other")
    assert dev.patch_namespaced_pod_ephemeralcontainers("web-1", "shop", ephemeral("dbg")).spec.ephemeral_containers


def test_service_account_user_is_named_like_the_real_server(cluster, tmp_path):
    cluster.store.create(pod("web-1"), namespace="shop")
    sa = core(cluster, tmp_path, "system:serviceaccount:shop:tracer")
    with pytest.raises(ApiException) as err:
        sa.read_namespaced_pod("web-1", "shop")
    assert 'User "system:serviceaccount:shop:tracer" cannot get resource "pods"' in json.loads(err.value.body)["message"]


def test_fault_deny_refuses_even_admin(cluster, tmp_path):
    cluster.store.create(pod("web-1"), namespace="shop")
    cluster.faults.deny("admin", "patch", "pods", "ephemeralcontainers", namespace="shop")
    v1 = core(cluster, tmp_path)
    with pytest.raises(ApiException) as err:
        v1.patch_namespaced_pod_ephemeralcontainers("web-1", "shop", ephemeral("dbg"))
    assert json.loads(err.value.body)["message"] == (
        'pods "web-1" is forbidden: User "admin" cannot patch resource "pods/ephemeralcontainers" in API group "" '
        'in the namespace "shop"')
    review = client.AuthorizationV1Api(v1.api_client).create_self_subject_access_review(
        {"spec": {"resourceAttributes": {"namespace": "shop", "verb": "patch", "resource": "pods",
                                         "subresource": "ephemeralcontainers"}}})
    assert review.status.allowed is False
    assert v1.read_namespaced_pod("web-1", "shop").metadata.name == "web-1"


def test_disable_ephemeral_answers_404_without_a_name(cluster, tmp_path):
    cluster.store.create(pod("web-1"), namespace="shop")
    cluster.faults.disable_ephemeral()
    v1 = core(cluster, tmp_path)
    with pytest.raises(ApiException) as err:
        v1.patch_namespaced_pod_ephemeralcontainers("web-1", "shop", ephemeral("dbg"))
    body = json.loads(err.value.body)
    assert err.value.status == 404 and body["details"] == {} and "name" not in body["details"]


def test_pod_security_labels_enforce_and_warn(cluster, tmp_path):
    v1 = core(cluster, tmp_path)
    cluster.set_psa("shop", enforce="baseline")
    cluster.store.create(pod("web-1"), namespace="shop")
    with pytest.raises(ApiException) as err:
        v1.patch_namespaced_pod_ephemeralcontainers("web-1", "shop", ephemeral("cap", ["NET_RAW"]))
    assert json.loads(err.value.body)["message"] == (
        'pods "web-1" is forbidden: violates PodSecurity "baseline:latest": non-default capabilities '
        '(container "cap" must not include "NET_RAW" in securityContext.capabilities.add)')
    ok = v1.patch_namespaced_pod_ephemeralcontainers("web-1", "shop", ephemeral("root", securityContext={"runAsUser": 0}))
    assert [c.name for c in ok.spec.ephemeral_containers] == ["root"]
    cluster.set_psa("shop", enforce="privileged", warn="restricted")
    resp = v1.patch_namespaced_pod_ephemeralcontainers("web-1", "shop", ephemeral("cap", ["NET_RAW"]),
                                                       _preload_content=False)
    warning = resp.headers.get("Warning")
    assert warning.startswith('299 - "would violate PodSecurity \\"restricted:latest\\"')
    assert 'container \\"cap\\" must not include \\"NET_RAW\\"' in warning


def test_hostnetwork_pod_in_baseline_namespace_is_refused(cluster, tmp_path):
    cluster.set_psa("monitoring", enforce="baseline")
    cluster.store.ensure_namespace("monitoring")
    v1 = core(cluster, tmp_path)
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod("monitoring", {"metadata": {"name": "agent"}, "spec": {
            "hostNetwork": True, "containers": [{"name": "a", "image": "busybox:1.36"}]}})
    assert "host namespaces (hostNetwork=true)" in json.loads(err.value.body)["message"]


def test_apps_and_batch_owners_list_with_selectors(cluster, tmp_path):
    apps = client.AppsV1Api(config.new_client_from_config(str(cluster.write_kubeconfig(tmp_path / "kc"))))
    batch = client.BatchV1Api(apps.api_client)
    meta = {"name": "web", "labels": {"app": "web"}}
    tmpl = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}
    apps.create_namespaced_deployment("shop", {"metadata": meta, "spec": {"selector": {"matchLabels": {"app": "web"}},
                                                                         "template": tmpl}})
    apps.create_namespaced_daemon_set("shop", {"metadata": {"name": "agent"}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}}, "template": tmpl}})
    batch.create_namespaced_cron_job("shop", {"metadata": {"name": "report"}, "spec": {"schedule": "* * * * *",
                                              "jobTemplate": {"spec": {"template": tmpl}}}})
    assert [d.metadata.name for d in apps.list_namespaced_deployment("shop", label_selector="app=web").items] == ["web"]
    assert apps.read_namespaced_daemon_set("agent", "shop").metadata.generation == 1
    assert [c.metadata.name for c in batch.list_cron_job_for_all_namespaces().items] == ["report"]
    assert apps.list_namespaced_replica_set("shop").items == []


def test_unknown_token_is_401(cluster, tmp_path):
    path = cluster.write_kubeconfig(tmp_path / "kc")
    path.write_text(path.read_text().replace(cluster.token("admin"), "not-a-token"))
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(config.new_client_from_config(str(path))).list_namespace()
    assert err.value.status == 401


RBAC_YAML = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: dnstrace, namespace: shop}
rules:
- apiGroups: [""]
  resources: [pods/ephemeralcontainers]
  verbs: [patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dnstrace, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: dnstrace}
subjects: [{kind: User, name: dev-user, apiGroup: rbac.authorization.k8s.io}]
"""


def test_kubectl_applies_rbac_and_answers_can_i(cluster, tmp_path):
    """The real kubectl: HTTPS + token, JSON create/apply, protobuf SSAR, --as impersonation."""
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed")
    kc = cluster.write_kubeconfig(tmp_path / "kc")
    (tmp_path / "rbac.yaml").write_text(RBAC_YAML)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([kubectl, "--kubeconfig", str(kc), *args], capture_output=True, text=True, timeout=60)

    # No OpenAPI documents are served, so client-side validation must be off.
    applied = run("apply", "--validate=false", "-f", str(tmp_path / "rbac.yaml"))
    assert applied.returncode == 0, applied.stderr
    can = ("auth", "can-i", "patch", "pods", "--subresource=ephemeralcontainers", "-n", "shop")
    assert run(*can, "--as", "dev-user").stdout.strip() == "yes"
    assert run(*can[:-1], "kube-system", "--as", "dev-user").stdout.strip() == "no"
    listed = run("get", "pods", "-A")
    assert listed.returncode == 0, listed.stderr
    dev = cluster.write_kubeconfig(tmp_path / "dev", user="dev-user")
    denied = subprocess.run([kubectl, "--kubeconfig", str(dev), "get", "pods", "-n", "shop", "--as", "admin"],
                            capture_output=True, text=True, timeout=60)
    assert denied.returncode != 0 and 'cannot impersonate resource "users"' in denied.stderr


def test_pod_deletion_is_graceful_only_for_bound_pods(cluster, tmp_path):
    v1 = core(cluster, tmp_path)
    cluster.add_node("dead", kubelet=False)
    cluster.store.create(pod("unbound", node=""), namespace="shop")
    cluster.store.create(pod("stuck", node="dead"), namespace="shop")
    cluster.store.create(pod("forced", node="dead"), namespace="shop")
    v1.delete_namespaced_pod("unbound", "shop")
    marked = v1.delete_namespaced_pod("stuck", "shop")
    v1.delete_namespaced_pod("forced", "shop", grace_period_seconds=0)
    assert marked.metadata.deletion_timestamp is not None
    time.sleep(0.5)
    # No kubelet confirms the deletion: the pod stays Terminating, as on a real cluster.
    assert names(v1.list_namespaced_pod("shop")) == ["stuck"]


def test_patch_flavours_as_the_real_server_applies_them():
    from tests.lab.cluster import patch

    pod_obj = {"spec": {"containers": [{"name": "app", "image": "a:1"}],
                        "ephemeralContainers": [{"name": "old", "image": "x:1"}]}}
    add = {"spec": {"ephemeralContainers": [{"name": "new", "image": "y:1"}]}}
    # Strategic merge by name: the patch's new items come first (recordings 25 and 49) ...
    assert [c["name"] for c in patch.strategic_merge(pod_obj, add)["spec"]["ephemeralContainers"]] == ["new", "old"]
    # ... unless $setElementOrder says otherwise (what kubectl debug sends).
    ordered = {"spec": {"$setElementOrder/ephemeralContainers": [{"name": "old"}, {"name": "new"}],
                        "ephemeralContainers": [{"name": "new", "image": "y:1"}]}}
    assert [c["name"] for c in patch.strategic_merge(pod_obj, ordered)["spec"]["ephemeralContainers"]] == ["old", "new"]
    changed = patch.strategic_merge(pod_obj, {"spec": {"containers": [{"name": "app", "image": "a:2"}]}})
    assert changed["spec"]["containers"] == [{"name": "app", "image": "a:2"}]
    # A merge patch replaces lists whole (recording 21: "adding" one removes the others).
    assert patch.merge_patch(pod_obj, add)["spec"]["ephemeralContainers"] == [{"name": "new", "image": "y:1"}]
    assert "containers" not in patch.merge_patch(pod_obj, {"spec": {"containers": None}})["spec"]
    # JSON patch appends with "-", and fails on a missing path.
    ops = [{"op": "add", "path": "/spec/ephemeralContainers/-", "value": {"name": "new"}},
           {"op": "test", "path": "/spec/containers/0/name", "value": "app"}]
    assert [c["name"] for c in patch.json_patch(pod_obj, ops)["spec"]["ephemeralContainers"]] == ["old", "new"]
    with pytest.raises(patch.PatchError):
        patch.json_patch(pod_obj, [{"op": "remove", "path": "/spec/nothing/0"}])


def test_services_and_endpoints_are_listed(cluster, tmp_path):
    v1 = core(cluster, tmp_path)
    cluster.store.create({"kind": "Service", "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
                          "spec": {"selector": {"k8s-app": "kube-dns"}, "clusterIP": "10.96.0.10",
                                   "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}, namespace="kube-system")
    cluster.store.create({"kind": "Endpoints", "metadata": {"name": "kube-dns"},
                          "subsets": [{"addresses": [{"ip": "10.244.0.2"}], "ports": [{"port": 53}]}]},
                         namespace="kube-system")
    svc = v1.read_namespaced_service("kube-dns", "kube-system")
    assert svc.spec.selector == {"k8s-app": "kube-dns"} and svc.spec.cluster_ip == "10.96.0.10"
    eps = v1.list_endpoints_for_all_namespaces(field_selector="metadata.name=kube-dns").items
    assert [a.ip for a in eps[0].subsets[0].addresses] == ["10.244.0.2"]
    assert [s.metadata.name for s in v1.list_service_for_all_namespaces(label_selector="k8s-app").items] == ["kube-dns"]


def test_requests_are_kept_as_an_audit_trail(cluster, tmp_path):
    v1 = core(cluster, tmp_path, "dev-user")
    with pytest.raises(ApiException):
        v1.list_namespaced_pod("shop")
    trail = [r for r in cluster.requests if r["path"] == "/api/v1/namespaces/shop/pods"]
    assert trail == [{"method": "GET", "path": "/api/v1/namespaces/shop/pods", "query": {}, "user": "dev-user",
                      "code": 403}]
    assert not [r for r in cluster.requests if r["method"] in ("POST", "PUT", "PATCH", "DELETE")]
