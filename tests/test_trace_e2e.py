"""End to end: ``kubectl dnstrace`` through the real kubectl binary's plugin mechanism, against
the simulated cluster, with scenario pods sending real DNS queries in network namespaces.

The agent runs as the simulated kubelet starts it: the inline ``python3 -c`` program from the
default image, inside the pod's network namespace. Events travel home through pods/log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kubectl_dnstrace.agent_program import ALARM_EXIT, PROGRAM_WAIT
from tests.conftest import require_lab
from tests.lab.cluster import SimCluster

KUBECTL = shutil.which("kubectl", path="/usr/bin:/usr/local/bin") or "/usr/bin/kubectl"
WEB = "web-5d8f7c9b6-x2k4p"
SCENARIO = {
    "nodes": ["node-a"],
    "dns": {"replicas": 1, "records": {"evil.example.com": "203.0.113.66",
                                       "good.example.com": "203.0.113.7"}},
    "pods": [
        {"name": WEB, "namespace": "shop", "workload": "Deployment/web", "labels": {"tier": "front"},
         "queries": [{"name": "evil.example.com", "type": "A", "every": "300ms"},
                     {"name": "good.example.com", "type": "A", "every": "1s"}]},
        {"name": "other-1", "namespace": "shop",
         "queries": [{"name": "good.example.com", "type": "AAAA", "every": "1s"}]},
    ],
}


@pytest.fixture
def scenario(tmp_path):
    require_lab()
    if not os.path.exists(KUBECTL):
        pytest.skip("kubectl binary not installed")
    from tests.lab.scenario import ScenarioLab

    cluster = SimCluster().start()
    sl = ScenarioLab(SCENARIO, cluster=cluster, workdir=tmp_path / "lab")
    try:
        sl.start()
        yield sl
    finally:
        sl.stop()
        cluster.stop()


def dnstrace(sl, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run ``kubectl dnstrace ARGS`` (kubectl finds the plugin on PATH) against the scenario."""
    return subprocess.run([KUBECTL, "dnstrace", *args], env=sl.env(), capture_output=True,
                          text=True, timeout=timeout)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def run_id(stderr: str) -> str:
    m = re.search(r"container dnstrace-([0-9a-f]{6})", stderr)
    assert m, stderr
    return m.group(1)


def agents_left(sl, rid: str) -> list[str]:
    """Agent processes of run ``rid`` still alive: in the lab's namespaces, or anywhere."""
    marker = f"dnstrace-{rid}.stop"
    found = []
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    pids: set[int] = set()
    for line in names.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith("dtlab-"):
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            pids.update(int(p) for p in out.split() if p.isdigit())
    pids.update(int(p) for p in os.listdir("/proc") if p.isdigit())
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{pid}: {cmd[:80]}")
    return found


def wait_no_agents(sl, rid: str, within: float = 10.0) -> list[str]:
    deadline = time.monotonic() + within
    left = agents_left(sl, rid)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = agents_left(sl, rid)
    return left


def test_coredns_domain_filter_names_the_asking_pod(scenario) -> None:
    proc = dnstrace(scenario, "coredns", "--domain", "evil.example.com", "-o", "ndjson",
                    "--duration", "5s")
    assert proc.returncode == 0, proc.stderr
    evs = [e for e in events(proc.stdout) if e.get("type", "dns") == "dns"]
    assert evs, proc.stderr
    assert all(e["qname"].endswith("evil.example.com") for e in evs)
    assert all(e["observed_at"].startswith("kube-system/coredns-") for e in evs)
    queries = [e for e in evs if e["qr"] == "query" and e["src"] == scenario.pod_ip("shop", WEB)]
    assert len(queries) >= 5  # one every 300 ms for ~5 s
    assert {e["client"]["name"] for e in queries} == {WEB}
    assert "Added ephemeral container dnstrace-" in proc.stderr
    assert "until the pod is recreated" in proc.stderr and "Falco" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert wait_no_agents(scenario, run_id(proc.stderr)) == []


@pytest.mark.parametrize("target", [[f"pod/{WEB}"], ["deploy/web"], ["-l", "tier=front"]])
def test_pod_deploy_and_selector_targets_capture_the_pods_own_queries(scenario, target) -> None:
    proc = dnstrace(scenario, *target, "-n", "shop", "-o", "ndjson", "--duration", "4s")
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert {e["observed_at"] for e in evs} == {f"shop/{WEB}"}  # not other-1
    names = {e["qname"] for e in evs}
    assert {"evil.example.com", "good.example.com"} <= names
    sent = {q["id"] for q in scenario.query_log("shop", WEB)}
    seen = {e["id"] for e in evs if e["qr"] == "query"}
    assert seen and seen <= sent  # every captured query is one the pod really sent


