"""Refusals that need no simulated cluster: no kubeconfig, a closed port, a non-API server,
and the recorded API failure bodies translated into the user's errors.

A tiny HTTP server on loopback answers with the *recorded* responses of a real
kube-apiserver (tests/fixtures/k8s-api), and the real ``kubernetes`` client talks to it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubectl_dnstrace import cli
from kubectl_dnstrace.errors import (
    ClusterUnreachable,
    ExitCode,
    Forbidden,
    NotFound,
    PodSecurityDenied,
    Unsupported,
)
from kubectl_dnstrace.kube.client import Kube
from kubectl_dnstrace.model import ClusterOptions

FIXTURES = Path(__file__).parent / "fixtures" / "k8s-api"


class Replay(ThreadingHTTPServer):
    """Answers each (method, path) with a recorded response; 404 page for anything else."""

    daemon_threads = True

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, object]] = {}
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def add_fixture(self, name: str) -> dict:
        rec = json.loads((FIXTURES / name).read_text())
        self.routes[(rec["request"]["method"], rec["request"]["path"])] = (
            rec["response"]["status"], rec["response"]["body"])
        return rec

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?")[0]
        status, body = self.server.routes.get((self.command, path), (404, None))
        data = (json.dumps(body) if body is not None else "404 page not found\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body is not None else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def write_kubeconfig(path: Path, server: str, namespace: str | None = None) -> Path:
    ctx = {"cluster": "c", "user": "u"}
    if namespace:
        ctx["namespace"] = namespace
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "x", "context": ctx}],
        "current-context": "x",
    }))
    return path


@pytest.fixture
def replay():
    srv = Replay()
    srv.add_fixture("02-version.json")
    yield srv
    srv.shutdown()
    srv.server_close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_no_kubeconfig_is_cluster_unreachable_with_a_hint(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, out, err = run_cli(["pod/web-1"], capsys)
    assert code == ExitCode.CLUSTER_UNREACHABLE
    assert "no kubeconfig found" in err and "KUBECONFIG" in err
    assert "Traceback" not in err and out == ""


def test_input_mistakes_come_before_cluster_trouble(tmp_path, monkeypatch, capsys) -> None:
    """A wrong target or a file that is not a capture is named first, even with no cluster."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, _, err = run_cli(["foo/bar/baz"], capsys)
    assert code == ExitCode.USAGE and "cannot read the target 'foo/bar/baz'" in err
    text = tmp_path / "notes.txt"
    text.write_text("not a capture\n")
    code, _, err = run_cli(["analyze", str(text)], capsys)
    assert code == ExitCode.BAD_INPUT and "is not a pcap or pcapng capture file" in err


def test_closed_port_fails_within_seconds(tmp_path, capsys) -> None:
    kc = write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    code, _, err = run_cli(["pod/web-1", "--kubeconfig", str(kc)], capsys)
    took = time.monotonic() - t0
    assert code == ExitCode.CLUSTER_UNREACHABLE
    assert "cannot reach the Kubernetes API server" in err and "Traceback" not in err
    assert took < 5.0


def test_http_server_answering_404_is_not_an_api_server(tmp_path, capsys) -> None:
    srv = Replay()  # no routes at all: 404 to everything, /version included
    try:
        kc = write_kubeconfig(tmp_path / "kc", srv.url)
        code, _, err = run_cli(["coredns", "--kubeconfig", str(kc)], capsys)
    finally:
        srv.shutdown()
        srv.server_close()
    assert code == ExitCode.CLUSTER_UNREACHABLE
    assert "is not a Kubernetes API server" in err


def test_namespace_precedence_flag_then_context_then_default(tmp_path, replay) -> None:
    kc = write_kubeconfig(tmp_path / "kc", replay.url, namespace="ctx-ns")
    assert Kube.connect(ClusterOptions(kubeconfig=str(kc))).namespace == "ctx-ns"
    assert Kube.connect(ClusterOptions(kubeconfig=str(kc), namespace="flag")).namespace == "flag"
    kc2 = write_kubeconfig(tmp_path / "kc2", replay.url)
    assert Kube.connect(ClusterOptions(kubeconfig=str(kc2))).namespace == "default"


