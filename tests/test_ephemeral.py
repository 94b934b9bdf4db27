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


# ---- against the simulated cluster: pulls, timeouts, early exits ---------------------------------

import time  # noqa: E402

from kubectl_dnstrace.errors import AgentFailed, ExitCode  # noqa: E402
from kubectl_dnstrace.kube.ephemeral import (  # noqa: E402
    add_capture_container,
    early_exit_error,
    wait_running,
)
from kubectl_dnstrace.kube.targets import resolve_targets  # noqa: E402
from kubectl_dnstrace.trace import _agent_error_message  # noqa: E402
from tests.kubesim import PYTHON_IMAGE, connect, emitter_command, running_pod, sim_cluster  # noqa: E402


@pytest.fixture
def cluster():
    with sim_cluster() as c:
        running_pod(c, "shop", "web-1")
        yield c


def _setup(cluster, tmp_path, image=PYTHON_IMAGE, command=None, pull=None):
    kube = connect(cluster, tmp_path)
    pod = resolve_targets(kube, ["pod/web-1"], namespace="shop").pods[0]
    spec = CaptureSpec("f00f00", image, command or ["python3", "-c", "import time; time.sleep(30)"],
                       image_pull_policy=pull)
    add_capture_container(kube, spec, pod, ["NET_RAW"])
    return kube, pod, spec


def test_running_is_reached_quickly_and_states_are_reported(cluster, tmp_path) -> None:
    t0 = time.monotonic()
    kube, pod, spec = _setup(cluster, tmp_path)
    seen: list[str] = []
    st = wait_running(kube, pod, spec.container_name, time.monotonic() + 20,
                      lambda p, s: seen.append(s.phase + ":" + s.reason))
    assert st.phase == "running"
    assert time.monotonic() - t0 < 10
    assert seen[-1] == "running:"


@pytest.mark.parametrize(("pull", "reason"), [(None, "Err"), ("Never", "ErrImageNeverPull")])
def test_image_that_cannot_be_pulled_fails_fast(cluster, tmp_path, pull, reason) -> None:
    image = "registry.invalid/nothing:1"
    cluster.faults.fail_image(image)
    kube, pod, spec = _setup(cluster, tmp_path, image=image, pull=pull)
    t0 = time.monotonic()
    with pytest.raises(ContainerFailed) as info:
        wait_running(kube, pod, spec.container_name, time.monotonic() + 30)
    assert time.monotonic() - t0 < 15
    assert reason in info.value.message and "shop/web-1" in info.value.message
    assert "--image" in info.value.hint and "mirror" in info.value.hint
    assert info.value.exit_code == ExitCode.CONTAINER_FAILED


def test_wait_is_bounded_by_the_timeout(cluster, tmp_path) -> None:
    cluster.faults.slow_start(30)
    kube, pod, spec = _setup(cluster, tmp_path)
    t0 = time.monotonic()
    with pytest.raises(ContainerFailed) as info:
        wait_running(kube, pod, spec.container_name, time.monotonic() + 2)
    assert time.monotonic() - t0 < 8
    assert "did not start within the timeout" in info.value.message
    assert "--timeout" in info.value.hint


def test_early_exit_shows_the_agents_error_record(cluster, tmp_path) -> None:
    records = [{"type": "hello", "seq": 0, "agent_version": "t", "protocol": 1,
                "interfaces": [], "filters": {}},
               {"type": "error", "seq": 1,
                "message": "cannot open a packet socket: Operation not permitted (no CAP_NET_RAW)"},
               {"type": "bye", "seq": 2, "reason": "error"}]
    kube, pod, spec = _setup(cluster, tmp_path,
                             command=emitter_command(records, delay=0.0, exit_code=1))
    st = wait_running(kube, pod, spec.container_name, time.monotonic() + 20)
    deadline = time.monotonic() + 10
    while st.phase != "terminated" and time.monotonic() < deadline:
        time.sleep(0.2)
        st = container_state(kube.get("pods", "web-1", "shop"), spec.container_name)
    assert (st.phase, st.exit_code) == ("terminated", 1)
    err = early_exit_error(kube, pod, spec.container_name, st, _agent_error_message)
    assert isinstance(err, AgentFailed)
    assert "no CAP_NET_RAW" in err.message and "NET_RAW" in err.hint


