"""The simulated kubelet: ephemeral container lifecycle, pods/log and pods/exec.

Behaviour under test is the recorded behaviour of a real kubelet + containerd (live/*.json):
status goes waiting(ContainerCreating) → running → terminated; logs answer 400 while the
container waits; a followed log ends about a second after the process exits; timestamps
have nine fractional digits; sinceTime has whole-second precision.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

from tests.conftest import require_lab
from tests.lab.cluster import SimCluster

PY = "docker.io/library/python:3.13-alpine"
STAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")


@pytest.fixture
def cluster():
    with SimCluster() as c:
        c.add_node("node-a")
        c.store.ensure_namespace("shop")
        c.store.create({"kind": "Pod", "metadata": {"name": "web-1", "labels": {"app": "web"}},
                        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "nginx:1.27"}]},
                        "status": {"phase": "Running"}}, namespace="shop")
        yield c


@pytest.fixture
def v1(cluster, tmp_path):
    return client.CoreV1Api(config.new_client_from_config(str(cluster.write_kubeconfig(tmp_path / "kc"))))


def add(v1, name: str, command: list[str], image: str = PY, **extra):
    body = {"spec": {"ephemeralContainers": [{"name": name, "image": image, "command": command, **extra}]}}
    return v1.patch_namespaced_pod_ephemeralcontainers("web-1", "shop", body)


def state_of(v1, name: str) -> dict:
    pod = v1.api_client.sanitize_for_serialization(v1.read_namespaced_pod("web-1", "shop"))
    for s in pod["status"].get("ephemeralContainerStatuses") or []:
        if s["name"] == name:
            return s
    return {}


def wait_state(v1, name: str, key: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = state_of(v1, name)
        if key in s.get("state", {}):
            return s
        time.sleep(0.05)
    raise AssertionError(f"{name} never reached {key}: {state_of(v1, name)}")


def raw_log(cluster: SimCluster, query: dict, timeout: float = 20) -> urllib3.BaseHTTPResponse:
    ctx = ssl.create_default_context(cadata=cluster.ca_pem.decode())
    http = urllib3.PoolManager(ssl_context=ctx, retries=False)
    url = f"{cluster.url}/api/v1/namespaces/shop/pods/web-1/log?{urllib.parse.urlencode(query)}"
    return http.request("GET", url, headers={"Authorization": f"Bearer {cluster.token()}"},
                        preload_content=False, timeout=timeout)


def program(*lines: str) -> list[str]:
    return ["python3", "-c", "\n".join(lines)]


def test_lifecycle_follows_the_recorded_states(v1):
    seen: list[tuple[str, str]] = []

    def watcher():
        for ev in watch.Watch().stream(v1.list_namespaced_pod, "shop", timeout_seconds=10):
            pod = v1.api_client.sanitize_for_serialization(ev["object"])
            for s in pod["status"].get("ephemeralContainerStatuses") or []:
                step = (next(iter(s["state"])), s["state"][next(iter(s["state"]))].get("reason", ""))
                if not seen or seen[-1] != step:
                    seen.append(step)
                if "terminated" in s["state"]:
                    return

    t = threading.Thread(target=watcher)
    t.start()
    time.sleep(0.3)
    add(v1, "dbg", program("import sys, time", "print('capture-start', flush=True)", "time.sleep(1)", "sys.exit(3)"))
    t.join(timeout=15)
    assert seen == [("waiting", "ContainerCreating"), ("running", ""), ("terminated", "Error")]
    s = state_of(v1, "dbg")
    term = s["state"]["terminated"]
    assert term["exitCode"] == 3 and term["startedAt"] <= term["finishedAt"]
    assert term["containerID"].startswith("containerd://") and s["image"] == PY and s["restartCount"] == 0
    assert v1.read_namespaced_pod_log("web-1", "shop", container="dbg", _preload_content=False).data == b"capture-start\n"


def test_log_refusals_match_the_real_kubelet(cluster, v1):
    cluster.faults.slow_start(2.0)
    add(v1, "dbg", program("print('x')"))
    cases = [({"container": "dbg"}, 'container "dbg" in pod "web-1" is waiting to start: ContainerCreating'),
             ({"container": "nope"}, "container nope is not valid for pod web-1"),
             ({"container": "dbg", "previous": "true"}, 'previous terminated container "dbg" in pod "web-1" not found')]
    for query, message in cases:
        with pytest.raises(ApiException) as err:
            v1.read_namespaced_pod_log("web-1", "shop", **query)
        body = json.loads(err.value.body)
        assert (err.value.status, body["reason"], body["message"]) == (400, "BadRequest", message)
        assert "details" not in body


def test_log_needs_a_container_name_when_the_pod_has_several(cluster, v1):
    cluster.store.create({"kind": "Pod", "metadata": {"name": "two"}, "spec": {"nodeName": "node-a", "containers": [
        {"name": "a", "image": "x:1"}, {"name": "b", "image": "x:1"}]}}, namespace="shop")
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod_log("two", "shop")
    assert json.loads(err.value.body)["message"] == "a container name must be specified for pod two, choose one of: [a b]"


def test_node_without_kubelet_gives_the_dial_error(cluster, v1):
    cluster.add_node("dead", internal_ip="10.123.0.9", kubelet=False)
    cluster.store.create({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"nodeName": "dead", "containers": [
        {"name": "app", "image": "x:1"}]}}, namespace="shop")
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod_log("p", "shop", container="app")
    assert err.value.status == 500
    assert json.loads(err.value.body)["message"] == ('Get "https://10.123.0.9:10250/containerLogs/shop/p/app": '
                                                     "dial tcp 10.123.0.9:10250: connect: connection refused")


def test_timestamps_tail_since_time_and_since_seconds(cluster, v1):
    add(v1, "dbg", program("import time", "for i in range(6):", "    print('line', i, flush=True)", "    time.sleep(0.25)"))
    wait_state(v1, "dbg", "terminated")
    data = v1.read_namespaced_pod_log("web-1", "shop", container="dbg", timestamps=True, tail_lines=4,
                                      _preload_content=False).data
    lines = data.splitlines(keepends=True)
    assert len(lines) == 4 and all(STAMP.match(line) for line in lines)
    assert [line.split(b" ", 1)[1] for line in lines] == [b"line 2\n", b"line 3\n", b"line 4\n", b"line 5\n"]
    last_stamp = lines[-1].split(b" ", 1)[0].decode()
    # sinceTime is re-encoded with whole seconds: lines earlier in that second come back too.
    # (The python client's read_namespaced_pod_log has no since_time parameter: raw request.)
    again = raw_log(cluster, {"container": "dbg", "timestamps": "true", "sinceTime": last_stamp}).read().splitlines()
    second = last_stamp[:19]
    assert again and all(line.startswith(second.encode()) for line in again) and again[-1].endswith(b"line 5")
    assert v1.read_namespaced_pod_log("web-1", "shop", container="dbg", since_seconds=3600,
                                      _preload_content=False).data.count(b"\n") == 6


def test_follow_streams_lines_and_ends_about_a_second_after_exit(cluster, v1):
    add(v1, "dbg", program("import time", "for i in range(4):", "    print('tick', i, flush=True)", "    time.sleep(0.3)"))
    wait_state(v1, "dbg", "running")
    resp = raw_log(cluster, {"container": "dbg", "follow": "true", "timestamps": "true"})
    got = []
    for line in resp.stream(1024):
        got.append(line)
    ended = time.monotonic()
    lines = b"".join(got).splitlines()
    assert [line.split(b" ", 1)[1] for line in lines] == [b"tick 0", b"tick 1", b"tick 2", b"tick 3"]
    run = cluster.kubelet.run("shop", "web-1", "dbg")
    assert 0.7 <= ended - run.exited_at <= 3.0


def test_break_log_after_cuts_at_every_n_lines_and_since_time_resumes(cluster, v1):
    add(v1, "dbg", program("import time", "for i in range(8):", "    print('n', i, flush=True)", "    time.sleep(0.1)"))
    wait_state(v1, "dbg", "terminated")
    cluster.faults.break_log_after(3, times=2)
    seen: list[bytes] = []
    since = None
    streams = []
    for _ in range(3):
        query = {"container": "dbg", "follow": "true", "timestamps": "true"}
        if since:
            query["sinceTime"] = since
        got = b""
        try:
            for chunk in raw_log(cluster, query).stream(64):
                got += chunk
            broke = False
        except urllib3.exceptions.ProtocolError:
            broke = True
        lines = got.splitlines()
        streams.append((broke, [line.split(b" ", 1)[1] for line in lines]))
        seen += [line.split(b" ", 1)[1] for line in lines]
        since = lines[-1].split(b" ", 1)[0].decode()
    # Cut at log positions 3 and 6: each resumed stream gets further than the last cut.
    assert streams[0] == (True, [b"n 0", b"n 1", b"n 2"])
    assert streams[1][0] is True and streams[1][1][-1] == b"n 5"
    assert streams[2][0] is False and streams[2][1][-1] == b"n 7"
    assert set(seen) == {f"n {i}".encode() for i in range(8)}


def test_image_pull_failures(cluster, v1):
    cluster.faults.fail_image(PY)
    add(v1, "failing", program("print(1)"))
    add(v1, "busybox", ["sleep", "1"], image="busybox:1.36")
    add(v1, "never", ["sleep", "1"], image="dnstrace-agent:does-not-exist", imagePullPolicy="Never")
    for name, image in (("failing", PY), ("busybox", "busybox:1.36")):
        s = wait_state(v1, name, "waiting")
        deadline = time.monotonic() + 10
        while s["state"]["waiting"]["reason"] != "ImagePullBackOff" and time.monotonic() < deadline:
            assert s["state"]["waiting"]["reason"] in ("ContainerCreating", "ErrImagePull")
            time.sleep(0.1)
            s = state_of(v1, name)
        assert s["state"]["waiting"] == {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
        assert cluster.kubelet.run("shop", "web-1", name).proc is None
    time.sleep(0.5)
    assert state_of(v1, "never")["state"]["waiting"] == {
        "reason": "ErrImageNeverPull",
        "message": 'Container image "dnstrace-agent:does-not-exist" is not present with pull policy of Never'}
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod_log("web-1", "shop", container="never")
    assert json.loads(err.value.body)["message"].endswith("is waiting to start: ErrImageNeverPull")


def test_project_image_has_the_repository_on_its_path(v1):
    add(v1, "agent", program("import kubectl_dnstrace, os", "print(os.path.dirname(kubectl_dnstrace.__file__))"),
        image="ghcr.io/kubectl-dnstrace/agent:0.1.0")
    wait_state(v1, "agent", "terminated")
    out = v1.read_namespaced_pod_log("web-1", "shop", container="agent", _preload_content=False).data.decode()
    assert Path(out.strip()) == Path(__file__).resolve().parents[1] / "kubectl_dnstrace"
    assert state_of(v1, "agent")["state"]["terminated"]["reason"] == "Completed"


def test_exec_shares_the_container_environment_and_reports_exit_codes(v1):
    add(v1, "dbg", program("import time", "time.sleep(30)"), env=[{"name": "STOP_FILE", "value": "/tmp/x"}])
    wait_state(v1, "dbg", "running")
    out = stream(v1.connect_get_namespaced_pod_exec, "web-1", "shop", container="dbg",
                 command=["python3", "-c", "import os; print(os.environ['STOP_FILE'])"],
                 stderr=True, stdout=True, stdin=False, tty=False)
    assert out == "/tmp/x\n"
    resp = stream(v1.connect_get_namespaced_pod_exec, "web-1", "shop", container="dbg",
                  command=["sh", "-c", "echo out; echo err >&2; exit 3"], stderr=True, stdout=True, stdin=False,
                  tty=False, _preload_content=False)
    resp.run_forever(timeout=10)
    assert resp.read_stdout() == "out\n" and resp.read_stderr() == "err\n" and resp.returncode == 3


def test_stop_kills_every_container_process(v1, cluster):
    add(v1, "sleeper", program("import time", "time.sleep(300)"))
    wait_state(v1, "sleeper", "running")
    proc = cluster.kubelet.run("shop", "web-1", "sleeper").proc
    assert proc.poll() is None
    cluster.stop()
    assert proc.poll() is not None


def test_deleting_the_pod_kills_its_containers(v1, cluster):
    add(v1, "sleeper", program("import time", "time.sleep(300)"))
    wait_state(v1, "sleeper", "running")
    proc = cluster.kubelet.run("shop", "web-1", "sleeper").proc
    marked = v1.delete_namespaced_pod("web-1", "shop")
    # Graceful deletion: the pod is only marked; the kubelet stops its containers, then removes it.
    assert marked.metadata.deletion_timestamp is not None and marked.metadata.deletion_grace_period_seconds == 30
    proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            v1.read_namespaced_pod("web-1", "shop")
        except ApiException as err:
            assert err.status == 404
            return
        time.sleep(0.05)
    raise AssertionError("the pod object was not removed after its containers stopped")


def test_containers_and_exec_run_in_the_pod_network_namespace(lab, cluster, v1):
    require_lab()
    ns = lab.netns("pod")
    host = lab.netns("node")
    br = lab.bridge(host, address="10.77.0.1/24")
    lab.attach(host, br, ns, ["10.77.0.5/24"])
    cluster.kubelet.register_pod_netns("shop", "web-1", ns.name)
    add(v1, "net", ["sh", "-c", "ip -o -4 addr show dev eth0; sleep 30"])
    wait_state(v1, "net", "running")
    deadline = time.monotonic() + 5
    log = b""
    while b"10.77.0.5" not in log and time.monotonic() < deadline:
        log = v1.read_namespaced_pod_log("web-1", "shop", container="net", _preload_content=False).data
        time.sleep(0.1)
    assert b"10.77.0.5/24" in log
    out = stream(v1.connect_get_namespaced_pod_exec, "web-1", "shop", container="net",
                 command=["ip", "-o", "-4", "addr", "show", "dev", "eth0"], stderr=True, stdout=True,
                 stdin=False, tty=False)
    assert "10.77.0.5/24" in out


def test_container_identity_decides_whether_a_packet_socket_opens(lab, cluster, v1):
    """Like containerd: root with the default set has NET_RAW; a restricted-profile container has none."""
    ns = lab.netns("caps")
    cluster.kubelet.register_pod_netns("shop", "web-1", ns.name)
    probe = program("import socket", "try:", "    socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()",
                    "    print('packet socket ok')", "except PermissionError as exc:", "    print('denied', exc.errno)")
    add(v1, "root", probe, securityContext={"runAsUser": 0})
    add(v1, "restricted", probe, securityContext={
        "runAsUser": 65532, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}})
    add(v1, "dropped", probe, securityContext={"capabilities": {"drop": ["NET_RAW"]}})
    for name, want in (("root", b"packet socket ok\n"), ("restricted", b"denied 1\n"), ("dropped", b"denied 1\n")):
        wait_state(v1, name, "terminated")
        assert v1.read_namespaced_pod_log("web-1", "shop", container=name, _preload_content=False).data == want


def test_real_kubectl_debug_logs_and_exec(cluster, v1, tmp_path):
    """kubectl debug (strategic merge with $setElementOrder), logs -f and exec (websocket) work as on a cluster."""
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed")
    kc = cluster.write_kubeconfig(tmp_path / "kc")

    def k(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([kubectl, "--kubeconfig", str(kc), "-n", "shop", *args], capture_output=True,
                              text=True, timeout=60)

    dbg = k("debug", "web-1", f"--image={PY}", "--target=app", "--profile=netadmin", "-c", "kdebug", "--",
            "python3", "-c", "import time\nfor i in range(3): print('hello', i, flush=True); time.sleep(0.2)")
    assert dbg.returncode == 0, dbg.stderr
    wait_state(v1, "kdebug", "running")
    logs = k("logs", "web-1", "-c", "kdebug", "-f")
    assert logs.stdout == "hello 0\nhello 1\nhello 2\n"
    k("debug", "web-1", f"--image={PY}", "-c", "kdebug2", "--", "sleep", "30")
    wait_state(v1, "kdebug2", "running")
    ex = k("exec", "web-1", "-c", "kdebug2", "--", "sh", "-c", "echo in-exec; exit 2")
    assert (ex.returncode, ex.stdout) == (2, "in-exec\n") and "exit code 2" in ex.stderr
    sc = wait_state(v1, "kdebug", "terminated")
    assert sc["state"]["terminated"]["reason"] == "Completed"


def test_stop_also_kills_processes_started_by_exec(v1, cluster):
    add(v1, "dbg", program("import time", "time.sleep(60)"))
    wait_state(v1, "dbg", "running")
    resp = stream(v1.connect_get_namespaced_pod_exec, "web-1", "shop", container="dbg",
                  command=["python3", "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(300)"],
                  stderr=True, stdout=True, stdin=False, tty=False, _preload_content=False)
    pid_text = ""
    deadline = time.monotonic() + 10
    while not pid_text.strip() and time.monotonic() < deadline:
        resp.update(timeout=1)
        pid_text += resp.read_stdout() or ""
    pid = int(pid_text.split()[0])
    cluster.stop()
    resp.close()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()


def test_missing_command_is_a_start_error(v1):
    add(v1, "nocmd", ["no-such-binary-dnstrace", "--help"])
    deadline = time.monotonic() + 10
    while (state_of(v1, "nocmd").get("state") or {}).get("waiting", {}).get("reason") != "RunContainerError":
        assert time.monotonic() < deadline, state_of(v1, "nocmd")
        time.sleep(0.1)
    status = state_of(v1, "nocmd")  # as the real kubelet: waiting for good, the error last
    term = status["lastState"]["terminated"]
    assert status["restartCount"] == 0 and status["state"]["waiting"]["message"] == term["message"]
    assert (term["exitCode"], term["reason"]) == (128, "StartError")
    assert term["message"].endswith('exec: "no-such-binary-dnstrace": executable file not found in $PATH: unknown')
