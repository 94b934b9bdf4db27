"""Do no harm, on the real cluster: what a trace leaves in the pod object, refusals before
any change, SIGTERM/SIGHUP, an image that cannot be pulled, and a second trace of one pod.

Every pod here is in a namespace of this file's own (other engineers trace CoreDNS at the
same time on the shared cluster).
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from kubectl_dnstrace.agent_program import ALARM_EXIT, PROGRAM_WAIT
from kubectl_dnstrace.errors import ExitCode
from tests.real.cluster import BackgroundTrace, RealCluster

NS = "i15-kube-rt"
UNPULLABLE = "127.0.0.1:9/dnstrace/unpullable:1"  # refused on loopback: no traffic leaves
POD = """
apiVersion: v1
kind: Pod
metadata: {name: {name}, labels: {app: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: docker.io/realk8s/tools:1
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "while true; do dig +short +tries=1 +time=1 evil.example.test >/dev/null; sleep 1; done"]
"""


@pytest.fixture(scope="module")
def ns(real: RealCluster):
    with real.namespace(NS) as name:
        yield name


def fresh_pod(real: RealCluster, ns: str, name: str) -> str:
    real.apply(POD.replace("{name}", name), ns)
    real.wait_pods(ns, f"app={name}")
    return name


def pod_bytes(real: RealCluster, ns: str, name: str) -> int:
    """The pod as the API serves it (managedFields included: etcd stores them too), compact
    JSON: what etcd's limit is about."""
    obj = real.get_json("pod", name, "-n", ns, "--show-managed-fields")
    return len(json.dumps(obj, separators=(",", ":")))


def wait_terminated(real: RealCluster, ns: str, name: str, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        statuses = real.get_json("pod", name, "-n", ns)["status"].get("ephemeralContainerStatuses") or []
        if statuses and all("terminated" in s["state"] for s in statuses):
            return {s["name"]: s["state"]["terminated"] for s in statuses}
        time.sleep(1)
    raise AssertionError(f"capture containers of {ns}/{name} still not terminated")


def test_one_trace_adds_under_3_kb_to_the_pod_object(real, ns):
    name = fresh_pod(real, ns, "footprint")
    before = pod_bytes(real, ns, name)
    done = real.plugin(f"pod/{name}", "-n", ns, "--domain", "evil.example.test",
                       "--duration", "6s", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]  # the agent ran and saw the pod's queries
    wait_terminated(real, ns, name)
    added = pod_bytes(real, ns, name) - before
    print(f"bytes per trace: {added} (pod {before} -> {before + added})")
    assert 0 < added <= 3 * 1024, added
    # The user is told the figure, and it is the real one within the status estimate.
    told = float(done.stderr.split(f"to pod {ns}/{name} (+")[1].split(" KB")[0]) * 1024
    assert abs(told - added) < 700, (told, added)
    spec = real.get_json("pod", name, "-n", ns)["spec"]["ephemeralContainers"][-1]
    assert spec["stdin"] and spec["stdinOnce"] and len(spec["command"][2]) < 400


def test_a_pod_near_etcds_limit_is_refused_and_etcds_own_refusal_is_named(real, ns):
    from kubectl_dnstrace.errors import PodTooLarge
    from kubectl_dnstrace.kube.client import Kube
    from kubectl_dnstrace.model import ClusterOptions

    name = fresh_pod(real, ns, "full")
    kube = Kube.connect(ClusterOptions(kubeconfig=real.kubeconfig))
    # etcd itself refuses a write over 1.5 MiB: the API server says "request is too large".
    huge = {"name": "huge", "image": UNPULLABLE, "imagePullPolicy": "Never",
            "command": ["true", *["x" * 100_000] * 16]}
    with pytest.raises(PodTooLarge) as info:
        kube.patch_ephemeral_containers(ns, name, {"spec": {"ephemeralContainers": [huge]}})
    assert "request is too large" in info.value.message
    # Fill the pod to just short of the plugin's margin (never-pulled containers: inert).
    target = 1_572_864 - 100 * 1024 - 1_000
    i = 0
    while pod_bytes(real, ns, name) < target - 1_000:
        room = target - pod_bytes(real, ns, name) - 400
        chunk = min(room, 500_000)
        filler = {"name": f"fill{i}", "image": UNPULLABLE, "imagePullPolicy": "Never",
                  "command": ["true", *["x" * 50_000] * (chunk // 50_000), "x" * (chunk % 50_000)]}
        kube.patch_ephemeral_containers(ns, name, {"spec": {"ephemeralContainers": [filler]}})
        i += 1
    before = real.get_json("pod", name, "-n", ns)["spec"]["ephemeralContainers"]
    done = real.plugin(f"pod/{name}", "-n", ns, "--duration", "5s")
    assert done.returncode == ExitCode.POD_TOO_LARGE, done.stderr
    assert f"pod {ns}/{name} is" in done.stderr and "etcd" in done.stderr
    assert "nothing was changed" in done.stderr and "Traceback" not in done.stderr
    assert real.get_json("pod", name, "-n", ns)["spec"]["ephemeralContainers"] == before
    real.kubectl("delete", "pod", name, "-n", ns, "--wait=false")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_the_agents_and_print_the_summary(real, ns, sig):
    name = fresh_pod(real, ns, f"sig{int(sig)}")
    trace = BackgroundTrace(real, f"pod/{name}", "-n", ns, "--domain", "evil.example.test",
                            "--duration", "300s", "-o", "json")
    trace.wait_capturing()
    time.sleep(4)
    t0 = time.monotonic()
    trace.proc.send_signal(sig)  # as `timeout -s TERM` or a closed terminal would
    done = trace.finish(timeout=60)
    assert time.monotonic() - t0 < 30
    assert done.returncode == 0, done.stderr
    assert f"{signal.Signals(sig).name} received: stopping the capture agents" in done.stderr
    doc = json.loads(done.stdout)
    assert any(e.get("client", {}).get("name") == name for e in doc["events"])
    ended = wait_terminated(real, ns, name, timeout=20)
    assert all(t["exitCode"] == 0 for t in ended.values()), ended


def test_timeout_s_term_on_a_trace(real, ns):
    """``timeout -s TERM 15 kubectl dnstrace ...``: the summary, and no agent left running."""
    import subprocess

    name = fresh_pod(real, ns, "timeout")
    proc = subprocess.run(["timeout", "--preserve-status", "-s", "TERM", "20", "kubectl", "dnstrace", f"pod/{name}",
                           "-n", ns, "--domain", "evil.example.test", "--duration", "300s"],
                          capture_output=True, text=True, env=real.env(), timeout=90,
                          stdin=subprocess.DEVNULL)
    real.note_added(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert "SIGTERM received" in proc.stderr
    assert name in proc.stdout and "evil.example.test" in proc.stdout  # the summary table
    assert "asked 1 agent(s) to stop (pods/exec)" in proc.stderr, proc.stderr
    wait_terminated(real, ns, name, timeout=20)


def test_an_unpullable_image_is_never_left_able_to_capture(real, ns):
    name = fresh_pod(real, ns, "nopull")
    done = real.plugin(f"pod/{name}", "-n", ns, "--image", UNPULLABLE,
                       "--image-pull-policy", "IfNotPresent", "--timeout", "30s",
                       "--duration", "300s")
    assert done.returncode == ExitCode.CONTAINER_FAILED, done.stderr
    assert "cannot start: ErrImagePull" in done.stderr or "ImagePullBackOff" in done.stderr
    assert "gets no agent program and ends by itself" in done.stderr
    assert "Traceback" not in done.stderr
    statuses = real.get_json("pod", name, "-n", ns)["status"]["ephemeralContainerStatuses"]
    assert all("running" not in s["state"] for s in statuses)


def test_a_late_start_ends_by_itself_without_capturing(real, ns):
    """What an image pulled after the plugin gave up would do: the container starts, no
    program comes, it ends within PROGRAM_WAIT seconds having written nothing."""
    from kubectl_dnstrace.agent_program import agent_launch
    from kubectl_dnstrace.kube.client import Kube
    from kubectl_dnstrace.model import ClusterOptions, Filters
    from kubectl_dnstrace.trace import agent_args

    name = fresh_pod(real, ns, "late")
    launch = agent_launch(agent_args(300, Filters(), "/tmp/x.stop", False), False)
    kube = Kube.connect(ClusterOptions(kubeconfig=real.kubeconfig))
    container = {"name": "dnstrace-1a7e00", "image": "docker.io/library/python:3.13-alpine",
                 "imagePullPolicy": "IfNotPresent", "stdin": True, "stdinOnce": True,
                 "command": [c.replace("$", "$$") for c in launch.command]}
    t0 = time.monotonic()
    kube.patch_ephemeral_containers(ns, name, {"spec": {"ephemeralContainers": [container]}})
    ended = wait_terminated(real, ns, name, timeout=PROGRAM_WAIT + 40)
    assert time.monotonic() - t0 < PROGRAM_WAIT + 30
    assert ended["dnstrace-1a7e00"]["exitCode"] == ALARM_EXIT, ended
    assert real.kubectl("logs", name, "-n", ns, "-c", "dnstrace-1a7e00").stdout == ""


def test_a_second_trace_of_a_pod_says_so_before_adding_anything(real, ns):
    name = fresh_pod(real, ns, "twice")
    first = BackgroundTrace(real, f"pod/{name}", "-n", ns, "--duration", "120s", "-o", "json")
    first.wait_capturing()
    spec_before = real.get_json("pod", name, "-n", ns)["spec"]["ephemeralContainers"]
    second = real.plugin(f"pod/{name}", "-n", ns, "--duration", "5s")
    assert second.returncode == ExitCode.ALREADY_TRACED, second.stderr
    assert "another trace is running" in second.stderr and "--force" in second.stderr
    assert real.get_json("pod", name, "-n", ns)["spec"]["ephemeralContainers"] == spec_before
    first.proc.send_signal(signal.SIGINT)
    assert first.finish(timeout=60).returncode in (0, 1)


@pytest.mark.parametrize("bad", [["--qtype", "BOGUS"], ["--rcode", "BOGUS"],
                                 ["--qtype", "BOGUS", "--dry-run"]])
def test_a_usage_error_changes_nothing(real, ns, bad):
    name = fresh_pod(real, ns, "usage")
    done = real.plugin(f"pod/{name}", "-n", ns, *bad)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "BOGUS" in done.stderr and "report it" not in done.stderr
    assert not real.get_json("pod", name, "-n", ns)["spec"].get("ephemeralContainers")


def test_start_error_says_the_container_ended_for_good(real, ns):
    """An image without python3 (the CoreDNS image): runc cannot start the bootstrap."""
    name = fresh_pod(real, ns, "noshell")
    done = real.plugin(f"pod/{name}", "-n", ns, "--image", "docker.io/realk8s/coredns:1",
                       "--image-pull-policy", "IfNotPresent", "--duration", "300s")
    assert done.returncode == ExitCode.CONTAINER_FAILED, done.stderr
    assert "could not start (StartError" in done.stderr
    assert "will never start again" in done.stderr
    assert "start later" not in done.stderr and "Traceback" not in done.stderr


def test_the_printed_rbac_grant_is_enough_and_attach_is_named_when_missing(real, ns):
    import subprocess

    name = fresh_pod(real, ns, "rbac")
    user = "i15-kube-tracer"
    kubeconfig = real.user(user)
    grant = subprocess.run(["kubectl-dnstrace", "rbac", "-n", ns, "--user", user],
                           capture_output=True, text=True, check=True, env=real.env()).stdout
    real.kubectl("apply", "-f", "-", input=grant)
    try:
        done = real.plugin(f"pod/{name}", "-n", ns, "--domain", "evil.example.test",
                           "--duration", "6s", "-o", "json", kubeconfig=kubeconfig)
        assert done.returncode == 0, done.stderr
        assert any(e.get("client", {}).get("name") == name
                   for e in json.loads(done.stdout)["events"])
        # Without pods/attach (the program's way in) the trace refuses before any change.
        role = real.get_json("role", "kubectl-dnstrace", "-n", ns)
        role["rules"] = [r for r in role["rules"] if r["resources"] != ["pods/attach"]]
        real.kubectl("apply", "-f", "-", input=json.dumps(role))
        before = real.get_json("pod", name, "-n", ns)["spec"]["ephemeralContainers"]
        refused = real.plugin(f"pod/{name}", "-n", ns, "--duration", "5s", kubeconfig=kubeconfig)
        assert refused.returncode == ExitCode.FORBIDDEN, refused.stderr
        assert "get pods/attach" in refused.stderr and "needs no attach" in refused.stderr
        assert real.get_json("pod", name, "-n", ns)["spec"]["ephemeralContainers"] == before
    finally:
        real.kubectl("delete", "clusterrole,clusterrolebinding", f"kubectl-dnstrace-{ns}",
                     "--ignore-not-found", check=False)