def test_many_previous_traces_warn_about_pod_size(cluster, tmp_path) -> None:
    kube = connect(cluster, tmp_path)
    pod = resolve_targets(kube, ["pod/web-1"], namespace="shop").pods[0]
    pod.ephemeral_containers = [f"dnstrace-{i:06x}" for i in range(WARN_EXISTING)]
    notices: list[str] = []
    spec = CaptureSpec("abcdef", PYTHON_IMAGE, ["python3", "-c", "pass"])
    add_capture_container(kube, spec, pod, ["NET_RAW"], notices.append)
    assert any("already carries 50 dnstrace capture containers" in n and "rollout restart" in n
               for n in notices)
    # A second container with the same name in one run is refused before any request.
    pod.ephemeral_containers.append(spec.container_name)
    with pytest.raises(ContainerFailed):
        add_capture_container(kube, spec, pod, ["NET_RAW"])


# ---- the agent's command line -------------------------------------------------------------------

from kubectl_dnstrace.model import Filters  # noqa: E402
from kubectl_dnstrace.trace import agent_args, is_project_image  # noqa: E402


def test_agent_args_always_carry_the_deadline_and_the_stop_file() -> None:
    args = agent_args(90, Filters(domains=["evil.example.com"], qtypes=["TXT"], rcodes=["NXDOMAIN"]),
                      "/tmp/dnstrace-abc.stop", pcap=True)
    assert args[:4] == ["--duration", "90", "--stop-file", "/tmp/dnstrace-abc.stop"]
    for pair in (["--domain", "evil.example.com"], ["--qtype", "TXT"], ["--rcode", "NXDOMAIN"]):
        i = args.index(pair[0])
        assert args[i:i + 2] == pair
    assert "--pcap" in args


def test_thousands_of_domains_travel_with_the_program_not_in_the_pod_spec() -> None:
    import subprocess
    import sys

    from kubectl_dnstrace import protocol
    from kubectl_dnstrace.agent_program import agent_launch
    from kubectl_dnstrace.trace import long_domain_args

    names = [f"host{i}.bad.example" for i in range(5000)]
    filters = Filters(domains=names)
    args = agent_args(60, filters, "/tmp/x.stop", pcap=False)
    assert "--domain" not in args and "--domains-z" not in args
    launch = agent_launch([*args, "--qtype", "BOGUS"], preinstalled=False,
                          stdin_args=long_domain_args(filters))
    assert sum(len(a) for a in launch.command) < 1_000  # the command stays a bootstrap
    # The agent reads them back from the program on stdin: its hello counts them (the bogus
    # type ends it right after, with an error record).
    res = subprocess.run([sys.executable, "-I", "-S", *launch.command[1:]], input=launch.program,
                         capture_output=True, timeout=60)
    records = [protocol.decode(line) for line in res.stdout.decode().splitlines()]
    assert records[1]["type"] == "error" and "BOGUS" in records[1]["message"]
    big = agent_launch([*args, "--duration", "0.1"], preinstalled=False,
                       stdin_args=long_domain_args(filters))
    res = subprocess.run([sys.executable, "-I", "-S", *big.command[1:]], input=big.program,
                         capture_output=True, timeout=60)
    hello = protocol.decode(res.stdout.decode().splitlines()[0])
    assert hello["type"] == "hello"
    assert hello["filters"]["domain_count"] == 5000, hello


@pytest.mark.parametrize(("image", "project"), [
    ("ghcr.io/kubectl-dnstrace/agent:0.1.0", True),
    ("ghcr.io/kubectl-dnstrace/agent@sha256:" + "0" * 64, True),
    ("registry.corp:5000/kubectl-dnstrace/agent:0.1.0", True),  # a mirror
    ("docker.io/library/python:3.13-alpine", False),
    ("registry.corp:5000/python:3.12", False),
])
def test_project_image_is_detected_by_name(image: str, project: bool) -> None:
    assert is_project_image(image) is project


# ---- progress while containers start --------------------------------------------------------------

import io  # noqa: E402

from kubectl_dnstrace.progress import Progress  # noqa: E402


def test_progress_plain_lines_when_not_a_terminal() -> None:
    err = io.StringIO()
    p = Progress(err)
    p.set("shop/web-1", "waiting (ContainerCreating)")
    p.set("shop/web-1", "waiting (ContainerCreating)")  # unchanged: not repeated
    p.set("kube-system/coredns-1", "running")
    p.spin()
    p.set("shop/web-1", "running")
    assert err.getvalue() == ("shop/web-1: waiting (ContainerCreating)\n"
                              "kube-system/coredns-1: running\n"
                              "shop/web-1: running\n")


def test_progress_redraws_one_line_per_pod_on_a_terminal() -> None:
    err = io.StringIO()
    p = Progress(err, interactive=True)
    p.set("a", "waiting (ContainerCreating)")
    p.set("b", "pending")
    p.set("a", "running")
    last = err.getvalue().rsplit("\x1b[2A", 1)[1]  # the last redraw moved up over both lines
    assert last == "\x1b[2K  a: running\n\x1b[2K| b: pending\n"
