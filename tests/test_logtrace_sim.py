"""``coredns --via log`` against the simulated cluster and its simulated CoreDNS.

The real ``kubernetes`` client talks HTTP to the simulated API server; the simulated CoreDNS
(tests/lab/cluster/coredns.py) is fed its Corefile from the ConfigMap the plugin edits, logs
its reloads as the real one does and writes ``log`` lines for the queries the test makes.
The contract under test: the pods that asked are named, and the Corefile afterwards is
byte-identical to before (or, when someone else edited it meanwhile, only our line is gone).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kubectl_dnstrace.errors import CorefileRefused, ExitCode, Forbidden
from kubectl_dnstrace.kube.corednsconfig import ANNOTATION
from kubectl_dnstrace.logtrace import run_log_trace
from kubectl_dnstrace.model import ClusterOptions, Filters, OutputOptions, TraceRequest
from tests.kubesim import running_pod, service, sim_cluster
from tests.lab.cluster.coredns import SimCoreDNS

COREFILE = """.:53 {
    errors
    health {
       lameduck 5s
    }
    forward . 10.96.0.53 {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
"""
WEB_IP, OTHER_IP = "10.244.0.20", "10.244.0.21"


@pytest.fixture
def lab(tmp_path):
    with sim_cluster() as cluster:
        service(cluster, "kube-system", "kube-dns", {"k8s-app": "kube-dns"})
        running_pod(cluster, "shop", "web-1", {"app": "web"}, ip=WEB_IP)
        running_pod(cluster, "shop", "other-1", {"app": "other"}, ip=OTHER_IP)
        kc = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        yield cluster, str(kc)


def dns(cluster, corefile: str = COREFILE, **kw) -> SimCoreDNS:
    return SimCoreDNS(cluster, corefile, **kw)


def corefile_now(cluster) -> tuple[str, dict]:
    cm = cluster.store.get("configmaps", "coredns", "kube-system")
    return cm["data"]["Corefile"], cm["metadata"].get("annotations") or {}


def request(kc: str, *domains: str, duration: float = 1.5, fmt: str = "json", **kw) -> TraceRequest:
    return TraceRequest(targets=["coredns"], cluster=ClusterOptions(kubeconfig=kc),
                        filters=Filters(domains=list(domains)), output=OutputOptions(format=fmt),
                        duration=duration, via="log", **kw)


class Askers(threading.Thread):
    """web-1 asks for evil.example.com, other-1 for good.example.com, at every CoreDNS pod."""

    def __init__(self, sim: SimCoreDNS) -> None:
        super().__init__(daemon=True)
        self.sim = sim
        self.stop = threading.Event()
        self.logged = 0

    def run(self) -> None:
        n = 0
        while not self.stop.wait(0.1):
            n += 1
            for pod in self.sim.pods:
                self.logged += self.sim.query(pod, WEB_IP, "evil.example.com", ident=n)
                self.logged += self.sim.query(pod, OTHER_IP, "good.example.com", "AAAA", ident=n)


def run(req: TraceRequest) -> tuple[ExitCode, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_log_trace(req, out, err)
    return code, out.getvalue(), err.getvalue()


def test_names_the_asking_pod_and_restores_the_corefile_byte_for_byte(lab) -> None:
    cluster, kc = lab
    sim = dns(cluster)
    askers = Askers(sim)
    askers.start()
    try:
        code, out, err = run(request(kc, "evil.example.com"))
    finally:
        askers.stop.set()
        sim.stop()
    assert code == ExitCode.MATCHED, err
    doc = json.loads(out)
    names = {(c["client"].get("name"), n["name"]) for c in doc["summary"] for n in c["names"]}
    assert names == {("web-1", "evil.example.com")}
    assert doc["meta"]["via"] == "log"
    assert {t["role"] for t in doc["targets"]} == {"coredns-log"}
    # Each CoreDNS pod's progress came from its own reload lines.
    for pod in sim.pods:
        assert f"kube-system/{pod}: reloading" in err
        assert f"kube-system/{pod}: logging" in err
    assert "byte-identical" in err
    text, annotations = corefile_now(cluster)
    assert text == COREFILE and ANNOTATION not in annotations
    # What a log line cannot tell stays absent: no answers.
    responses = [e for e in doc["events"] if e["qr"] == "response"]
    assert responses and all("answers" not in e and e["rcode"] == "NOERROR" for e in responses)


def test_the_log_line_is_restricted_to_the_domains(lab) -> None:
    cluster, kc = lab
    sim = dns(cluster, refresh=(0.1, 0.2), reload_check=0.2)
    seen: list[str] = []

    def watch() -> None:
        while not seen:
            text, ann = corefile_now(cluster)
            if ANNOTATION in ann:
                seen.append(text)
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        code, _, err = run(request(kc, "evil.example.com", "c2.example.net", duration=0.5,
                                   fmt="ndjson"))
    finally:
        sim.stop()
    t.join(5)
    assert code == ExitCode.NO_MATCH, err
    lines = [ln for ln in seen[0].splitlines() if ln.strip().startswith("log")]
    rid = lines[0].split("# kubectl-dnstrace run ")[1]
    assert len(lines) == 1 and lines[0].split("#")[0].split() == [
        "log", "evil.example.com", "c2.example.net", f"kubectl-dnstrace-run-{rid}.invalid"]
    assert corefile_now(cluster)[0] == COREFILE


def test_someone_elses_edit_during_the_trace_stays_only_our_line_goes(lab) -> None:
    cluster, kc = lab
    sim = dns(cluster)

    def colleague() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _, ann = corefile_now(cluster)
            if ANNOTATION in ann:
                break
            time.sleep(0.05)

        def edit(cm: dict) -> dict:
            cm["data"]["Corefile"] = cm["data"]["Corefile"].replace("cache 30", "cache 60")
            return cm
        cluster.store.mutate("configmaps", "coredns", "kube-system", edit)

    t = threading.Thread(target=colleague, daemon=True)
    t.start()
    try:
        code, _, err = run(request(kc, "evil.example.com", duration=1.0, fmt="ndjson"))
    finally:
        sim.stop()
    t.join(5)
    assert code in (ExitCode.MATCHED, ExitCode.NO_MATCH), err
    text, ann = corefile_now(cluster)
    assert text == COREFILE.replace("cache 30", "cache 60")
    assert ANNOTATION not in ann
    assert "someone else changed the Corefile during the run" in err


def test_a_corefile_without_reload_is_refused_and_left_alone(lab) -> None:
    cluster, kc = lab
    no_reload = COREFILE.replace("    reload\n", "")
    sim = dns(cluster, no_reload)
    try:
        with pytest.raises(CorefileRefused) as info:
            run(request(kc, "evil.example.com"))
    finally:
        sim.stop()
    assert "no 'reload' plugin" in info.value.message
    assert "capture route" in info.value.hint
    assert info.value.exit_code == ExitCode.COREFILE
    text, ann = corefile_now(cluster)
    assert text == no_reload and not ann


def test_an_unreadable_corefile_is_refused(lab) -> None:
    cluster, kc = lab
    sim = dns(cluster, COREFILE + "example.org:53 {\n    whoami\n")
    try:
        with pytest.raises(CorefileRefused) as info:
            run(request(kc, "evil.example.com"))
    finally:
        sim.stop()
    assert "cannot be read" in info.value.message and "never closed" in info.value.message


def test_a_reload_coredns_refuses_is_put_back_at_once(lab) -> None:
    """A CoreDNS build without the log plugin: the edit fails to load, the old Corefile keeps
    serving, and the run puts the ConfigMap back and says why."""
    cluster, kc = lab
    import tests.lab.cluster.coredns as simdns

    plugins = set(simdns.PLUGINS)
    simdns.PLUGINS.discard("log")
    sim = dns(cluster)
    try:
        with pytest.raises(CorefileRefused) as info:
            run(request(kc, "evil.example.com"))
    finally:
        simdns.PLUGINS.clear()
        simdns.PLUGINS.update(plugins)
        sim.stop()
    assert "refused the edited Corefile" in info.value.message
    assert "Unknown directive 'log'" in info.value.message
    text, ann = corefile_now(cluster)
    assert text == COREFILE and not ann


def test_without_configmap_update_rights_nothing_changes_and_the_permission_is_named(lab, tmp_path) -> None:
    cluster, _ = lab
    sim = dns(cluster)
    cluster.users.add("responder")
    cluster.store.create({"kind": "ClusterRole", "metadata": {"name": "reader"}, "rules": [
        {"apiGroups": ["", "apps"], "resources": ["pods", "pods/log", "services", "configmaps",
                                                  "nodes", "namespaces", "replicasets", "daemonsets",
                                                  "deployments"],
         "verbs": ["get", "list", "watch"]}]})
    cluster.store.create({"kind": "ClusterRoleBinding", "metadata": {"name": "reader"},
                          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                      "name": "reader"},
                          "subjects": [{"kind": "User", "name": "responder",
                                        "apiGroup": "rbac.authorization.k8s.io"}]})
    kc = cluster.write_kubeconfig(tmp_path / "kc-responder", user="responder")
    try:
        with pytest.raises(Forbidden) as info:
            run(request(str(kc), "evil.example.com"))
    finally:
        sim.stop()
    assert "update configmaps 'coredns'" in info.value.message
    assert "kube-system" in info.value.message
    assert corefile_now(cluster) == (COREFILE, {})


def test_since_reads_what_coredns_already_logged_and_changes_nothing(lab) -> None:
    cluster, kc = lab

    def cidr(node: dict) -> dict:
        node.setdefault("spec", {})["podCIDR"] = "10.244.0.0/24"
        return node
    cluster.store.mutate("nodes", "node-a", None, cidr)
    logging = COREFILE.replace("    errors\n", "    errors\n    log\n")
    sim = dns(cluster, logging)
    try:
        assert sim.query(sim.pods[0], WEB_IP, "evil.example.com")
        assert sim.query(sim.pods[1], "10.244.0.99", "evil.example.com", "TXT")  # gone pod
        assert sim.query(sim.pods[1], OTHER_IP, "good.example.com")
        cluster.kubelet.append_log("kube-system", sim.pods[0], "coredns", "[INFO] something new")
        before = cluster.store.get("configmaps", "coredns", "kube-system")["metadata"]["resourceVersion"]
        code, out, err = run(request(kc, "evil.example.com", since=3600.0, fmt="ndjson"))
    finally:
        sim.stop()
    assert code == ExitCode.MATCHED, err
    events = [json.loads(x) for x in out.splitlines()]
    clients = {(e["client"]["kind"], e["client"].get("name", ""), e["src"]) for e in events
               if e["qr"] == "query"}
    assert ("pod", "web-1", WEB_IP) in clients
    gone = [e["client"] for e in events if e["src"] == "10.244.0.99"]
    assert gone and all(c["kind"] == "unknown" and "is gone" in c["reason"] for c in gone)
    assert all(e["qname"] == "evil.example.com" for e in events)
    after = cluster.store.get("configmaps", "coredns", "kube-system")["metadata"]["resourceVersion"]
    assert before == after
    assert "log line(s), the first at" in err and "other line(s)" in err


def test_since_without_log_on_says_there_is_nothing_to_read(lab) -> None:
    cluster, kc = lab
    sim = dns(cluster)
    try:
        with pytest.raises(CorefileRefused) as info:
            run(request(kc, since=3600.0))
    finally:
        sim.stop()
    assert "no 'log' plugin" in info.value.message and "--via log" in info.value.hint


BIN = Path(sys.executable).parent
KUBECTL = shutil.which("kubectl", path="/usr/bin:/usr/local/bin")


def _argv(*args: str) -> list[str]:
    """``kubectl dnstrace ARGS`` through kubectl's plugin mechanism (the plugin found on
    PATH, as installed), or the console script where no kubectl is installed."""
    if KUBECTL:
        return [KUBECTL, "dnstrace", *args]
    return [str(BIN / "kubectl-dnstrace"), *args]


def _env(kc: str) -> dict:
    return {**os.environ, "KUBECONFIG": kc, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}


def _plugin(kc: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(_argv("coredns", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(kc),
                            start_new_session=True)


def _wait_annotated(cluster, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while ANNOTATION not in corefile_now(cluster)[1]:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never changed the Corefile"
        time.sleep(0.05)


def test_sigkill_mid_trace_then_restore_puts_it_back_byte_for_byte(lab) -> None:
    cluster, kc = lab
    sim = dns(cluster)
    try:
        proc = _plugin(kc, "--via", "log", "-d", "evil.example.com", "--duration", "5m")
        _wait_annotated(cluster, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        text, ann = corefile_now(cluster)
        assert text != COREFILE and json.loads(ann[ANNOTATION])["original"] == COREFILE
        # A new run refuses while the killed run's deadline has not passed, and says how.
        again = subprocess.run(_argv("coredns", "--via", "log"), capture_output=True,
                               text=True, timeout=60, env=_env(kc))
        assert again.returncode == ExitCode.COREFILE and "--restore" in again.stderr
        restore = subprocess.run(_argv("coredns", "--restore"), capture_output=True,
                                 text=True, timeout=60, env=_env(kc))
    finally:
        sim.stop()
    assert restore.returncode == 0, restore.stderr
    assert "byte-identical" in restore.stderr
    assert corefile_now(cluster) == (COREFILE, {})


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_while_waiting_for_reload_puts_it_back(lab, sig) -> None:
    cluster, kc = lab
    sim = dns(cluster, refresh=(30, 40))  # the kubelet is slow: still waiting when stopped
    try:
        proc = _plugin(kc, "--via", "log", "-d", "evil.example.com")
        _wait_annotated(cluster, proc)
        time.sleep(0.5)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=30)
    finally:
        sim.stop()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "byte-identical" in err
    assert corefile_now(cluster) == (COREFILE, {})


def test_an_expired_leftover_is_put_back_by_the_next_run(lab) -> None:
    cluster, kc = lab
    from kubectl_dnstrace import corefile
    from kubectl_dnstrace.kube.corednsconfig import RunRecord

    edited = corefile.add_log_line(COREFILE, "dead01", ["evil.example.com"]).text
    record = RunRecord("dead01", time.time() - 5, "someone", "Corefile", COREFILE)
    sim = dns(cluster)

    def leave(cm: dict) -> dict:
        cm["data"]["Corefile"] = edited
        cm["metadata"]["annotations"] = {ANNOTATION: record.to_json()}
        return cm
    cluster.store.mutate("configmaps", "coredns", "kube-system", leave)
    try:
        dry, printed, said = run(request(kc, "evil.example.com", dry_run=True, fmt="ndjson"))
        assert dry == ExitCode.MATCHED and "a real run would put it back first" in said
        assert corefile_now(cluster)[0] == edited  # a dry run changes nothing
        assert "log evil.example.com kubectl-dnstrace-run-" in printed
        code, _, err = run(request(kc, "evil.example.com", duration=0.3, fmt="ndjson"))
    finally:
        sim.stop()
    assert code == ExitCode.NO_MATCH, err
    assert "an interrupted run left its change" in err and "dead01" in err
    assert corefile_now(cluster) == (COREFILE, {})


def test_what_rbac_cluster_prints_is_enough_for_via_log(lab, tmp_path) -> None:
    """A responder holding only `kubectl dnstrace rbac --cluster` runs the whole log route."""
    from kubectl_dnstrace.rbac import policy_documents

    cluster, _ = lab
    for doc in policy_documents(True, None, None):
        cluster.store.create(doc)
    cluster.users.add("responder", ("system:authenticated", "kubectl-dnstrace"))
    kc = cluster.write_kubeconfig(tmp_path / "kc-responder", user="responder")
    sim = dns(cluster, refresh=(0.1, 0.3), reload_check=0.2)
    askers = Askers(sim)
    askers.start()
    try:
        code, out, err = run(request(str(kc), "evil.example.com", duration=1.0))
    finally:
        askers.stop.set()
        sim.stop()
    assert code == ExitCode.MATCHED, err
    names = {c["client"].get("name") for c in json.loads(out)["summary"]}
    assert names == {"web-1"}
    assert corefile_now(cluster) == (COREFILE, {})


def test_capture_refusals_that_via_log_avoids_suggest_it(lab, tmp_path) -> None:
    """Pod Security restricted, no pods/ephemeralcontainers right, no NET_RAW: each says
    that CoreDNS's own log needs none of them."""
    from kubectl_dnstrace.errors import PodSecurityDenied
    from kubectl_dnstrace.kube.ephemeral import agent_hint
    from kubectl_dnstrace.kube.preflight import run_preflight
    from kubectl_dnstrace.kube.targets import resolve_targets
    from tests.kubesim import connect

    cluster, _ = lab
    cluster.set_psa("shop", enforce="restricted")
    kube = connect(cluster, tmp_path)
    pods = resolve_targets(kube, ["pod/web-1"], namespace="shop").pods
    with pytest.raises(PodSecurityDenied) as psa:
        run_preflight(kube, pods)
    assert "kubectl dnstrace coredns --via log --domain NAME" in psa.value.hint
    cluster.set_psa("shop")
    cluster.faults.deny("admin", "patch", "pods", "ephemeralcontainers", "shop")
    with pytest.raises(Forbidden) as rbac:
        run_preflight(kube, pods)
    assert "coredns --via log" in rbac.value.hint
    assert "coredns --via log" in agent_hint("socket: [Errno 1] Operation not permitted (NET_RAW)")


def test_a_reload_of_a_configuration_the_pod_ran_before_is_not_taken_for_ours(lab) -> None:
    """The kubelet may hand a pod an older version first (a colleague's edit undone, the
    put-back of an earlier run) and that reload can land after our edit: CoreDNS logs the
    hash of each configuration, and one the pod ran before is not ours."""
    cluster, kc = lab
    sim = dns(cluster, refresh=None, reload_check=0.1)
    colleague = COREFILE.replace("cache 30", "cache 31")
    for pod in sim.pods:  # running a colleague's version, since undone in the ConfigMap
        sim.mount(pod, colleague)
    deadline = time.monotonic() + 5
    while any(sim.loaded[p] != colleague for p in sim.pods) and time.monotonic() < deadline:
        time.sleep(0.05)

    def kubelet() -> None:
        while ANNOTATION not in corefile_now(cluster)[1]:
            time.sleep(0.05)
        time.sleep(0.2)
        for pod in sim.pods:
            sim.mount(pod, COREFILE)  # the undone version: reloaded, but not ours
        time.sleep(1.0)
        ours = corefile_now(cluster)[0]
        for pod in sim.pods:
            sim.mount(pod, ours)

    t = threading.Thread(target=kubelet, daemon=True)
    t.start()
    askers = Askers(sim)
    askers.start()
    try:
        code, _, err = run(request(kc, "evil.example.com", duration=1.0))
    finally:
        askers.stop.set()
        sim.stop()
    t.join(5)
    assert code == ExitCode.MATCHED, err
    assert "which it ran before the edit: still waiting" in err
    for pod in sim.pods:
        waited = err.index(f"kube-system/{pod}: reloaded configuration")
        assert err.index(f"kube-system/{pod}: logging", waited) > waited
    assert corefile_now(cluster) == (COREFILE, {})


def test_a_capture_run_of_coredns_puts_back_an_expired_leftover(lab, tmp_path) -> None:
    """What trace.py calls for the capture route's coredns targets: an expired record is
    put back; a live run's change, or a ConfigMap it may not update, is left alone."""
    from kubectl_dnstrace import corefile
    from kubectl_dnstrace.kube.corednsconfig import RunRecord
    from kubectl_dnstrace.logtrace import put_back_leftover
    from tests.kubesim import connect

    cluster, _ = lab
    sim = dns(cluster)
    kube = connect(cluster, tmp_path)
    said: list[str] = []

    def leave(deadline: float):
        def edit(cm: dict) -> dict:
            cm["data"]["Corefile"] = corefile.add_log_line(COREFILE, "dead02", []).text
            cm["metadata"]["annotations"] = {ANNOTATION: RunRecord(
                "dead02", deadline, "x", "Corefile", COREFILE).to_json()}
            return cm
        cluster.store.mutate("configmaps", "coredns", "kube-system", edit)

    try:
        leave(time.time() + 600)  # still running somewhere: not ours to touch
        put_back_leftover(kube, "kube-system", said.append)
        assert ANNOTATION in corefile_now(cluster)[1] and not said
        leave(time.time() - 1)
        put_back_leftover(kube, "kube-system", said.append)
    finally:
        sim.stop()
    assert corefile_now(cluster) == (COREFILE, {})
    assert len(said) == 1 and "dead02" in said[0] and "byte-identical" in said[0]


def test_a_second_run_with_the_same_names_is_not_mistaken_for_the_first(lab) -> None:
    """Found on the real cluster: CoreDNS's configuration hash leaves comments out, so two
    runs' edits that differed only in their comment looked like one configuration, and the
    second run waited for a reload it had already seen. Each run's line is its own now."""
    cluster, kc = lab
    sim = dns(cluster, refresh=(0.1, 0.3), reload_check=0.2)
    askers = Askers(sim)
    askers.start()
    try:
        for _ in range(2):
            code, _, err = run(request(kc, "evil.example.com", duration=0.8))
            assert code == ExitCode.MATCHED, err
            assert "which it ran before the edit" not in err
            # Let every pod reload the put-back Corefile before the next run.
            deadline = time.monotonic() + 10
            while any(sim.loaded[p] != COREFILE for p in sim.pods) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        askers.stop.set()
        sim.stop()
    assert corefile_now(cluster) == (COREFILE, {})


@pytest.mark.parametrize("args, says", [
    (["coredns", "--via", "tcpdump"], "unknown --via 'tcpdump'"),
    (["coredns", "--since", "1h"], "--since reads what CoreDNS already logged: it needs --via log"),
    (["coredns", "--via", "log", "--since", "soon"], "--since: 'soon' is not a duration"),
    (["pod/web-1", "--via", "log"], "apply to the cluster DNS only, not to pod/web-1"),
    (["-l", "app=web", "--via", "log"], "apply to the cluster DNS only"),
    (["coredns", "--via", "log", "--pcap", "x.pcap"], "--pcap needs packets"),
    (["coredns", "--via", "log", "--since", "1h", "--restore"], "one at a time"),
    (["coredns", "--via", "log", "-d", "bad name!"], "is not a DNS name"),
])
def test_usage_errors_change_nothing(lab, capsys, args, says) -> None:
    from kubectl_dnstrace.cli import main

    cluster, kc = lab
    sim = dns(cluster)
    try:
        code = main([*args, "--kubeconfig", kc])
    finally:
        sim.stop()
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE, err
    assert says in err and "Traceback" not in err
    assert corefile_now(cluster) == (COREFILE, {})
    assert not [r for r in cluster.requests if r["method"] in ("PUT", "PATCH", "POST")
                and "selfsubject" not in r["path"]]


def test_restore_says_when_the_run_it_undoes_may_still_be_running(lab) -> None:
    from kubectl_dnstrace import corefile
    from kubectl_dnstrace.kube.corednsconfig import RunRecord

    cluster, kc = lab
    sim = dns(cluster)

    def leave(cm: dict) -> dict:
        cm["data"]["Corefile"] = corefile.add_log_line(COREFILE, "a1a1a1", []).text
        cm["metadata"]["annotations"] = {ANNOTATION: RunRecord(
            "a1a1a1", time.time() + 300, "alice", "Corefile", COREFILE).to_json()}
        return cm
    cluster.store.mutate("configmaps", "coredns", "kube-system", leave)
    try:
        code, _, err = run(request(kc, restore=True))
        again, _, err2 = run(request(kc, restore=True))
    finally:
        sim.stop()
    assert code == again == ExitCode.MATCHED
    assert "run a1a1a1 (by alice) was due to end by" in err and "byte-identical" in err
    assert "no change of kubectl dnstrace to put back" in err2
    assert corefile_now(cluster) == (COREFILE, {})


def test_the_corefile_configmap_is_found_from_the_pods_volumes(lab, tmp_path) -> None:
    """kubeadm/EKS map the Corefile key explicitly; AKS mounts whole ConfigMaps, one of which
    (coredns-custom) holds no Corefile."""
    from kubectl_dnstrace.kube.corednsconfig import find_source
    from tests.kubesim import connect

    cluster, _ = lab
    kube = connect(cluster, tmp_path)
    for name, data in (("coredns-custom", {"x.server": "x:53 {}\n"}), ("dns-conf", {"Corefile": "."})):
        cluster.store.create({"kind": "ConfigMap", "metadata": {"name": name, "namespace": "kube-system"},
                              "data": data})

    def pod(*volumes: dict) -> dict:
        return {"spec": {"volumes": [{"name": f"v{i}", **v} for i, v in enumerate(volumes)]}}

    kubeadm = pod({"configMap": {"name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]}})
    aks = pod({"configMap": {"name": "coredns-custom"}}, {"configMap": {"name": "dns-conf"}},
              {"emptyDir": {}})
    renamed = pod({"configMap": {"name": "dns-conf", "items": [{"key": "main", "path": "Corefile"}]}})
    found = find_source(kube, "kube-system", [kubeadm])
    assert (found.name, found.key) == ("coredns", "Corefile")
    assert find_source(kube, "kube-system", [aks]).name == "dns-conf"
    assert find_source(kube, "kube-system", [renamed]).key == "main"
    assert find_source(kube, "kube-system", [pod()]).name == "coredns"


@pytest.mark.parametrize("which", ["the edit", "the put-back"])
def test_a_write_racing_ours_is_never_overwritten(lab, which) -> None:
    """Every write carries the resourceVersion read: a colleague's write landing just before
    ours makes ours a 409, which is read again and redone on top of theirs."""
    cluster, kc = lab
    sim = dns(cluster, refresh=(0.1, 0.3), reload_check=0.2)

    def colleague(cm: dict) -> dict:
        cm["data"]["Corefile"] = cm["data"]["Corefile"].replace("cache 30", "cache 45")
        return cm
    cluster.faults.write_before_update("configmaps", "coredns", colleague,
                                       skip=0 if which == "the edit" else 1)
    try:
        code, _, err = run(request(kc, "evil.example.com", duration=0.3, fmt="ndjson"))
    finally:
        sim.stop()
    assert code == ExitCode.NO_MATCH, err
    assert corefile_now(cluster) == (COREFILE.replace("cache 30", "cache 45"), {})
    if which == "the edit":  # theirs came first: the run started from their Corefile
        assert "byte-identical" in err
    else:
        assert "someone else changed the Corefile during the run" in err
    conflicts = [r for r in cluster.requests if r["method"] == "PUT" and r["code"] == 409]
    assert len(conflicts) == 1


def test_a_broken_log_stream_resumes_without_loss_or_repeats(lab) -> None:
    """The kubelet cuts the follow stream (fault) several times; reopened from the last
    second, the lines already read are dropped by their nanosecond timestamp and text."""
    cluster, kc = lab
    sim = dns(cluster, refresh=(0.1, 0.3), reload_check=0.2)
    askers = Askers(sim)
    askers.start()
    cluster.faults.break_log_after(15, times=4)
    try:
        code, out, err = run(request(kc, "evil.example.com", duration=1.5, fmt="ndjson"))
    finally:
        askers.stop.set()
        sim.stop()
    assert code == ExitCode.MATCHED, err
    queries = [json.loads(x) for x in out.splitlines()]
    queries = [(e["observed_at"], e["id"]) for e in queries if e["qr"] == "query"]
    opened = [r for r in cluster.requests if r["path"].endswith("/log")
              and "coredns" in r["path"]]
    assert len(opened) > len(sim.pods)  # the streams were cut and reopened
    assert queries and len(queries) == len(set(queries))  # no line read twice
    for pod in sim.pods:  # nothing lost: every logged id of the run's window is there
        ids = sorted(i for p, i in queries if p == f"kube-system/{pod}")
        assert ids == list(range(ids[0], ids[-1] + 1))
