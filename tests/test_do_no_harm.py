"""Do no harm: a usage error, a full pod, a pod another trace is in, an API that pushes back.

Against the simulated API server (real HTTP, the real ``kubernetes`` client, the plugin's
own ``main``), each refusal is asserted by what reached the server: no write request at
all when the answer is "no". The 429 and etcd answers come from a small server that answers
like the real kube-apiserver (bodies and headers as the real one sends them).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubectl_dnstrace import cli
from kubectl_dnstrace.errors import ApiBusy, ExitCode, PodTooLarge
from kubectl_dnstrace.kube.client import Kube
from kubectl_dnstrace.kube.podguard import ETCD_LIMIT, HEADROOM
from kubectl_dnstrace.model import ClusterOptions
from tests.lab.cluster import SimCluster

WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def pod(name: str, ephemeral: list[dict] | None = None, statuses: list[dict] | None = None,
        annotations: dict | None = None) -> dict:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}, "annotations": annotations or {}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "nginx:1.27"}],
                 "ephemeralContainers": ephemeral or []},
        "status": {"phase": "Running", "podIP": "10.244.0.9",
                   "ephemeralContainerStatuses": statuses or []},
    }


@pytest.fixture
def sim(tmp_path):
    """A cluster whose node runs no kubelet: nothing starts, the pod statuses stay as set."""
    with SimCluster() as c:
        c.add_node("node-a", kubelet=False)
        c.store.ensure_namespace("shop")
        c.store.create(pod("web-1"), namespace="shop")
        c.kubeconfig = str(c.write_kubeconfig(tmp_path / "kc", namespace="shop"))
        yield c


def run(sim, *args: str, capsys) -> tuple[int, str]:
    code = cli.main([*args, "--kubeconfig", sim.kubeconfig])
    return code, capsys.readouterr().err


def writes(sim) -> list[dict]:
    """Write requests, self-subject reviews (questions, not changes) left out."""
    return [r for r in sim.requests if r["method"] in WRITES
            and "selfsubject" not in r["path"]]


@pytest.mark.parametrize("bad", [
    ["--qtype", "BOGUS"],
    ["--rcode", "BOGUS"],
    ["--image", "Not An Image"],
    ["--image", ""],
    ["--image-pull-policy", "Sometimes"],
    ["--duration", "0"],
    ["--timeout", "soon"],
    ["--domain", "bad..name"],
    ["-o", "yaml"],
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_usage_error_changes_nothing_and_says_so_first(sim, capsys, bad, dry_run):
    args = ["pod/web-1", *bad] + (["--dry-run"] if dry_run else [])
    code, err = run(sim, *args, capsys=capsys)
    assert code == ExitCode.USAGE, err
    assert "Traceback" not in err and "report it" not in err
    assert sim.requests == []  # not even a read: flags are checked before connecting
    assert not sim.store.get("pods", "web-1", "shop")["spec"].get("ephemeralContainers")


def test_a_pod_near_etcds_limit_is_refused_before_any_change(sim, capsys):
    # Earlier traces of the old kind (the whole program in the command) filled the pod.
    old = [{"name": f"dnstrace-{i:06x}", "image": "python:3.13-alpine",
            "command": ["python3", "-c", "x" * 24_000]} for i in range(60)]
    sim.store.create(pod("web-full", old), namespace="shop")
    base = len(json.dumps(sim.store.get("pods", "web-full", "shop"), separators=(",", ":")))

    def pad(obj: dict) -> dict:  # to 800 bytes short of the margin: one more trace crosses it
        obj["metadata"]["annotations"] = {"note": "x" * (ETCD_LIMIT - HEADROOM - 800 - base - 20)}
        return obj

    sim.store.mutate("pods", "web-full", "shop", pad)
    size = len(json.dumps(sim.store.get("pods", "web-full", "shop"), separators=(",", ":")))
    assert ETCD_LIMIT - HEADROOM - 1500 < size < ETCD_LIMIT - HEADROOM, size
    code, err = run(sim, "pod/web-full", "pod/web-1", "--duration", "5s", capsys=capsys)
    assert code == ExitCode.POD_TOO_LARGE, err
    assert "pod shop/web-full is 1" in err and "etcd" in err and "nothing was changed" in err
    assert "rollout restart" in err
    assert writes(sim) == []  # web-1 had room, but nothing is added to any pod


def test_a_pod_another_trace_runs_in_is_refused_unless_forced(sim, capsys):
    other = {"name": "dnstrace-abc123", "image": "python:3.13-alpine", "command": ["python3"],
             "env": [{"name": "DNSTRACE_USER", "value": "alice"}]}
    running = {"name": "dnstrace-abc123", "state": {"running": {"startedAt": "2026-12-07T02:00:00Z"}}}
    done = {"name": "dnstrace-000001", "state": {"terminated": {"exitCode": 0}}}
    sim.store.create(pod("web-2", [other, {**other, "name": "dnstrace-000001"}], [running, done]),
                     namespace="shop")
    code, err = run(sim, "pod/web-2", "--duration", "5s", capsys=capsys)
    assert code == ExitCode.ALREADY_TRACED, err
    assert "waiting up to 12s in case it is just ending" in err  # the kubelet reports late
    assert "dnstrace-abc123 (running since 2026-12-07T02:00:00Z by alice)" in err
    assert "dnstrace-000001" not in err  # an ended trace is no concern
    assert "--force" in err and writes(sim) == []
    # --force runs both: the container is added (here it never starts: no kubelet).
    code, err = run(sim, "pod/web-2", "--duration", "5s", "--timeout", "1s", "--force",
                    capsys=capsys)
    assert "another trace is running" in err and "--force: tracing anyway" in err
    assert [r["path"] for r in writes(sim)] == ["/api/v1/namespaces/shop/pods/web-2/ephemeralcontainers"]
    assert code == ExitCode.CONTAINER_FAILED, err


def test_dry_run_shows_the_bootstrap_and_its_size(sim, capsys):
    code = cli.main(["pod/web-1", "--domain", "evil.example.com", "--dry-run",
                     "--kubeconfig", sim.kubeconfig])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    [container] = json.loads(captured.out)["patch"]["spec"]["ephemeralContainers"]
    assert container["stdin"] is True and container["stdinOnce"] is True
    assert container["command"][:2] == ["python3", "-c"]
    assert "sys.stdin.buffer.read(" in container["command"][2]
    assert len(json.dumps(container, separators=(",", ":"))) < 1_500
    assert writes(sim) == []


# ---- an API server that pushes back ----------------------------------------------------------

class Pushback(ThreadingHTTPServer):
    """Answers GET /version, then the scripted answers for every other request in turn."""

    daemon_threads = True

    def __init__(self, answers: list[tuple[int, dict, dict]]) -> None:
        self.answers = list(answers)
        self.seen: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/version":
            status, headers, body = 200, {}, {"gitVersion": "v1.35.0", "major": "1", "minor": "35"}
        else:
            self.server.seen.append(f"{self.command} {self.path}")
            status, headers, body = self.server.answers.pop(0) if self.server.answers else (
                200, {}, {"kind": "Pod", "metadata": {"name": "web-1"}})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


# As kube-apiserver's API Priority and Fairness rejects a request (body and headers).
TOO_MANY = (429, {"Retry-After": "2"}, {
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
    "message": "Too many requests, please try again later.", "reason": "TooManyRequests",
    "details": {"retryAfterSeconds": 2}, "code": 429})
# As the real 1.35 server answered a patch that took a pod past etcd's limit.
TOO_LARGE = (500, {}, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "etcdserver: request is too large", "code": 500})


def connect(server: Pushback, tmp_path: Path) -> tuple[Kube, list[str], list[float]]:
    kc = tmp_path / "kc"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    kube = Kube.connect(ClusterOptions(kubeconfig=str(kc)))
    notices: list[str] = []
    waits: list[float] = []
    kube.on_notice = notices.append
    kube.sleep = waits.append
    return kube, notices, waits


def test_429_is_retried_after_retry_after_and_said(tmp_path):
    server = Pushback([TOO_MANY, TOO_MANY])
    kube, notices, waits = connect(server, tmp_path)
    assert kube.get("pods", "web-1", "shop")["metadata"]["name"] == "web-1"
    assert waits == [2.0, 2.0]
    assert len(server.seen) == 3
    assert "busy (429 Too Many Requests) for get pods in namespace shop: retrying in 2s" in notices[0]


def test_429_that_never_ends_is_its_own_error(tmp_path):
    server = Pushback([TOO_MANY] * 20)
    kube, _notices, waits = connect(server, tmp_path)
    with pytest.raises(ApiBusy) as info:
        kube.get("pods", "web-1", "shop")
    assert info.value.exit_code == ExitCode.API_BUSY
    assert "429 Too Many Requests" in info.value.message and "flowschemas" in info.value.hint
    assert sum(waits) <= 40 and len(server.seen) == len(waits) + 1 <= 6


def test_etcd_request_too_large_is_its_own_error(tmp_path):
    server = Pushback([TOO_LARGE])
    kube, _, _ = connect(server, tmp_path)
    with pytest.raises(PodTooLarge) as info:
        kube.patch_ephemeral_containers("shop", "web-1", {"spec": {"ephemeralContainers": []}})
    assert info.value.exit_code == ExitCode.POD_TOO_LARGE
    assert "too large for etcd" in info.value.message and "status updates" in info.value.hint


def test_a_trace_that_is_just_ending_does_not_block_the_next(sim, capsys):
    """The kubelet reports a container's end seconds late: a back-to-back trace waits."""
    other = {"name": "dnstrace-abc123", "image": "python:3.13-alpine", "command": ["python3"]}
    running = {"name": "dnstrace-abc123", "state": {"running": {"startedAt": "2026-12-07T02:00:00Z"}}}
    sim.store.create(pod("web-3", [other], [running]), namespace="shop")

    def ends(obj: dict) -> dict:
        obj["status"]["ephemeralContainerStatuses"] = [
            {"name": "dnstrace-abc123", "state": {"terminated": {"exitCode": 0}}}]
        return obj

    threading.Timer(2.0, lambda: sim.store.mutate("pods", "web-3", "shop", ends)).start()
    code, err = run(sim, "pod/web-3", "--duration", "5s", "--timeout", "1s", capsys=capsys)
    assert "in case it is just ending" in err and "another trace is running" not in err
    assert code == ExitCode.CONTAINER_FAILED, err  # added; it never starts here (no kubelet)
    assert [r["path"] for r in writes(sim)] == ["/api/v1/namespaces/shop/pods/web-3/ephemeralcontainers"]