def test_kubeconfig_variable_is_read_at_connect(tmp_path, replay, monkeypatch) -> None:
    kc = write_kubeconfig(tmp_path / "kc", replay.url, namespace="from-env")
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'nothing'}:{kc}")
    kube = Kube.connect(ClusterOptions())
    assert kube.namespace == "from-env" and kube.version["major"] == "1"


@pytest.mark.parametrize(
    ("fixture", "exc", "words"),
    [
        ("36-devuser-patch-ephemeral-forbidden.json", Forbidden,
         ["you may not patch pods/ephemeralcontainers in namespace dnstrace-fx (RBAC)"]),
        ("45-psa-baseline-netraw-netadmin.json", PodSecurityDenied, ["enforce=baseline", "NET_RAW"]),
        ("46-psa-baseline-netraw-only.json", PodSecurityDenied, ["enforce=baseline"]),
        ("47-psa-baseline-privileged.json", PodSecurityDenied, ["enforce=baseline", "privileged"]),
        ("52-psa-restricted-netraw-netadmin.json", PodSecurityDenied, ["enforce=restricted"]),
        ("53-psa-restricted-netraw-only.json", PodSecurityDenied, ["enforce=restricted"]),
        ("54-psa-restricted-privileged.json", PodSecurityDenied, ["enforce=restricted"]),
        ("55-psa-restricted-root-nocaps.json", PodSecurityDenied, ["enforce=restricted"]),
        ("26-smp-nonexistent-pod.json", NotFound, ["pods 'does-not-exist' in namespace dnstrace-fx"]),
        ("27-smp-nonexistent-namespace.json", NotFound, ["pods 'web-1' in namespace no-such-ns"]),
    ],
)
def test_recorded_patch_refusals_are_translated(tmp_path, replay, fixture, exc, words) -> None:
    rec = replay.add_fixture(fixture)
    kc = write_kubeconfig(tmp_path / "kc", replay.url)
    kube = Kube.connect(ClusterOptions(kubeconfig=str(kc)))
    parts = rec["request"]["path"].split("/")
    ns, pod = parts[4], parts[6]
    with pytest.raises(exc) as info:
        kube.patch_ephemeral_containers(ns, pod, rec["request"]["body"])
    text = info.value.message.replace('"', "'")
    for w in words:
        assert w in text
    assert info.value.hint
    if exc is PodSecurityDenied:
        level = "restricted" if "restricted" in fixture else "baseline"
        assert info.value.psa_level == level
        if level == "restricted":
            assert "NET_RAW" in info.value.hint and "analyze" in info.value.hint


def test_404_without_a_name_on_the_subresource_is_unsupported(tmp_path, replay) -> None:
    # What a server without ephemeral containers answers (no details.name).
    replay.routes[("PATCH", "/api/v1/namespaces/shop/pods/web-1/ephemeralcontainers")] = (
        404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": "the server could not find the requested resource",
              "reason": "NotFound", "details": {}, "code": 404})
    kc = write_kubeconfig(tmp_path / "kc", replay.url)
    kube = Kube.connect(ClusterOptions(kubeconfig=str(kc)))
    with pytest.raises(Unsupported) as info:
        kube.patch_ephemeral_containers("shop", "web-1", {"spec": {"ephemeralContainers": []}})
    assert info.value.exit_code == ExitCode.UNSUPPORTED
    assert "ephemeral containers are unavailable" in info.value.message


def test_unreachable_is_reported_for_requests_after_connect(tmp_path, replay) -> None:
    kc = write_kubeconfig(tmp_path / "kc", replay.url)
    kube = Kube.connect(ClusterOptions(kubeconfig=str(kc)))
    replay.shutdown()
    replay.server_close()
    with pytest.raises(ClusterUnreachable):
        kube.get("pods", "web-1", "shop")


