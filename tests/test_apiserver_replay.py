"""Replay the request/response pairs recorded from a real kube-apiserver against the simulator.

The top-level fixtures (02–59) were recorded as one session: the requests themselves build
the state (fake node, namespaces, pods, Role/RoleBinding, ServiceAccount), so they are sent
again in order, over real HTTP, with the recorded identity's bearer token. A recorded
resourceVersion in a request body is translated to the simulator's own through the
responses seen so far. Compared: status code, Status bodies (kind, reason, code, details,
message — exact, except the Go ``cmp.Diff`` text after the first line of 18 and 25), object
bodies field by field after dropping server-generated values (uid, resourceVersion,
timestamps, managedFields) and what the ServiceAccount admission plugin injects
(the kube-api-access volume and its mounts, not simulated). Warning headers are exact.
The all-namespaces watch opened before the session must see the recorded event sequence.

live/ and live-psa/ (a real kubelet + containerd) are replayed with the simulated kubelet
running the ephemeral containers for real, each pod in its own network namespace: status
transitions, the kubelet's 400s, tcpdump's banner and its EPERM under the restricted profile.
What is not replayed, and why, is listed in NOT_REPLAYED and LIVE_NOT_REPLAYED.
"""

from __future__ import annotations

import copy
import http.client
import json
import re
import ssl
import threading
import time
from pathlib import Path

import pytest

from tests.lab.cluster import SimCluster

FIX = Path(__file__).parent / "fixtures" / "k8s-api"

NOT_REPLAYED = {
    "01-discovery-core-v1.json": "discovery is compared as a subset in test_discovery_lists_recorded_pod_resources "
                                 "(the simulator serves fewer core resources than a real server)",
}

IDENTITY_USERS = {
    "client cert CN=admin O=system:masters": "admin",
    "client cert CN=dev-user O=dev-group": "dev-user",
    "serviceaccount bearer token (redacted)": "system:serviceaccount:dnstrace-fx:limited-sa",
}
DIFF_MESSAGES = {"18-smp-modify-existing.json", "25-patch-pod-spec-directly.json"}
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "managedFields")


def normalize(obj):
    """Drop server-generated values and service-account admission output."""
    obj = copy.deepcopy(obj)
    if not isinstance(obj, dict):
        return obj
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for key in SERVER_FIELDS:
            meta.pop(key, None)
    spec = obj.get("spec")
    if obj.get("kind") == "Pod" and isinstance(spec, dict):
        spec.pop("volumes", None)
        for key in ("containers", "initContainers"):
            for c in spec.get(key) or []:
                c.pop("volumeMounts", None)
    if obj.get("kind") == "PodList":
        obj["items"] = [normalize({"kind": "Pod", **i}) for i in obj.get("items") or []]
        for item in obj["items"]:
            del item["kind"]
    if obj.get("kind") == "ServiceAccount":
        obj.pop("secrets", None)
    return obj


def diff_paths(want, got, path="") -> list[str]:
    """Where two JSON values differ (empty when equal)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got)):
            if k not in got:
                out.append(f"{path}.{k}: missing")
            elif k not in want:
                out.append(f"{path}.{k}: unexpected {json.dumps(got[k])[:80]}")
            else:
                out += diff_paths(want[k], got[k], f"{path}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for i, (a, b) in enumerate(zip(want, got, strict=True)) for d in diff_paths(a, b, f"{path}[{i}]")]
    return [] if want == got else [f"{path}: want {json.dumps(want)[:120]} got {json.dumps(got)[:120]}"]


class Wire:
    """Raw HTTP to the simulator, like the recorder's python-requests session."""

    def __init__(self, cluster: SimCluster):
        self.cluster = cluster
        scheme, rest = cluster.url.split("://")
        host, port = rest.split(":")
        self.host, self.port = host, int(port)
        self.ssl = None
        if scheme == "https":
            self.ssl = ssl.create_default_context(cadata=cluster.ca_pem.decode())

    def connect(self) -> http.client.HTTPConnection:
        if self.ssl:
            return http.client.HTTPSConnection(self.host, self.port, timeout=30, context=self.ssl)
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def send(self, method: str, path: str, query: dict, user: str, headers: dict, body):
        conn = self.connect()
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        hdrs = {k: v for k, v in headers.items() if k in ("Accept", "Content-Type")}
        hdrs["Authorization"] = f"Bearer {self.cluster.token(user)}"
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path + ("?" + qs if qs else ""), body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        ctype = resp.getheader("Content-Type", "")
        parsed = json.loads(raw) if raw and ctype.startswith("application/json") else raw.decode()
        return resp.status, resp.getheaders(), parsed


