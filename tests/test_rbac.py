"""`kubectl dnstrace rbac`: the objects are valid RBAC, least-privilege, and apply-able.

Schema checks use the kubernetes client's own OpenAPI models (the generated ``V1*`` classes
know every field and which are required), so a typo such as ``apiGroup`` for ``apiGroups``
fails here rather than at ``kubectl apply``.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from kubernetes import client as k8s

from kubectl_dnstrace.cli import main
from kubectl_dnstrace.errors import ExitCode, UsageError
from kubectl_dnstrace.rbac import KNOWN_VERBS, policy_documents, render_rbac

MODELS = {
    "Role": k8s.V1Role,
    "ClusterRole": k8s.V1ClusterRole,
    "RoleBinding": k8s.V1RoleBinding,
    "ClusterRoleBinding": k8s.V1ClusterRoleBinding,
}
NESTED = {
    "metadata": k8s.V1ObjectMeta,
    "roleRef": k8s.V1RoleRef,
}


class _Response:
    """What ApiClient.deserialize expects: an object with a JSON ``data`` attribute."""

    def __init__(self, obj: dict) -> None:
        self.data = json.dumps(obj)


def _check_fields(obj: dict, model: type, where: str) -> None:
    known = set(model.attribute_map.values())
    unknown = set(obj) - known
    assert not unknown, f"{where}: fields unknown to {model.__name__}: {unknown}"


def validate(doc: dict) -> object:
    """Deserialize into the client's model (required fields) and reject unknown fields."""
    assert doc["apiVersion"] == "rbac.authorization.k8s.io/v1"
    model = MODELS[doc["kind"]]
    _check_fields(doc, model, doc["kind"])
    for key, nested in NESTED.items():
        if key in doc:
            _check_fields(doc[key], nested, f"{doc['kind']}.{key}")
    for rule in doc.get("rules", []):
        _check_fields(rule, k8s.V1PolicyRule, "rule")
        assert rule["verbs"] and set(rule["verbs"]) <= KNOWN_VERBS, rule
        assert rule["apiGroups"] and rule["resources"], rule
    for subject in doc.get("subjects", []):
        _check_fields(subject, k8s.RbacV1Subject, "subject")
    return k8s.ApiClient().deserialize(_Response(doc), model.__name__)


