"""End to end: ``kubectl dnstrace`` through kubectl's plugin mechanism against the simulated
cluster, with real pods asking real DNS servers in the scenario lab.

Every captured client query is checked against what the pods' queriers logged (name, DNS
id, time): it must be attributed to the pod that sent it, or be explicitly ambiguous (a
node address with that pod among the candidates). A wrong pod fails the test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import require_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SCENARIOS = Path(__file__).parent / "scenarios"


class Trace:
    """``kubectl dnstrace ...`` started before the scenario clock, so nothing is missed.

    Both pipes are read by threads, so a run that does not end is seen by ``finish`` within
    its timeout (and its threads' stacks are dumped to its stderr), never by pytest's.
    """

    def __init__(self, sl, args: list[str], duration: float) -> None:
        env = sl.env()
        env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT prints every thread's stack
        self.proc = subprocess.Popen(
            ["kubectl", "dnstrace", *args, "--duration", f"{duration:g}s"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err_lines: list[str] = []
        self.out_chunks: list[str] = []
        self.ready = threading.Event()
        self._readers = [threading.Thread(target=self._read_err, daemon=True),
                         threading.Thread(target=self._read_out, daemon=True)]
        for t in self._readers:
            t.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err_lines.append(line)
            if line.startswith("capturing in "):
                self.ready.set()
        self.ready.set()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        self.out_chunks.append(self.proc.stdout.read())

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.ready.wait(timeout), "the capture did not start"
        assert self.proc.poll() is None, "".join(self.err_lines)

    def finish(self, timeout: float = 90.0) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(timeout=10)
            for t in self._readers:
                t.join(timeout=5)
            pytest.fail(f"kubectl dnstrace did not end {timeout:g} s after Ctrl-C; its stderr:\n"
                        + "".join(self.err_lines))
        for t in self._readers:
            t.join(timeout=5)
        return self.proc.returncode, "".join(self.out_chunks), "".join(self.err_lines)


def run_scenario(name: str, args: list[str], seconds: float, fmt: str = "ndjson"):
    """Bring the scenario up, start the trace, start the clock, run ``seconds``, finish."""
    from tests.lab.scenario import ScenarioLab

    require_lab()
    sl = ScenarioLab(SCENARIOS / name)
    try:
        sl.up()
        trace = Trace(sl, [*args, "-o", fmt], duration=seconds + 60)
        try:
            trace.wait_ready()
            sl.begin()
            sl.wait_until(seconds)
            sl.interrupted_at = time.time()
            trace.proc.send_signal(2)  # Ctrl-C: the trace stops its agents and reports
            code, out, err = trace.finish()
        finally:
            if trace.proc.poll() is None:
                trace.proc.kill()
        logs = {(p.namespace, p.name): sl.query_log(p.namespace, p.name)
                for p in sl.plan.client_pods}
        plan = sl.plan
        plan.interrupted_at = sl.interrupted_at
    finally:
        sl.stop()
    return code, out, err, logs, plan


def truth_index(logs: dict) -> dict[tuple[str, int], list[tuple[float, str]]]:
    """(name, DNS id) -> [(time, "ns/pod")] from the queriers' own logs."""
    index: dict[tuple[str, int], list[tuple[float, str]]] = {}
    for (ns, name), entries in logs.items():
        for e in entries:
            index.setdefault((e["name"].lower(), e["id"]), []).append((e["ts"], f"{ns}/{name}"))
    return index


def who_asked(index, event: dict) -> str | None:
    hits = {pod for ts, pod in index.get((event["qname"].lower(), event["id"]), ())
            if abs(ts - event["ts"]) < 2.0}
    return hits.pop() if len(hits) == 1 else None


def check_attribution(events: list[dict], logs: dict) -> dict[str, int]:
    """Every client query: the right pod, or explicitly ambiguous with it as a candidate."""
    index = truth_index(logs)
    tally = {"right": 0, "ambiguous": 0, "forwards": 0}
    wrong = []
    for ev in events:
        if ev["qr"] != "query":
            continue
        if "forward" in ev:
            tally["forwards"] += 1
            continue
        sender = who_asked(index, ev)
        client = ev["client"]
        got = f"{client['namespace']}/{client['name']}"
        if sender is None:
            wrong.append(("no querier sent this", ev))
        elif client["kind"] == "pod" and got == sender:
            tally["right"] += 1
        elif client["kind"] in ("node", "ambiguous") and sender in client["candidates"]:
            tally["ambiguous"] += 1
        else:
            wrong.append((sender, ev))
    assert wrong == [], f"{len(wrong)} wrong attributions, first: {wrong[:3]}"
    return tally


def ndjson(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_cronjob_target_between_runs_and_while_its_job_pod_runs():
    """``cronjob/backup``: before its Job's pod runs, a not-found that says so and what to do;
    while it runs (scenario time 3-9 s), a capture in that pod, named after the CronJob."""
    from tests.lab.scenario import ScenarioLab

    require_lab()
    sl = ScenarioLab(SCENARIOS / "incident.yaml")
    try:
        sl.up()
        args = ["kubectl", "dnstrace", "cronjob/backup", "-n", "batch", "-o", "ndjson"]
        idle = subprocess.run([*args, "--duration", "2s"], env=sl.env(), capture_output=True,
                              text=True, timeout=60)
        assert idle.returncode == 4, idle.stderr
        assert ("no job is running now for cronjob/backup in namespace batch (job "
                "backup-29410020 has no running pod)") in idle.stderr
        sl.begin()
        sl.wait_until(3.5)
        run = subprocess.run([*args, "--duration", "3s"], env=sl.env(), capture_output=True,
                             text=True, timeout=60)
        log = sl.query_log("batch", "backup-29410020-h7k2m")
    finally:
        sl.stop()
    assert run.returncode == 0, run.stderr
    events = ndjson(run.stdout)
    assert {e["observed_at"] for e in events} == {"batch/backup-29410020-h7k2m"}
    assert {(e["client"]["name"], e["client"]["workload"]) for e in events} == {
        ("backup-29410020-h7k2m", "CronJob/backup")}
    queries = {(e["qname"], e["id"]) for e in events if e["qr"] == "query"}
    assert {q[0] for q in queries} == {"registry.example.org", "c2.evil.example.com"}
    assert queries <= {(e["name"], e["id"]) for e in log}  # each one the pod really sent


def test_short_lived_cronjob_pod_and_ip_reuse():
    code, out, err, logs, plan = run_scenario("ip-reuse.yaml", ["coredns"], 9)
    assert code == 0, err
    events = ndjson(out)
    tally = check_attribution(events, logs)
    job = next(p.name for p in plan.client_pods if p.namespace == "batch")
    asked = {(e["client"]["namespace"], e["client"]["name"], e["qname"])
             for e in events if e["qr"] == "query" and "forward" not in e}
    # The CronJob pod finished at 4 s (it stays in the API, Succeeded, podIP kept); its IP
    # went to a new pod at 5 s. Each is named for its own queries only.
    assert ("batch", job, "evil.example.com") in asked
    assert ("shop", "web-5d8f7c9b6-x2k4p", "good.example.com") in asked
    assert ("shop", "web-5d8f7c9b6-x2k4p", "evil.example.com") not in asked
    assert ("batch", job, "good.example.com") not in asked
    first = next(e for e in events if e["client"]["name"] == job)
    assert first["client"]["workload"] == "CronJob/sync"
    assert tally["right"] >= 10


def test_host_network_clients_are_the_node_with_candidates():
    code, out, err, logs, _ = run_scenario("hostnetwork.yaml", ["coredns"], 5)
    assert code == 0, err
    events = ndjson(out)
    tally = check_attribution(events, logs)
    assert tally["ambiguous"] >= 3 and tally["right"] >= 3
    from_node = [e["client"] for e in events if e["src"] == "172.18.0.11" and e["qr"] == "query"]
    assert from_node and all(
        c == {"kind": "node", "namespace": "", "name": "node-b", "workload": "", "node": "node-b",
              "candidates": ["kube-system/kube-proxy-m4n5b", "monitoring/agent-x7k2p"],
              "reason": "InternalIP of node node-b: a node process or one of its hostNetwork pods"}
        for c in from_node)


def test_two_dns_replicas_and_the_upstream_leg():
    code, out, err, logs, plan = run_scenario("upstream.yaml", ["coredns"], 7, fmt="json")
    assert code == 0, err
    doc = json.loads(out)
    tally = check_attribution(doc["events"], logs)
    assert tally["right"] >= 20
    seen_at = {e["observed_at"] for e in doc["events"]}
    assert seen_at == {f"{p.namespace}/{p.name}" for p in plan.dns_pods}  # both replicas
    ups = [lk for lk in doc["upstream"] if lk["upstream"]]
    assert len(ups) >= 4  # each replica forwards each name at least once per 3 s TTL
    index = truth_index(logs)
    for link in ups:
        assert link["server"]["ip"] == "172.18.0.53"
        assert link["resolver"]["name"] in {p.name for p in plan.dns_pods}
        assert link["caused_by"], link["text"]
        for cause in link["caused_by"]:
            # The cause asked this very name just before the upstream lookup.
            key = f"{cause['namespace']}/{cause['name']}"
            asked = [ts for (name, _), hits in index.items() if name == link["qname"]
                     for ts, pod in hits if pod == key]
            assert any(0 <= link["ts"] - ts < 1.0 for ts in asked), link["text"]
    served = {}
    for e in doc["events"]:
        if e.get("served"):
            served[e["served"]] = served.get(e["served"], 0) + 1
    assert served.get("cache", 0) > served.get("forwarded", 0) > 0


def test_nodelocal_dns_is_detected_and_attributed_through_its_captures():
    code, out, err, logs, plan = run_scenario("nodelocal.yaml", ["coredns"], 8)
    assert code == 0, err
    assert "NodeLocal DNSCache is on (2 nodes)" in err
    events = ndjson(out)
    tally = check_attribution(events, logs)
    assert tally["right"] >= 10
    nld = {f"{p.namespace}/{p.name}" for p in plan.node_local_pods}
    coredns = {f"{p.namespace}/{p.name}" for p in plan.dns_pods}
    # Client queries are named at the node-local-dns captures, which see pod addresses.
    named = {e["observed_at"] for e in events if e["qr"] == "query" and "forward" not in e
             and e["client"]["kind"] == "pod"}
    assert named <= nld | coredns and named & nld
    # CoreDNS sees nodes, never pods, and names outside the cluster domain never reach it.
    at_coredns = [e for e in events if e["observed_at"] in coredns and e["qr"] == "query"
                  and e["dport"] == 53 and e["dst"] in {p.ip for p in plan.dns_pods}]
    assert at_coredns, sorted({(e["observed_at"], e["src"], e["dst"]) for e in events})
    assert {e["client"]["kind"] for e in at_coredns} == {"node"}
    assert not any(e["qname"].endswith("example.com") for e in at_coredns)
    # ... and each such hop is linked to the pod that asked at the node-local cache.
    linked = [e for e in at_coredns if e.get("forward", {}).get("caused_by")]
    assert linked
    for e in linked:
        for cause in e["forward"]["caused_by"]:
            assert cause["kind"] == "pod" and cause["node"] == e["client"]["node"]


def test_incident_table_names_the_culprit_and_the_cronjob_pod():
    code, out, err, logs, plan = run_scenario("incident.yaml",
                                           ["coredns", "--domain", "evil.example.com"], 8,
                                           fmt="table")
    assert code == 0, err
    summary = out.split("\n\n")[1].splitlines()
    rows = {tuple(line.split()[:3]) for line in summary[1:]}
    assert ("shop", "checkout-84d6c7b9f-tw7pn", "Deployment/checkout") in rows
    assert ("batch", "backup-29410020-h7k2m", "CronJob/backup") in rows
    assert not any(r[1].startswith(("frontend", "orders", "redis")) for r in rows)
    # The table's count for the culprit is what it really sent (every 3 s) while traced.
    sent = [e for e in logs[("shop", "checkout-84d6c7b9f-tw7pn")]
            if e["name"] == "evil.example.com" and e["ts"] < plan.interrupted_at - 0.5]
    row = next(line.split() for line in summary[1:] if "checkout-84d6c7b9f-tw7pn" in line)
    assert row[4] == "evil.example.com"
    assert int(row[5]) == len(sent)