def translate_rv(body, rv_map: dict):
    if isinstance(body, dict) and isinstance(body.get("metadata"), dict) and "resourceVersion" in body["metadata"]:
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = rv_map.get(body["metadata"]["resourceVersion"], "0")
    return body


def compare(name: str, rec: dict, status: int, headers, body) -> list[str]:
    want = rec["response"]
    problems = []
    if status != want["status"]:
        problems.append(f"status {status} != recorded {want['status']}: {json.dumps(body)[:300]}")
        return problems
    wbody = want["body"]
    if name == "02-version.json":  # the values name the build; the shape must match
        problems += diff_paths(sorted(wbody), sorted(body))
    elif isinstance(wbody, dict) and wbody.get("kind") == "Status":
        wb, gb = dict(wbody), dict(body)
        if name in DIFF_MESSAGES:
            wb["message"] = wb["message"].split("\n", 1)[0]
            gb["message"] = gb["message"].split("\n", 1)[0]
            for c in wb.get("details", {}).get("causes", []) + gb.get("details", {}).get("causes", []):
                c["message"] = c["message"].split("\n", 1)[0]
        problems += diff_paths(wb, gb)
    elif isinstance(wbody, dict):
        problems += diff_paths(normalize(wbody), normalize(body))
    want_warn = want["headers"].get("Warning")
    got_warn = [v for k, v in headers if k.lower() == "warning"]
    if want_warn and got_warn != [want_warn]:
        problems.append(f"Warning header {got_warn} != recorded {want_warn!r}")
    if not want_warn and got_warn:
        problems.append(f"unexpected Warning header {got_warn}")
    return problems


def top_level_fixtures() -> list[Path]:
    return sorted(p for p in FIX.glob("[0-9][0-9]-*.json") if p.name not in NOT_REPLAYED)


def open_watch(wire: Wire, events: list, full: bool = False) -> threading.Thread:
    conn = wire.connect()
    conn.request("GET", "/api/v1/pods?watch=true&allowWatchBookmarks=true&resourceVersion="
                 + wire.cluster.store.resource_version,
                 headers={"Authorization": f"Bearer {wire.cluster.token('admin')}"})
    resp = conn.getresponse()
    assert resp.status == 200

    def reader() -> None:
        for line in resp:
            ev = json.loads(line)
            if ev["type"] != "BOOKMARK":
                meta = ev["object"]["metadata"]
                events.append(ev if full else (ev["type"], meta["namespace"], meta["name"]))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