# ---- every refusal through the command line, against the simulated cluster -------------------------

from tests.kubesim import emitter_command, running_pod, sim_cluster  # noqa: E402


@pytest.fixture
def sim(tmp_path):
    with sim_cluster() as c:
        running_pod(c, "shop", "web-1")
        c.kubeconfig = c.write_kubeconfig(tmp_path / "kc", namespace="shop")
        yield c


def trace_cli(sim, capsys, *args: str) -> tuple[int, str, str]:
    return run_cli([*args, "--kubeconfig", str(sim.kubeconfig)], capsys)


def _ephemeral(sim) -> list[dict]:
    return sim.store.get("pods", "web-1", "shop")["spec"].get("ephemeralContainers") or []


@pytest.mark.parametrize(("verb", "sub"), [("patch", "ephemeralcontainers"), ("get", "log")])
def test_cli_rbac_denial_per_permission(sim, capsys, verb, sub) -> None:
    sim.faults.deny("admin", verb, "pods", sub, "shop")
    code, out, err = trace_cli(sim, capsys, "pod/web-1")
    assert code == ExitCode.FORBIDDEN
    assert f"you may not {verb} pods/{sub} in namespace shop" in err
    assert "Traceback" not in err and out == "" and _ephemeral(sim) == []


def test_cli_pod_security_restricted(sim, capsys) -> None:
    sim.set_psa("shop", enforce="restricted")
    code, _, err = trace_cli(sim, capsys, "pod/web-1")
    assert code == ExitCode.POD_SECURITY
    assert "restricted" in err and "NET_RAW" in err and "kubectl dnstrace analyze" in err
    assert _ephemeral(sim) == []


def test_cli_pod_security_baseline_uses_no_added_capabilities(sim, capsys) -> None:
    sim.set_psa("shop", enforce="baseline")
    code, out, err = trace_cli(sim, capsys, "pod/web-1", "--dry-run")
    assert code == 0
    [doc] = [json.loads(line) for line in out.splitlines()]
    sc = doc["patch"]["spec"]["ephemeralContainers"][0]["securityContext"]
    assert sc["runAsUser"] == 0 and "capabilities" not in sc and sc["privileged"] is False
    assert "baseline" in err and _ephemeral(sim) == []


def test_cli_no_ephemeral_support(sim, capsys) -> None:
    sim.faults.disable_ephemeral()
    code, _, err = trace_cli(sim, capsys, "pod/web-1")
    assert code == ExitCode.UNSUPPORTED
    assert "ephemeral containers are unavailable" in err


def test_cli_image_pull_failure(sim, capsys) -> None:
    # Not a python image, so the simulated kubelet cannot pull it (and never runs anything).
    code, _, err = trace_cli(sim, capsys, "pod/web-1", "--image", "registry.invalid/capture:nope",
                             "--timeout", "20s", "--duration", "5s")
    assert code == ExitCode.CONTAINER_FAILED
    assert "ErrImagePull" in err or "ImagePullBackOff" in err
    assert "--image" in err and "Traceback" not in err
    # The refused container stays in the spec; the user is told so.
    assert "Added ephemeral container dnstrace-" in err and len(_ephemeral(sim)) == 1


def test_cli_wait_timeout(sim, capsys) -> None:
    sim.faults.slow_start(30)
    t0 = time.monotonic()
    code, _, err = trace_cli(sim, capsys, "pod/web-1", "--timeout", "2s", "--duration", "3s")
    assert code == ExitCode.CONTAINER_FAILED and time.monotonic() - t0 < 20
    assert "did not start within the timeout" in err


@pytest.mark.parametrize(("args", "words"), [
    (["pod/nope"], "pod 'nope' not found in namespace shop"),
    (["pod/web-1", "-n", "no-such-ns"], "namespace 'no-such-ns' not found"),
    (["deploy/nope"], "deployment 'nope' not found in namespace shop"),
])
def test_cli_not_found(sim, capsys, args, words) -> None:
    code, _, err = trace_cli(sim, capsys, *args)
    assert code == ExitCode.NOT_FOUND
    assert words in err


