"""The capture container and its patch, the container states we wait on, and the warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubectl_dnstrace.errors import ContainerFailed
from kubectl_dnstrace.kube.ephemeral import (
    WARN_EXISTING,
    CaptureSpec,
    ContainerState,
    _check,
    build_container,
    build_patch,
    container_state,
    our_containers,
)
from kubectl_dnstrace.model import PodRef

FIXTURES = Path(__file__).parent / "fixtures" / "k8s-api"

SPEC = CaptureSpec(run_id="a1b2c3", image="docker.io/library/python:3.13-alpine",
                   command=["python3", "-c", "print(1)", "--duration", "30"],
                   image_pull_policy="IfNotPresent", user="alice")
POD = PodRef("shop", "web-1", containers=["app", "sidecar"])


def test_container_is_explicit_root_net_raw_never_privileged() -> None:
    c = build_container(SPEC, POD, ["NET_RAW"])
    assert c["name"] == "dnstrace-a1b2c3"
    assert c["targetContainerName"] == "app"  # the first container, like kubectl debug --target
    assert c["securityContext"] == {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"add": ["NET_RAW"]},
    }
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["DNSTRACE_RUN_ID"] == "a1b2c3" and env["DNSTRACE_USER"] == "alice"
    assert "DNSTRACE_VERSION" in env
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == SPEC.command


def test_baseline_container_adds_no_capabilities() -> None:
    c = build_container(SPEC, POD, [])
    assert "capabilities" not in c["securityContext"]
    assert c["securityContext"]["runAsUser"] == 0


def test_patch_is_shaped_as_a_pod_like_kubectl_debug() -> None:
    # The recorded kubectl-debug / fixture patches wrap the container in spec.ephemeralContainers.
    recorded = json.loads((FIXTURES / "48-psa-baseline-root-nocaps.json").read_text())
    c = build_container(SPEC, POD, [])
    patch = build_patch(c)
    assert patch.keys() == recorded["request"]["body"].keys()
    assert patch["spec"].keys() == recorded["request"]["body"]["spec"].keys()
    assert patch["spec"]["ephemeralContainers"] == [c]


def test_states_read_from_recorded_pods() -> None:
    running = json.loads((FIXTURES / "live" / "05-get-dns-pod-ephemeral-running.json").read_text())
    assert container_state(running["response"]["body"], "dnstrace").phase == "running"
    waiting = json.loads((FIXTURES / "live" / "18-get-dns-pod-ephemeral-waiting-later.json").read_text())
    st = container_state(waiting["response"]["body"], "dnstrace-missing-image")
    assert (st.phase, st.reason) == ("waiting", "ErrImageNeverPull")
    done = json.loads((FIXTURES / "live" / "15-get-dns-pod-ephemeral-terminated.json").read_text())
    st = container_state(done["response"]["body"], "dnstrace-exits")
    assert (st.phase, st.exit_code) == ("terminated", 3)
    assert container_state(running["response"]["body"], "nope").phase == "pending"


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull",
                                    "CreateContainerError"])
def test_fatal_waiting_reasons_fail_fast_with_an_image_hint(reason: str) -> None:
    with pytest.raises(ContainerFailed) as info:
        _check(POD, "dnstrace-x", ContainerState("waiting", reason, "boom"), lambda p, s: None,
               ContainerState("pending"))
    assert reason in info.value.message and "shop/web-1" in info.value.message
    assert "--image" in info.value.hint


def test_container_creating_is_waited_on() -> None:
    seen = []
    st = _check(POD, "dnstrace-x", ContainerState("waiting", "ContainerCreating"),
                lambda p, s: seen.append(s.reason), ContainerState("pending"))
    assert st.reason == "ContainerCreating" and seen == ["ContainerCreating"]


def test_our_containers_are_counted_by_name() -> None:
    pod = {"spec": {"ephemeralContainers": [{"name": "dnstrace-1"}, {"name": "debugger"},
                                            {"name": "dnstrace-2"}]}}
    assert our_containers(pod) == ["dnstrace-1", "dnstrace-2"]
    assert WARN_EXISTING == 50