def test_broken_log_stream_loses_and_duplicates_nothing(scenario) -> None:
    scenario.cluster.faults.break_log_after(6, times=3)
    proc = dnstrace(scenario, f"pod/{WEB}", "-n", "shop", "-o", "ndjson", "--duration", "5s")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("resuming from") >= 3
    assert "lost" not in proc.stderr
    evs = events(proc.stdout)
    seqs = [e["seq"] for e in evs]
    assert len(seqs) == len(set(seqs))  # none doubled
    # None lost: every query the pod sent while the capture ran is there.
    first, last = min(e["ts"] for e in evs), max(e["ts"] for e in evs)
    sent = {q["id"] for q in scenario.query_log("shop", WEB) if first <= q["ts"] <= last - 0.05}
    seen = {e["id"] for e in evs if e["qr"] == "query"}
    assert sent and sent <= seen


def start_and_wait_capturing(sl, *args: str) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([KUBECTL, "dnstrace", *args], env=sl.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        err_lines.append(line)
        if line.startswith("capturing in"):
            break
    return proc, err_lines


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_sigterm_and_sighup_stop_every_agent(scenario, sig) -> None:
    proc, err_lines = start_and_wait_capturing(scenario, "coredns", "deploy/web", "-n", "shop",
                                               "-o", "ndjson", "--duration", "120s")
    assert any(line.startswith("capturing in 2 pod(s)") for line in err_lines), "".join(err_lines)
    rid = run_id("".join(err_lines))
    assert agents_left(scenario, rid)  # they run
    time.sleep(1.5)
    t0 = time.monotonic()
    proc.send_signal(sig)  # to the kubectl process itself
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    err = "".join(err_lines) + err
    assert proc.returncode == 0, err
    assert took < 15
    said = "Interrupted" if sig == signal.SIGINT else f"{signal.Signals(sig).name} received"
    assert f"{said}: stopping the capture agents" in err
    assert "Traceback" not in err
    assert events(out)
    assert wait_no_agents(scenario, rid) == []


def test_ctrl_c_without_exec_rights_relies_on_the_agents_deadline(scenario) -> None:
    scenario.cluster.faults.deny("admin", "*", "pods", "exec", "shop")  # create (1.30+) and get
    proc, err_lines = start_and_wait_capturing(scenario, f"pod/{WEB}", "-n", "shop",
                                               "-o", "ndjson", "--duration", "6s")
    rid = run_id("".join(err_lines))
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    err = "".join(err_lines) + err
    assert proc.returncode == 0, err
    assert "no pods/exec permission in shop: those agents stop at their own deadline" in err
    # Nothing could stop it early, and it still ends by itself at its deadline.
    assert wait_no_agents(scenario, rid, within=12.0) == []


def test_second_ctrl_c_stops_waiting(scenario) -> None:
    scenario.cluster.faults.deny("admin", "*", "pods", "exec", "shop")  # create (1.30+) and get
    proc, err_lines = start_and_wait_capturing(scenario, f"pod/{WEB}", "-n", "shop",
                                               "-o", "ndjson", "--duration", "9s")
    rid = run_id("".join(err_lines))
    proc.send_signal(signal.SIGINT)  # no exec: it waits for the agent's near deadline
    time.sleep(1.5)
    assert proc.poll() is None
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 5
    err = "".join(err_lines) + err
    assert "Not waiting any longer: the agents still stop at their own deadline" in err, err
    assert "Added ephemeral container" in err and "Traceback" not in err
    assert wait_no_agents(scenario, rid, within=15.0) == []


def test_deadline_leaves_no_agent_running(scenario) -> None:
    proc = dnstrace(scenario, f"pod/{WEB}", "-n", "shop", "-o", "ndjson", "--duration", "3s")
    assert proc.returncode == 0, proc.stderr
    assert wait_no_agents(scenario, run_id(proc.stderr), within=3.0) == []
    # The kubelet reports the exit on its next status sync (a moment after the process
    # ended, as a real kubelet does): the container must show terminated within 3 s.
    deadline = time.monotonic() + 3.0
    while True:
        pod = scenario.cluster.store.get("pods", WEB, "shop")
        [st] = [s for s in pod["status"]["ephemeralContainerStatuses"]
                if s["name"] == f"dnstrace-{run_id(proc.stderr)}"]
        if "terminated" in st["state"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "terminated" in st["state"], st


def test_dry_run_prints_the_patch_and_changes_nothing(scenario) -> None:
    proc = dnstrace(scenario, f"pod/{WEB}", "-n", "shop", "--dry-run", "--domain", "evil.example.com")
    assert proc.returncode == 0, proc.stderr
    [doc] = events(proc.stdout)
    [container] = doc["patch"]["spec"]["ephemeralContainers"]
    assert (doc["namespace"], doc["pod"]) == ("shop", WEB)
    assert container["securityContext"]["capabilities"] == {"add": ["NET_RAW"]}
    assert "--duration" in container["command"] and "evil.example.com" in container["command"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DNSTRACE_USER"] == "admin" and container["name"] == f"dnstrace-{env['DNSTRACE_RUN_ID']}"
    pod = scenario.cluster.store.get("pods", WEB, "shop")
    assert not pod["spec"].get("ephemeralContainers")


def test_coredns_with_node_local_dns_sees_the_real_pod(tmp_path) -> None:
    require_lab()
    from tests.lab.scenario import ScenarioLab

    scenario_file = Path(__file__).parent / "scenarios" / "nodelocal.yaml"
    cluster = SimCluster().start()
    sl = ScenarioLab(scenario_file, cluster=cluster, workdir=tmp_path / "lab")
    try:
        sl.start()
        proc = dnstrace(sl, "coredns", "--domain", "evil.example.com", "-o", "ndjson",
                        "--duration", "4s")
    finally:
        sl.stop()
        cluster.stop()
    assert proc.returncode == 0, proc.stderr
    assert "NodeLocal DNSCache detected: tracing node-local-dns pods too" in proc.stderr
    evs = events(proc.stdout)
    at_cache = [e for e in evs if "/node-local-dns-" in e["observed_at"] and e["qr"] == "query"]
    assert {e["client"]["name"] for e in at_cache} >= {WEB}  # the pod itself, not a node IP
    added = re.findall(r"Added ephemeral container dnstrace-\w+ to pod kube-system/(\S+)", proc.stderr)
    assert sum(a.startswith("node-local-dns-") for a in added) == 2
    assert sum(a.startswith("coredns-") for a in added) == 2


def test_table_output_live_lines_and_summary_only(scenario) -> None:
    live = dnstrace(scenario, f"pod/{WEB}", "-n", "shop", "--duration", "3s")
    quiet = dnstrace(scenario, f"pod/{WEB}", "-n", "shop", "--duration", "3s", "--no-lines")
    line = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} ", re.M)
    assert live.returncode == 0 and quiet.returncode == 0, live.stderr + quiet.stderr
    assert line.search(live.stdout) and WEB in live.stdout
    assert not line.search(quiet.stdout) and WEB in quiet.stdout


def test_ctrl_c_while_containers_start_exits_130_and_says_what_stays(scenario) -> None:
    scenario.cluster.faults.slow_start(4)
    proc = subprocess.Popen([KUBECTL, "dnstrace", f"pod/{WEB}", "-n", "shop", "-o", "ndjson",
                             "--duration", "3s"], env=scenario.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    while True:
        line = proc.stderr.readline()
        err_lines.append(line)
        if not line or "waiting (ContainerCreating)" in line:
            break
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    err = "".join(err_lines) + err
    assert proc.returncode == 130, err
    assert (f"not started: shop/{WEB} (ContainerCreating); if one starts later it gets no agent "
            f"program and ends by itself within {PROGRAM_WAIT}s, without capturing") in err
    assert "Added ephemeral container dnstrace-" in err and "Traceback" not in err
    rid = re.search(r"dnstrace-([0-9a-f]{6}) to pod", err).group(1)
    # It starts late, gets no program, and ends by itself, having captured nothing.
    run = scenario.cluster.kubelet.run("shop", WEB, f"dnstrace-{rid}")
    end = time.monotonic() + 10 + PROGRAM_WAIT + 5
    while run.exit_code is None and time.monotonic() < end:
        time.sleep(0.2)
    assert run.started and run.exit_code == ALARM_EXIT and run.lines == []
    assert wait_no_agents(scenario, rid, within=2.0) == []


def test_ctrl_c_while_the_project_images_agent_starts_stops_it_as_it_comes_up(scenario) -> None:
    """The project image needs no program, so its agent captures as soon as it starts: an
    interrupted trace waits for it and stops it then, instead of leaving it for --duration."""
    scenario.cluster.faults.slow_start(4)
    proc = subprocess.Popen([KUBECTL, "dnstrace", f"pod/{WEB}", "-n", "shop", "-o", "ndjson",
                             "--image", "ghcr.io/kubectl-dnstrace/agent:0.1.0",
                             "--duration", "300s"], env=scenario.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    while True:
        line = proc.stderr.readline()
        err_lines.append(line)
        if not line or "waiting (ContainerCreating)" in line:
            break
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    err = "".join(err_lines) + err
    assert proc.returncode == 130, err
    assert f"not started yet: shop/{WEB}; waiting up to 60s to stop each as it starts" in err
    assert "stopped 1 agent(s) as they started (pods/exec)" in err
    rid = re.search(r"dnstrace-([0-9a-f]{6}) to pod", err).group(1)
    assert wait_no_agents(scenario, rid, within=5.0) == []
    run = scenario.cluster.kubelet.run("shop", WEB, f"dnstrace-{rid}")
    assert b'"reason":"stop-file"' in b"".join(line for _, line in run.lines)


@pytest.mark.parametrize("how", ["late", "cut"])
def test_an_agent_whose_program_never_arrived_is_a_failure_not_no_match(scenario, how) -> None:
    scenario.cluster.faults.lose_attach_input(close=how == "cut")
    proc = dnstrace(scenario, f"pod/{WEB}", "-n", "shop", "--duration", "60s",
                    timeout=PROGRAM_WAIT + 60)
    assert proc.returncode == 8, proc.stderr
    said = {"late": f"did not get its agent program within {PROGRAM_WAIT}s of starting, and "
                    "ended without capturing",
            "cut": "the agent program did not reach the capture container"}[how]
    assert said in proc.stderr
    assert "No DNS queries matched" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_namespace_only_grants_name_their_namespaces_pods_and_no_one_else(tmp_path) -> None:
    """`kubectl dnstrace rbac -n kube-system` and `-n shop` applied for a user who may list
    pods in no other namespace: a CoreDNS trace names shop's pods, and a pod of another
    namespace is unknown with the reason: never its node, never a wrong pod."""
    require_lab()
    if not os.path.exists(KUBECTL):
        pytest.skip("kubectl binary not installed")
    import yaml

    from kubectl_dnstrace.rbac import render_rbac
    from tests.lab.scenario import ScenarioLab

    scenario = {
        "nodes": ["node-a"],
        "dns": {"replicas": 1, "records": {"shop.example.com": "203.0.113.7",
                                           "batch.example.com": "203.0.113.8"}},
        "pods": [
            {"name": WEB, "namespace": "shop", "workload": "Deployment/web",
             "queries": [{"name": "shop.example.com", "type": "A", "every": "300ms"}]},
            {"name": "report-1-x7k2p", "namespace": "batch",
             "queries": [{"name": "batch.example.com", "type": "A", "every": "300ms"}]},
        ],
    }
    cluster = SimCluster().start()
    sl = ScenarioLab(scenario, cluster=cluster, workdir=tmp_path / "lab")
    try:
        sl.start()
        for ns in ("kube-system", "shop"):
            for doc in yaml.safe_load_all(render_rbac(cluster=False, namespace=ns,
                                                      user="dev-user")):
                if doc:
                    cluster.store.create(doc)
        cluster.users.add("dev-user")
        env = sl.env()
        env["KUBECONFIG"] = str(cluster.write_kubeconfig(tmp_path / "kc-dev", user="dev-user",
                                                         namespace="shop"))
        proc = subprocess.run([KUBECTL, "dnstrace", "coredns", "-o", "ndjson", "--duration",
                               "4s"], env=env, capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc.stderr
        assert ("you may not list pods in every namespace: client attribution covers the pods "
                "of kube-system, shop only") in proc.stderr
        # Client queries (CoreDNS's own forwards upstream are named after CoreDNS).
        queries = [e for e in events(proc.stdout) if e["qr"] == "query" and "forward" not in e]
        by_name = {}
        for e in queries:
            by_name.setdefault(e["qname"], []).append(e["client"])
        assert by_name["shop.example.com"] and all(
            c["kind"] == "pod" and c["name"] == WEB and c["workload"] == "Deployment/web"
            for c in by_name["shop.example.com"])
        assert by_name["batch.example.com"] and all(
            c["kind"] == "unknown" and "held by no pod of namespaces kube-system, shop" in c["reason"]
            for c in by_name["batch.example.com"])
        assert {e["src"] for e in queries if e["qname"] == "batch.example.com"} == {
            sl.pod_ip("batch", "report-1-x7k2p")}
    finally:
        sl.stop()
        cluster.stop()