@pytest.mark.parametrize("target", ["foo/bar/baz", "svc/kube-dns"])
def test_cli_bad_target_syntax(sim, capsys, target) -> None:
    code, _, err = trace_cli(sim, capsys, target)
    assert code == ExitCode.USAGE
    assert "valid targets: coredns | dns | pod/NAME" in err


def test_cli_agent_error_exits_with_its_message(sim, capsys, monkeypatch) -> None:
    """A capture container that reports an error record and exits non-zero."""
    import kubectl_dnstrace.trace as trace_mod
    from kubectl_dnstrace.kube.ephemeral import CaptureSpec

    records = [{"type": "hello", "seq": 0, "agent_version": "t", "protocol": 1,
                "interfaces": [], "filters": {}},
               {"type": "error", "seq": 1, "message": "cannot capture: Operation not permitted"},
               {"type": "bye", "seq": 2, "reason": "error"}]

    def spec(req, run_id, user):
        return CaptureSpec(run_id, "docker.io/library/python:3.13-alpine",
                           emitter_command(records, delay=0.3, exit_code=1))

    monkeypatch.setattr(trace_mod, "capture_spec", spec)
    code, _, err = trace_cli(sim, capsys, "pod/web-1", "-o", "ndjson")
    assert code == ExitCode.AGENT_FAILED
    assert "the capture agent in shop/web-1 failed: cannot capture: Operation not permitted" in err
    assert "CAP_NET_RAW" in err and "Traceback" not in err


def test_cli_agent_aggregates_reach_the_summary(sim, capsys, monkeypatch) -> None:
    """Above its record rate the agent sends per-second counts: they are counted, attributed
    and summed in the summary, with one notice per pod, not one per second."""
    import kubectl_dnstrace.trace as trace_mod
    from kubectl_dnstrace.kube.ephemeral import CaptureSpec

    def agg(seq: int, count: int) -> dict:
        return {"type": "agg", "seq": seq, "ts": 1795699420.0 + seq, "interval": 1.0,
                "threshold": 2000, "total": count,
                "groups": [{"client": "10.244.9.9", "qname": "evil.example.com", "qtype": "A",
                            "rcode": None, "count": count}]}

    records = [{"type": "hello", "seq": 0, "agent_version": "t", "protocol": 1,
                "interfaces": ["eth0"], "filters": {}},
               agg(1, 2500), agg(2, 3100),
               {"type": "bye", "seq": 3, "reason": "deadline"}]

    def spec(req, run_id, user):
        return CaptureSpec(run_id, "docker.io/library/python:3.13-alpine",
                           emitter_command(records, delay=0.2))

    monkeypatch.setattr(trace_mod, "capture_spec", spec)
    code, out, err = trace_cli(sim, capsys, "pod/web-1", "-o", "json")
    assert code == ExitCode.MATCHED, err
    report = json.loads(out)
    [row] = report["summary"]
    assert row["client"]["ips"] == ["10.244.9.9"] and row["client"]["kind"] == "unknown"
    assert row["count"] == 5600
    assert row["names"][0]["name"] == "evil.example.com"
    assert err.count("per-second counts") == 1


# ---- the Kube contract the other modules build on ------------------------------------------------

from kubectl_dnstrace.kube.client import KINDS, resource_path  # noqa: E402


def test_kinds_table_maps_to_api_paths() -> None:
    assert resource_path("pods", "shop", "web-1", "ephemeralcontainers") == \
        "/api/v1/namespaces/shop/pods/web-1/ephemeralcontainers"
    assert resource_path("pods") == "/api/v1/pods"  # all namespaces
    assert resource_path("nodes", "ignored", "node-a") == "/api/v1/nodes/node-a"
    assert resource_path("deployments", "shop", "web") == "/apis/apps/v1/namespaces/shop/deployments/web"
    assert resource_path("cronjobs", "batch") == "/apis/batch/v1/namespaces/batch/cronjobs"
    for kind in ("pods", "nodes", "services", "endpoints", "namespaces", "replicasets",
                 "deployments", "daemonsets", "statefulsets", "jobs", "cronjobs"):
        assert kind in KINDS


