"""Pre-flight against the simulated API server: RBAC per permission, Pod Security per level,
clusters without ephemeral containers — all decided before any pod is touched."""

from __future__ import annotations

import pytest

from kubectl_dnstrace.errors import ExitCode, Forbidden, PodSecurityDenied, Unsupported
from kubectl_dnstrace.kube.ephemeral import CaptureSpec, add_capture_container
from kubectl_dnstrace.kube.preflight import run_preflight
from kubectl_dnstrace.kube.targets import resolve_targets
from tests.kubesim import PYTHON_IMAGE, connect, running_pod, sim_cluster


@pytest.fixture
def cluster():
    with sim_cluster() as c:
        running_pod(c, "shop", "web-1")
        yield c


def _pods(kube):
    return resolve_targets(kube, ["pod/web-1"], namespace="shop").pods


def _ephemeral(cluster) -> list[dict]:
    return cluster.store.get("pods", "web-1", "shop")["spec"].get("ephemeralContainers") or []


def test_everything_allowed_privileged_namespace_adds_net_raw(cluster, tmp_path) -> None:
    kube = connect(cluster, tmp_path)
    pre = run_preflight(kube, _pods(kube))
    plan = pre.plan("shop")
    assert (plan.psa_level, plan.capabilities, plan.can_exec) == ("", ["NET_RAW"], True)


@pytest.mark.parametrize(("verb", "sub", "words"), [
    ("patch", "ephemeralcontainers", "patch pods/ephemeralcontainers in namespace shop"),
    ("get", "log", "get pods/log in namespace shop"),
])
def test_missing_required_permission_is_named_with_its_namespace(cluster, tmp_path, verb, sub,
                                                                 words) -> None:
    cluster.faults.deny("admin", verb, "pods", sub, "shop")
    kube = connect(cluster, tmp_path)
    with pytest.raises(Forbidden) as info:
        run_preflight(kube, _pods(kube))
    assert words in info.value.message and "(RBAC)" in info.value.message
    assert "kubectl dnstrace rbac" in info.value.hint
    assert info.value.exit_code == ExitCode.FORBIDDEN
    assert _ephemeral(cluster) == []  # nothing touched


@pytest.mark.parametrize("verb", ["get", "create"])
def test_attach_is_required_for_the_inline_agent_only(cluster, tmp_path, verb) -> None:
    cluster.faults.deny("admin", verb, "pods", "attach", "shop")
    kube = connect(cluster, tmp_path)
    with pytest.raises(Forbidden) as info:
        run_preflight(kube, _pods(kube), attach=True)
    assert f"{verb} pods/attach in namespace shop" in info.value.message
    assert "hand the agent its program (pods/attach)" in info.value.message
    assert "needs no attach" in info.value.hint  # the project image is the way around
    assert run_preflight(kube, _pods(kube), attach=False).plan("shop").can_exec is True
    assert _ephemeral(cluster) == []


def test_exec_allowed_as_get_counts_for_servers_before_1_30(cluster, tmp_path) -> None:
    cluster.faults.deny("admin", "create", "pods", "exec", "shop")
    kube = connect(cluster, tmp_path)
    assert run_preflight(kube, _pods(kube)).plan("shop").can_exec is True


def test_missing_exec_only_changes_how_we_stop(cluster, tmp_path) -> None:
    cluster.faults.deny("admin", "*", "pods", "exec", "shop")  # create (1.30+) and get
    kube = connect(cluster, tmp_path)
    assert run_preflight(kube, _pods(kube)).plan("shop").can_exec is False


def test_real_rbac_user_without_ephemeral_rights(cluster, tmp_path) -> None:
    """A Role like the recorded pod-reader (fixture 32): pods and pods/log, nothing more."""
    cluster.users.add("dev-user")
    cluster.store.create({"kind": "Role", "metadata": {"name": "pod-reader", "namespace": "shop"},
                          "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"],
                                     "verbs": ["get", "list", "watch"]}]})
    cluster.store.create({"kind": "RoleBinding",
                          "metadata": {"name": "pod-reader", "namespace": "shop"},
                          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": "pod-reader"},
                          "subjects": [{"kind": "User", "name": "dev-user",
                                        "apiGroup": "rbac.authorization.k8s.io"}]})
    kube = connect(cluster, tmp_path, user="dev-user")
    with pytest.raises(Forbidden) as info:
        run_preflight(kube, _pods(kube))
    assert "patch pods/ephemeralcontainers in namespace shop" in info.value.message
    assert "get pods/log" not in info.value.message