def test_replay_recorded_session():
    """Every top-level recorded pair, in order, against one simulated cluster."""
    with SimCluster() as cluster:
        cluster.kubelet.nodes_without_kubelet.add("fake-node-1")  # as recorded: no kubelet behind it
        wire = Wire(cluster)
        events: list = []
        watch_reader = open_watch(wire, events)
        rv_map: dict[str, str] = {}
        failures = {}
        replayed = 0
        for path in top_level_fixtures():
            rec = json.loads(path.read_text())
            req = rec["request"]
            user = IDENTITY_USERS[req["identity"]]
            status, headers, body = wire.send(req["method"], req["path"], req["query"], user, req["headers"],
                                              translate_rv(req["body"], rv_map))
            wbody = rec["response"]["body"]
            if isinstance(wbody, dict) and isinstance(body, dict):
                wrv = (wbody.get("metadata") or {}).get("resourceVersion")
                grv = (body.get("metadata") or {}).get("resourceVersion")
                if wrv and grv:
                    rv_map[wrv] = grv
            problems = compare(path.name, rec, status, headers, body)
            if problems:
                failures[path.name] = problems
            replayed += 1
        time.sleep(0.3)
    watch_reader.join(timeout=10)  # stopping the cluster ends the watch stream cleanly
    assert not failures, json.dumps(failures, indent=1)
    assert replayed >= 55

    recorded = []
    for line in (FIX / "watch-pods-all-namespaces.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if "_meta" not in ev:
            meta = ev["object"]["metadata"]
            recorded.append((ev["type"], meta["namespace"], meta["name"]))
    # The recording's last event is the label patch its recorder used to end the watch.
    assert events == recorded[:-1]


def test_discovery_lists_recorded_pod_resources():
    """/api/v1 has the pod subresources with the verbs the real server advertises."""
    rec = json.loads((FIX / "01-discovery-core-v1.json").read_text())
    want = {r["name"]: r for r in rec["response"]["body"]["resources"]}
    with SimCluster() as cluster:
        status, _, body = Wire(cluster).send("GET", "/api/v1", {}, "admin", {"Accept": "application/json"}, None)
    assert status == 200 and body["kind"] == "APIResourceList" and body["groupVersion"] == "v1"
    got = {r["name"]: r for r in body["resources"]}
    for name in ("pods", "pods/ephemeralcontainers", "pods/log", "pods/exec", "pods/status", "namespaces",
                 "nodes", "services", "endpoints", "serviceaccounts"):
        for key in ("namespaced", "kind", "verbs"):
            assert got[name][key] == want[name][key], (name, key)


@pytest.mark.parametrize("fixture", ["02-version.json"])
def test_version_shape(fixture):
    rec = json.loads((FIX / fixture).read_text())
    with SimCluster() as cluster:
        status, _, body = Wire(cluster).send("GET", "/version", {}, "admin", {}, None)
    assert status == 200 and set(body) == set(rec["response"]["body"])


# -- live/: the same API server with a real kubelet and containerd ----------------------------

LIVE_NOT_REPLAYED = {
    "live/02-get-dns-pod-running.json": "regular containers are not run by the simulated kubelet: the scenario "
                                        "runs their workload and writes their status (injected here from this file)",
    "live/09-log-client.json": "log of a regular container: its text comes from the scenario's workload",
    "live/10-log-dnsmasq.json": "log of a regular container: its text comes from the scenario's workload",
}
VOLATILE = ("startedAt", "finishedAt", "containerID", "imageID", "lastTransitionTime", "startTime")


def blank_volatile(value):
    """Replace values that name a moment or a runtime id with a marker (kept when empty)."""
    if isinstance(value, dict):
        return {k: ("*" if k in VOLATILE and v else blank_volatile(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [blank_volatile(v) for v in value]
    return value


def ephemeral_statuses(body: dict) -> list:
    return blank_volatile((body.get("status") or {}).get("ephemeralContainerStatuses") or [])


def wait_for_statuses(wire: Wire, path: str, want: list, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        _, _, body = wire.send("GET", path, {}, "admin", {"Accept": "application/json"}, None)
        if ephemeral_statuses(body) == want or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def state_sequences(events: list) -> dict[str, list[tuple[str, str]]]:
    """Per ephemeral container, the distinct (state, reason) steps a watch showed."""
    out: dict[str, list[tuple[str, str]]] = {}
    for ev in events:
        for s in (ev["object"].get("status") or {}).get("ephemeralContainerStatuses") or []:
            state = next(iter(s["state"]))
            step = (state, s["state"][state].get("reason", ""))
            steps = out.setdefault(s["name"], [])
            if not steps or steps[-1] != step:
                steps.append(step)
    return out


def test_replay_live_session(lab):
    """live/*.json in order: ephemeral containers really run (tcpdump in a pod netns)."""
    records = sorted(FIX.glob("live/[0-9][0-9]-*.json"))
    events: list = []
    with SimCluster() as cluster:
        cluster.add_node("rk8s-node", internal_ip="10.123.0.1")
        cluster.kubelet.provide_image("dnstrace-agent:test")  # present on the node, like the recording's
        cluster.faults.slow_start(2.0)  # requests "right after the PATCH" see ContainerCreating
        wire = Wire(cluster)
        watch_reader = open_watch(wire, events, full=True)
        failures: dict[str, list[str]] = {}
        replayed = []
        for path in records:
            name = f"live/{path.name}"
            rec = json.loads(path.read_text())
            req, want = rec["request"], rec["response"]
            if name in LIVE_NOT_REPLAYED:
                if name == "live/02-get-dns-pod-running.json":
                    running = want["body"]["status"]
                    cluster.store.mutate("pods", "dns-server", "kube-system", lambda p, s=running: {**p, "status": s})
                continue
            if name.endswith(("01-create-dns-pod.json", "06-create-client-pod.json")):
                ns = lab.netns(req["body"]["metadata"]["name"])
                pod_name = req["body"]["metadata"]["name"]
                cluster.kubelet.register_pod_netns(req["path"].split("/")[4], pod_name, ns.name)
            if req["method"] == "GET" and isinstance(want["body"], dict) and want["body"].get("kind") == "Pod":
                wait_for_statuses(wire, req["path"], ephemeral_statuses(want["body"]))
            status, headers, body = wire.send(req["method"], req["path"], req["query"], "admin", req["headers"],
                                              req["body"])
            replayed.append(name)
            if isinstance(want["body"], str):
                problems = [] if status == want["status"] else [f"status {status} != {want['status']}"]
                if name.endswith("16-log-ephemeral-terminated.json") and body != want["body"]:
                    problems.append(f"log {body!r} != {want['body']!r}")
                if name.endswith("07-log-ephemeral-tcpdump.json"):
                    banner = want["body"].splitlines()[:3]
                    if body.splitlines()[:3] != banner:
                        problems.append(f"tcpdump banner {body.splitlines()[:3]} != {banner}")
                if name.endswith("08-log-ephemeral-tcpdump-timestamps-tail.json"):
                    lines = body.splitlines()
                    if not lines or len(lines) > 5 or not all(re.match(r"^\S+Z ", ln) for ln in lines):
                        problems.append(f"timestamped tail {lines}")
            else:
                # The recorder labelled the pod (fixture-run) between 15 and 18 to end its watch.
                ((want["body"].get("metadata") or {}).get("labels") or {}).pop("fixture-run", None)
                problems = compare(name, rec, status, headers, body)
                if want["body"].get("kind") == "Pod" and isinstance(body, dict) and body.get("status"):
                    problems = [p for p in problems if not p.startswith(".status")]
                    problems += diff_paths(want["body"]["status"].get("observedGeneration"),
                                           body["status"].get("observedGeneration"), ".status.observedGeneration")
                    problems += diff_paths(ephemeral_statuses(want["body"]), ephemeral_statuses(body),
                                           ".status.ephemeralContainerStatuses")
            if problems:
                failures[name] = problems
    watch_reader.join(timeout=10)
    assert not failures, json.dumps(failures, indent=1)
    assert len(replayed) == len(records) - len(LIVE_NOT_REPLAYED) == 17
    recorded = [json.loads(line) for line in (FIX / "live" / "watch-pods-live.jsonl").read_text().splitlines()]
    # Same steps per container as the real kubelet, e.g. a quick exit never shows "running".
    assert state_sequences(events) == state_sequences([e for e in recorded if "_meta" not in e])


def test_replay_live_pod_security_session(lab):
    """live-psa/: what a capture container can do under baseline (root, default caps) and restricted."""
    with SimCluster() as cluster:
        cluster.add_node("rk8s-node", internal_ip="10.123.0.1")
        cluster.kubelet.provide_image("dnstrace-agent:test")
        wire = Wire(cluster)
        failures: dict[str, list[str]] = {}
        for path in sorted(FIX.glob("live-psa/[0-9][0-9]-*.json")):
            rec = json.loads(path.read_text())
            req, want = rec["request"], rec["response"]
            if req["method"] == "GET" and isinstance(want["body"], dict):
                wait_for_statuses(wire, req["path"], ephemeral_statuses(want["body"]))
            status, _headers, body = wire.send(req["method"], req["path"], req["query"], "admin", req["headers"],
                                              req["body"])
            problems = [] if status == want["status"] else [f"status {status} != {want['status']}: {body}"]
            if req["method"] == "POST" and req["path"].endswith("/pods") and status == 201:
                ns = req["path"].split("/")[4]
                cluster.store.mutate("pods", "app", ns, lambda p: {**p, "spec": {**p["spec"], "nodeName": "rk8s-node"}})
                cluster.kubelet.register_pod_netns(ns, "app", lab.netns(ns[-10:]).name)  # the scheduler bound it
            if isinstance(want["body"], dict) and want["body"].get("kind") == "Pod":
                problems += diff_paths(ephemeral_statuses(want["body"]), ephemeral_statuses(body))
            elif isinstance(want["body"], dict) and want["body"].get("kind") == "Namespace":
                problems += diff_paths(normalize(want["body"]), normalize(body))
            elif path.name.startswith("05-"):
                if body.splitlines()[:3] != want["body"].splitlines()[:3]:
                    problems.append(f"tcpdump banner {body.splitlines()[:3]}")
            elif path.name.startswith("10-") and body != want["body"]:
                problems.append(f"log {body!r} != {want['body']!r}")
            if problems:
                failures[path.name] = problems
    assert not failures, json.dumps(failures, indent=1)