def test_get_list_watch_and_clone_return_plain_dicts(sim, tmp_path) -> None:
    kube = Kube.connect(ClusterOptions(kubeconfig=str(sim.kubeconfig)))
    pod = kube.get("pods", "web-1")  # the context's namespace
    assert isinstance(pod, dict) and pod["metadata"]["namespace"] == "shop"
    items, rv = kube.list("pods", None, label_selector=None)
    assert [p["metadata"]["name"] for p in items] == ["web-1"] and rv
    running_pod(sim, "shop", "web-2", {"app": "x"})
    events = list(kube.clone().watch("pods", "shop", resource_version=rv, timeout_seconds=1))
    assert ("ADDED", "web-2") in [(t, o["metadata"].get("name")) for t, o in events]
    items, _ = kube.list("pods", "shop", label_selector="app=x")
    assert [p["metadata"]["name"] for p in items] == ["web-2"]
    items, _ = kube.list("pods", "shop", field_selector="metadata.name=web-1")
    assert [p["metadata"]["name"] for p in items] == ["web-1"]


def test_unknown_context_is_a_kubeconfig_error(tmp_path, replay, capsys) -> None:
    kc = write_kubeconfig(tmp_path / "kc", replay.url)
    code, _, err = run_cli(["pod/web-1", "--kubeconfig", str(kc), "--context", "nope"], capsys)
    assert code == ExitCode.CLUSTER_UNREACHABLE
    assert "cannot use the kubeconfig" in err and "--context" in err and "Traceback" not in err


def test_failure_on_one_pod_stops_the_agents_already_running(sim, capsys, monkeypatch) -> None:
    """web-2's node has no kubelet, so its container never starts; web-1's agent runs and
    must be asked to stop (exec) when the run gives up."""
    import kubectl_dnstrace.trace as trace_mod
    from kubectl_dnstrace.kube.ephemeral import CaptureSpec
    from kubectl_dnstrace.kube.stop import stop_file_path

    sim.add_node("node-b", internal_ip="10.123.0.2", kubelet=False)
    running_pod(sim, "shop", "web-2", node="node-b", ip="10.244.1.10")

    def spec(req, run_id, user):
        # Stands in for the agent: reports, then waits for the stop file like the agent does.
        path = stop_file_path(run_id)
        program = (
            "import json,os,sys,time\n"
            "print(json.dumps({'type':'hello','seq':0,'agent_version':'t','protocol':1,"
            "'interfaces':[],'filters':{}}),flush=True)\n"
            f"end=time.time()+60\n"
            f"while time.time()<end and not os.path.exists({path!r}): time.sleep(0.1)\n"
            f"os.path.exists({path!r}) and os.unlink({path!r})\n"
            "print(json.dumps({'type':'bye','seq':1,'reason':'stop-file'}),flush=True)\n"
        )
        return CaptureSpec(run_id, "docker.io/library/python:3.13-alpine",
                           ["python3", "-c", program])

    monkeypatch.setattr(trace_mod, "capture_spec", spec)
    t0 = time.monotonic()
    code, _, err = trace_cli(sim, capsys, "pod/web-1", "pod/web-2", "--timeout", "3s",
                             "--duration", "60s")
    assert code == ExitCode.CONTAINER_FAILED, err
    assert "in shop/web-2 did not start within the timeout" in err
    assert "asked 1 agent(s) to stop (pods/exec)" in err
    assert "not started yet: shop/web-2" in err
    assert time.monotonic() - t0 < 30
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pod = sim.store.get("pods", "web-1", "shop")
        states = [s["state"] for s in pod["status"].get("ephemeralContainerStatuses") or []]
        if states and "terminated" in states[0]:
            break
        time.sleep(0.2)
    assert states and "terminated" in states[0], states