def allowed(docs: list[dict]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, scope) quadruples the documents grant."""
    grants = set()
    for doc in docs:
        scope = doc["metadata"].get("namespace", "*")
        for rule in doc.get("rules", []):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        grants.add((group, resource, verb, scope))
    return grants


def test_cluster_mode_is_one_clusterrole_and_its_binding():
    docs = policy_documents(cluster=True, namespace=None, user=None)
    assert [d["kind"] for d in docs] == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    for doc in docs:
        validate(doc)
    role, binding = docs[:2]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "kubectl-dnstrace"}
    ]


def test_cluster_mode_grants_exactly_what_a_trace_needs():
    grants = {(g, r, v) for g, r, v, scope in allowed(policy_documents(True, None, None))
              if scope == "*"}
    needed = {
        ("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"),
        ("", "pods/ephemeralcontainers", "patch"), ("", "pods/ephemeralcontainers", "get"),
        ("", "pods/log", "get"), ("", "pods/exec", "create"), ("", "pods/exec", "get"),
        ("", "pods/attach", "create"), ("", "pods/attach", "get"),
        ("", "nodes", "get"), ("", "nodes", "list"),  # get: node/NAME targets
        ("", "services", "get"), ("", "services", "list"),
        ("", "namespaces", "get"),
        *[("apps", r, v) for r in ("deployments", "replicasets", "daemonsets", "statefulsets")
          for v in ("get", "list")],
        ("batch", "jobs", "get"), ("batch", "jobs", "list"),
        ("batch", "cronjobs", "get"), ("batch", "cronjobs", "list"),
    }
    assert grants == needed
    # Nothing that changes or deletes workloads, no secrets, no wildcards.
    assert not {v for _, _, v in grants} & {"delete", "deletecollection", "update", "*", "escalate"}
    assert not {r for _, r, _ in grants} & {"secrets", "configmaps", "*"}
    # Self-subject access reviews are left to the default system:basic-user role, and said so.
    text = render_rbac(True, None, None)
    assert "selfsubjectaccessreviews" not in {r for _, r, _ in grants}
    assert "system:basic-user" in text


def test_cluster_mode_lets_via_log_update_the_corefile_configmap_only():
    docs = policy_documents(True, None, None)
    role, binding = docs[2:]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "kube-system"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                              "verbs": ["get", "update", "patch"], "resourceNames": ["coredns"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    # Nothing else may change anywhere.
    scoped = {(r, v) for _, r, v, scope in allowed(docs) if scope != "*"}
    assert scoped == {("configmaps", "get"), ("configmaps", "update"), ("configmaps", "patch")}


def test_namespaced_mode_keeps_pod_rights_inside_the_namespace():
    docs = policy_documents(cluster=False, namespace="shop", user="alice")
    assert [d["kind"] for d in docs] == ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]
    for doc in docs:
        validate(doc)
    role, binding, crole, cbinding = docs
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "shop"
    assert binding["roleRef"]["kind"] == "Role"
    assert cbinding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": crole["metadata"]["name"],
    }
    for b in (binding, cbinding):
        assert b["subjects"] == [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]
    # The ClusterRole holds only what a Role cannot: nodes, and this one namespace object.
    assert {tuple(r["resources"]) for r in crole["rules"]} == {("nodes",), ("namespaces",)}
    ns_rule = next(r for r in crole["rules"] if r["resources"] == ["namespaces"])
    assert ns_rule["resourceNames"] == ["shop"] and ns_rule["verbs"] == ["get"]
    assert not any(r in ("nodes", "namespaces") for rule in role["rules"] for r in rule["resources"])


def test_default_namespace_and_stream_parses_as_kubectl_reads_it():
    text = render_rbac(False, None, None)
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs[0]["metadata"]["namespace"] == "default"
    assert text.count("\n---\n") == len(docs) - 1
    # every rule carries its reason as a comment right above it
    assert text.count("\n- apiGroups:") == sum(len(d.get("rules", [])) for d in docs)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("- apiGroups:"):
            assert lines[i - 1].startswith("# "), lines[i - 1]


@pytest.mark.parametrize(
    ("cluster", "namespace", "user", "fragment"),
    [
        (True, "shop", None, "exclude each other"),
        (False, "Shop_1", None, "not a valid namespace"),
        (False, "x" * 64, None, "not a valid namespace"),
        (False, "shop", "  ", "--user is empty"),
    ],
)
def test_bad_arguments_are_usage_errors(cluster, namespace, user, fragment):
    with pytest.raises(UsageError) as err:
        render_rbac(cluster, namespace, user)
    assert fragment in err.value.message and err.value.hint


def test_rbac_command_prints_yaml_and_maps_usage_errors(capsys):
    assert main(["rbac", "--cluster", "--user", "bob"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert docs[1]["subjects"][0]["name"] == "bob"
    assert main(["rbac", "--cluster", "-n", "shop"]) == ExitCode.USAGE
    out, err = capsys.readouterr()
    assert out == "" and "exclude each other" in err


@pytest.mark.parametrize(
    ("broken", "fragment"),
    [
        ({"rules": [{"apiGroup": [""], "resources": ["pods"], "verbs": ["get"]}]}, "unknown"),
        ({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["read"]}]}, "read"),
        ({"rules": [{"apiGroups": [""], "resources": ["pods"]}]}, "verbs"),
    ],
)
def test_the_validator_itself_rejects_what_the_api_would(broken, fragment):
    doc = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
           "metadata": {"name": "x"}, **broken}
    with pytest.raises((AssertionError, KeyError, ValueError)) as err:
        validate(doc)
    assert fragment in str(err.value)


# ---- applied to the simulated API server ------------------------------------------------
# The simulated server (tests/lab/cluster) authorizes with the RBAC objects in its store, as
# kube-apiserver --authorization-mode=RBAC does, so what `rbac` prints can be applied there
# and then checked the way the plugin's pre-flight checks: SelfSubjectAccessReview.

TRACE_NEEDS = [
    # (verb, group, resource, subresource, name)
    ("get", "", "pods", "", ""), ("list", "", "pods", "", ""), ("watch", "", "pods", "", ""),
    ("patch", "", "pods", "ephemeralcontainers", "web-1"), ("get", "", "pods", "ephemeralcontainers", "web-1"),
    ("get", "", "pods", "log", "web-1"), ("create", "", "pods", "exec", "web-1"),
    ("list", "", "services", "", ""), ("get", "", "services", "", "kube-dns"),
    ("get", "apps", "deployments", "", "web"), ("list", "apps", "replicasets", "", ""),
    ("get", "apps", "daemonsets", "", "node-local-dns"), ("get", "apps", "statefulsets", "", "db"),
    ("get", "batch", "jobs", "", "report-1"), ("list", "batch", "jobs", "", ""),
    ("get", "batch", "cronjobs", "", "report"),
]
NEVER = [
    ("delete", "", "pods", "", "web-1"), ("create", "", "pods", "", ""), ("update", "", "pods", "", "web-1"),
    ("patch", "", "pods", "", "web-1"), ("update", "", "pods", "ephemeralcontainers", "web-1"),
    ("get", "", "secrets", "", ""), ("list", "", "configmaps", "", ""),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", ""),
    ("delete", "apps", "deployments", "", "web"), ("patch", "", "nodes", "", "node-a"),
    ("list", "", "endpoints", "", ""), ("create", "batch", "cronjobs", "", ""),
]


@pytest.fixture
def sim(tmp_path):
    from tests.lab.cluster import SimCluster

    cluster = SimCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _api(cluster, tmp_path, user: str):
    from kubernetes import config

    path = cluster.write_kubeconfig(tmp_path / f"kubeconfig-{user}", user=user)
    return config.new_client_from_config(config_file=str(path))


def _can(api_client, verb, group, resource, subresource, name, namespace) -> bool:
    review = k8s.AuthorizationV1Api(api_client).create_self_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "verb": verb, "group": group, "resource": resource, "subresource": subresource,
            "name": name, "namespace": namespace}},
    })
    return bool(review.status.allowed)


def test_cluster_rbac_applied_with_kubectl_grants_exactly_the_trace_needs(sim, tmp_path):
    from tests.test_kubectl_plugin import find_kubectl

    kubectl = find_kubectl()
    sim.users.add("bob", ("kubectl-dnstrace",))  # a member of the default group
    sim.users.add("eve")  # authenticated, bound to nothing
    admin_config = sim.write_kubeconfig(tmp_path / "admin", user="admin")
    # kubectl apply, as the README says; the simulated server serves no OpenAPI document.
    applied = subprocess.run(
        [kubectl, "--kubeconfig", str(admin_config), "apply", "--validate=false", "-f", "-"],
        input=render_rbac(True, None, None), capture_output=True, text=True, timeout=120,
    )
    assert applied.returncode == 0, applied.stderr
    assert "clusterrole.rbac.authorization.k8s.io/kubectl-dnstrace created" in applied.stdout
    assert "clusterrolebinding.rbac.authorization.k8s.io/kubectl-dnstrace created" in applied.stdout

    bob, eve = _api(sim, tmp_path, "bob"), _api(sim, tmp_path, "eve")
    for namespace in ("kube-system", "shop"):
        for verb, group, resource, sub, name in TRACE_NEEDS:
            assert _can(bob, verb, group, resource, sub, name, namespace), (verb, resource, sub, namespace)
            assert not _can(eve, verb, group, resource, sub, name, namespace), (verb, resource, sub)
        for verb, group, resource, sub, name in NEVER:
            assert not _can(bob, verb, group, resource, sub, name, namespace), (verb, resource, sub)
    assert _can(bob, "list", "", "nodes", "", "", "")
    assert not _can(bob, "watch", "", "nodes", "", "", "")
    assert _can(bob, "get", "", "namespaces", "", "shop", "")
    assert not _can(bob, "delete", "", "namespaces", "", "shop", "")


def test_namespaced_rbac_applied_with_the_client_stays_in_its_namespace(sim, tmp_path):
    from kubernetes import utils

    sim.users.add("alice")
    admin = _api(sim, tmp_path, "admin")
    k8s.CoreV1Api(admin).create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": "shop"}})
    for doc in policy_documents(cluster=False, namespace="shop", user="alice"):
        utils.create_from_dict(admin, doc)
    rbac_api = k8s.RbacAuthorizationV1Api(admin)
    assert rbac_api.read_namespaced_role("kubectl-dnstrace", "shop").rules
    assert rbac_api.read_cluster_role("kubectl-dnstrace-shop").rules

    alice = _api(sim, tmp_path, "alice")
    for verb, group, resource, sub, name in TRACE_NEEDS:
        assert _can(alice, verb, group, resource, sub, name, "shop"), (verb, resource, sub)
        assert not _can(alice, verb, group, resource, sub, name, "kube-system"), (verb, resource, sub)
    for verb, group, resource, sub, name in NEVER:
        assert not _can(alice, verb, group, resource, sub, name, "shop"), (verb, resource, sub)
    # What a Role cannot hold: node reads, and this one namespace object only.
    assert _can(alice, "list", "", "nodes", "", "", "")
    assert _can(alice, "get", "", "namespaces", "", "shop", "")
    assert not _can(alice, "get", "", "namespaces", "", "kube-system", "")
    # SelfSubjectAccessReview itself comes from system:basic-user, not from these objects.
    assert _can(alice, "create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "", "")


@pytest.mark.lab
@pytest.mark.slow
def test_a_trace_runs_with_nothing_but_the_printed_grant(tmp_path):
    """The real trace, as a user who holds only `rbac --cluster`: no step is refused."""
    from tests.conftest import require_lab
    from tests.lab.scenario import ScenarioLab
    from tests.test_kubectl_plugin import find_kubectl

    require_lab()
    kubectl = find_kubectl()
    with ScenarioLab("tests/scenarios/incident.yaml") as sl:
        sl.cluster.users.add("responder", ("kubectl-dnstrace",))
        env = sl.env()
        applied = subprocess.run([kubectl, "apply", "--validate=false", "-f", "-"],
                                 input=render_rbac(True, None, None), env=env,
                                 capture_output=True, text=True, timeout=120)
        assert applied.returncode == 0, applied.stderr
        env["KUBECONFIG"] = str(sl.cluster.write_kubeconfig(tmp_path / "responder", user="responder"))
        done = subprocess.run(
            [kubectl, "dnstrace", "coredns", "--domain", "evil.example.com", "--duration", "8s",
             "-o", "json"],
            env=env, capture_output=True, text=True, timeout=180,
        )
    assert done.returncode == 0, done.stderr
    for refusal in ("attribution is off", "no pods/exec permission", "may not", "forbidden"):
        assert refusal not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    pods = {s["client"].get("name") for s in report["summary"]}
    assert "checkout-84d6c7b9f-tw7pn" in pods, report["summary"]