def test_restricted_namespace_is_refused_with_alternatives(cluster, tmp_path) -> None:
    cluster.set_psa("shop", enforce="restricted")
    kube = connect(cluster, tmp_path)
    with pytest.raises(PodSecurityDenied) as info:
        run_preflight(kube, _pods(kube))
    err = info.value
    assert err.exit_code == ExitCode.POD_SECURITY
    assert "restricted" in err.message and "NET_RAW" in err.message
    for alternative in ("analyze", "coredns", "kubectl label ns shop"):
        assert alternative in err.hint
    assert _ephemeral(cluster) == []


def test_baseline_namespace_runs_as_root_without_added_capabilities(cluster, tmp_path) -> None:
    cluster.set_psa("shop", enforce="baseline")
    kube = connect(cluster, tmp_path)
    pods = _pods(kube)
    pre = run_preflight(kube, pods)
    assert pre.plan("shop").capabilities == []
    spec = CaptureSpec("b45e11", PYTHON_IMAGE, ["python3", "-c", "pass"])
    add_capture_container(kube, spec, pods[0], pre.plan("shop").capabilities)
    [added] = _ephemeral(cluster)
    assert added["securityContext"]["runAsUser"] == 0
    assert "capabilities" not in added["securityContext"]


def test_unreadable_label_falls_back_to_the_403_body(cluster, tmp_path) -> None:
    """No right to get namespaces: baseline is learnt from the patch's 403 and retried."""
    cluster.set_psa("shop", enforce="baseline")
    cluster.faults.deny("admin", "get", "namespaces")
    kube = connect(cluster, tmp_path)
    pods = _pods(kube)
    pre = run_preflight(kube, pods)
    assert pre.plan("shop").psa_level is None and pre.plan("shop").capabilities == ["NET_RAW"]
    notices: list[str] = []
    spec = CaptureSpec("c0ffee", PYTHON_IMAGE, ["python3", "-c", "pass"])
    container = add_capture_container(kube, spec, pods[0], ["NET_RAW"], notices.append)
    assert "capabilities" not in container["securityContext"]
    assert any("baseline" in n for n in notices)
    assert [c["name"] for c in _ephemeral(cluster)] == ["dnstrace-c0ffee"]


def test_unreadable_label_restricted_is_refused_from_the_403_body(cluster, tmp_path) -> None:
    cluster.set_psa("shop", enforce="restricted")
    cluster.faults.deny("admin", "get", "namespaces")
    kube = connect(cluster, tmp_path)
    pods = _pods(kube)
    run_preflight(kube, pods)
    spec = CaptureSpec("d00d00", PYTHON_IMAGE, ["python3", "-c", "pass"])
    with pytest.raises(PodSecurityDenied) as info:
        add_capture_container(kube, spec, pods[0], ["NET_RAW"])
    assert "restricted" in info.value.message and "NET_RAW" in info.value.hint


def test_cluster_without_ephemeral_containers_is_unsupported(cluster, tmp_path) -> None:
    cluster.faults.disable_ephemeral()
    kube = connect(cluster, tmp_path)
    pods = _pods(kube)
    spec = CaptureSpec("e0e0e0", PYTHON_IMAGE, ["python3", "-c", "pass"])
    with pytest.raises(Unsupported) as info:
        pre = run_preflight(kube, pods)
        add_capture_container(kube, spec, pods[0], pre.plan("shop").capabilities)
    assert info.value.exit_code == ExitCode.UNSUPPORTED
    assert "ephemeral containers are unavailable" in info.value.message


def test_pod_security_warn_level_is_passed_on(cluster, tmp_path) -> None:
    """enforce=privileged, warn=restricted (recorded fixture 59): allowed, with a warning."""
    cluster.set_psa("shop", enforce="privileged", warn="restricted")
    kube = connect(cluster, tmp_path)
    pods = _pods(kube)
    pre = run_preflight(kube, pods)
    spec = CaptureSpec("0a0a0a", PYTHON_IMAGE, ["python3", "-c", "pass"])
    add_capture_container(kube, spec, pods[0], pre.plan("shop").capabilities)
    warnings = kube.take_warnings()
    assert warnings and warnings[0].startswith('would violate PodSecurity "restricted:latest"')
    assert kube.take_warnings() == []  # each shown once