def test_black_holed_server_fails_within_seconds(tmp_path, capsys) -> None:
    """A listener whose accept queue is full drops new SYNs: a black hole, on loopback."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    try:
        kc = write_kubeconfig(tmp_path / "kc", f"https://127.0.0.1:{port}")
        t0 = time.monotonic()
        code, _, err = run_cli(["pod/web-1", "--kubeconfig", str(kc)], capsys)
        took = time.monotonic() - t0
    finally:
        for s in fillers:
            s.close()
        srv.close()
    assert code == ExitCode.CLUSTER_UNREACHABLE
    assert "cannot reach the Kubernetes API server" in err and "timed out" in err
    assert "HTTPSConnection" not in err  # the human part of the error only
    assert took < 7.0


@pytest.mark.parametrize("text", ["clusters: [\n  - {name: c", "just a string", "contexts: 5\n"])
def test_broken_kubeconfig_is_explained(tmp_path, capsys, text) -> None:
    kc = tmp_path / "kc"
    kc.write_text(text)
    code, _, err = run_cli(["pod/web-1", "--kubeconfig", str(kc)], capsys)
    assert code == ExitCode.CLUSTER_UNREACHABLE, err
    assert "kubeconfig" in err and "Traceback" not in err and "internal error" not in err


def test_the_printed_least_privilege_role_is_enough_for_a_trace(sim, capsys, monkeypatch,
                                                                tmp_path) -> None:
    """`kubectl dnstrace rbac -n shop` applied for dev-user: the whole trace runs, stops its
    agent through exec, and attribution covers shop's pods (not every namespace's)."""
    import yaml

    import kubectl_dnstrace.trace as trace_mod
    from kubectl_dnstrace.kube.ephemeral import CaptureSpec
    from kubectl_dnstrace.kube.stop import stop_file_path
    from kubectl_dnstrace.rbac import render_rbac

    for doc in yaml.safe_load_all(render_rbac(cluster=False, namespace="shop", user="dev-user")):
        if doc:
            sim.store.create(doc)
    sim.users.add("dev-user")
    kc = sim.write_kubeconfig(tmp_path / "kc-dev", user="dev-user", namespace="shop")

    def spec(req, run_id, user):
        path = stop_file_path(run_id)
        program = (
            "import json,os,time\n"
            "print(json.dumps({'type':'hello','seq':0,'agent_version':'t','protocol':1,"
            "'interfaces':[],'filters':{}}),flush=True)\n"
            f"end=time.time()+30\n"
            f"while time.time()<end and not os.path.exists({path!r}): time.sleep(0.1)\n"
            "print(json.dumps({'type':'bye','seq':1,'reason':'stop-file'}),flush=True)\n"
        )
        return CaptureSpec(run_id, "docker.io/library/python:3.13-alpine",
                           ["python3", "-c", program], user=user)

    monkeypatch.setattr(trace_mod, "capture_spec", spec)
    # A trace cut short: the deadline is long, so Ctrl-C-like stopping must go through exec.
    monkeypatch.setattr(trace_mod, "DEADLINE_GRACE", 0.0)
    code, out, err = run_cli(["pod/web-1", "--kubeconfig", str(kc), "-o", "json",
                              "--duration", "2s"], capsys)
    assert code == ExitCode.NO_MATCH, err  # ran cleanly, the stand-in saw nothing
    assert "error:" not in err and "Traceback" not in err
    assert "asked 1 agent(s) to stop (pods/exec)" in err
    # What a namespace Role cannot give, said plainly (the hint offers --cluster): pods are
    # listed in shop alone, and attribution covers those.
    assert ("you may not list pods in every namespace: client attribution covers the pods "
            "of shop only; clients in other namespaces show as unknown addresses") in err
    assert "`kubectl dnstrace rbac --cluster` grants what attribution reads" in err
    assert "client attribution is off" not in err
    assert json.loads(out)["meta"]["attribution"] == "namespaces shop"
