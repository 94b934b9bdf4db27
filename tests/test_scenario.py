"""The scenario lab: format, layout, and the running cluster checked with real tools.

The first half needs nothing (parsing and planning are pure). The second half brings
scenarios up in network namespaces and checks them with dig, tcpdump, dnsmasq's own query
logs and the real ``kubernetes`` client against the simulated API server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_lab
from tests.lab import objects
from tests.lab.netns import run
from tests.lab.plan import build_plan
from tests.lab.spec import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "scenarios"
PYTHON = sys.executable


def _plan(name: str):
    return build_plan(load_scenario(SCENARIOS / name))


# -- format and layout (no root) ---------------------------------------------------------------


def test_readme_example_parses_into_what_it_says():
    sc = load_scenario(SCENARIOS / "basic.yaml")
    assert sc.nodes == ["node-a", "node-b"]
    assert sc.dns.replicas == 2
    assert {(r.name, r.rtype, r.value) for r in sc.dns.records} == {
        ("evil.example.com", "A", "203.0.113.66"), ("good.example.com", "A", "203.0.113.7")}
    pods = {p.name: p for p in sc.pods}
    assert pods["web-5d8f7c9b6-p3n8d"].phase == "Pending" and pods["web-5d8f7c9b6-x2k4p"].phase == "Running"
    report = pods["report-28471-abcde"]
    assert (report.workload.kind, report.workload.name) == ("CronJob", "report")
    assert (report.start, report.stop) == (2.0, 6.0)
    assert report.queries[0].qtype == "TXT" and report.queries[0].every == 0.5 and report.queries[0].tcp
    assert pods["agent-x7k2p"].host_network


@pytest.mark.parametrize(("data", "message"), [
    ({"nodes": ["a"], "pod": []}, r"unknown key 'pod'"),
    ({"pods": [{"name": "x", "hostnetwork": True}]}, r"pods\[0\]: unknown key 'hostnetwork'"),
    ({"pods": [{"name": "x", "queries": [{"name": "a.b", "evry": "1s"}]}]}, r"queries\[0\]: unknown key 'evry'"),
    ({"dns": {"replica": 2}}, r"dns: unknown key 'replica'"),
    ({"pods": [{"name": "x", "start": "soon"}]}, r"pods\[0\]\.start: 'soon' is not a duration"),
    ({"pods": [{"name": "x", "workload": "Deploy-web"}]}, r"KIND/NAME"),
    ({"pods": [{"name": "x", "workload": "Pod/web"}]}, r"KIND/NAME"),
    ({"pods": [{"name": "x", "start": "5s", "stop": "2s"}]}, r"stop \(2s\) must come after start \(5s\)"),
    ({"pods": [{"name": "x", "node": "node-z"}]}, r"'node-z' is not one of the nodes"),
    ({"pods": [{"namespace": "shop"}]}, r"a bare pod needs a name"),
    ({"pods": [{"name": "x", "ip": "10.244.0.300"}]}, r"not an IPv4 address"),
    ({"pods": [{"name": "x", "queries": [{"name": "a.b", "type": "BOGUS"}]}]}, r"unknown query type 'BOGUS'"),
    ({"dns": {"records": {"a.example.com": "not-an-ip"}}}, r"'not-an-ip' is not an IP address"),
    ({"namespaces": {"locked": {"podSecurity": "strict"}}}, r"podSecurity: one of privileged, baseline, restricted"),
    ({"nodeLocalDNS": {"forward": "some"}}, r"forward: 'cluster'"),
    ({"pods": [{"name": "x", "phase": "Unknown"}]}, r"phase: one of Running, Pending, Succeeded, Failed"),
    ({"pods": [{"name": "x", "phase": "Pending", "queries": [{"name": "a.b"}]}]}, r"a Pending pod runs nothing"),
])
def test_mistakes_are_errors_that_say_where(data, message):
    with pytest.raises(ScenarioError, match=message):
        build_plan(parse_scenario(data, "t.yaml"))


def test_an_ip_held_twice_at_once_is_refused_but_reuse_after_stop_is_fine():
    pods = [{"name": "a", "ip": "10.244.0.20", "stop": "4s"}, {"name": "b", "ip": "10.244.0.20", "start": "3s"}]
    with pytest.raises(ScenarioError, match=r"hold 10\.244\.0\.20 at the same time"):
        build_plan(parse_scenario({"pods": pods}))
    pods[1]["start"] = "4s"
    plan = build_plan(parse_scenario({"pods": pods}))
    assert [p.ip for p in plan.client_pods] == ["10.244.0.20", "10.244.0.20"]


def test_layout_is_deterministic_and_realistic():
    plan = _plan("basic.yaml")
    assert plan == _plan("basic.yaml")
    dns = plan.dns_pods
    assert [(p.node, p.ip) for p in dns] == [("node-a", "10.244.0.2"), ("node-b", "10.244.1.2")]
    assert all(re.fullmatch(r"coredns-[a-z0-9]{10}-[a-z0-9]{5}", p.name) for p in dns)
    assert all(p.labels["k8s-app"] == "kube-dns" and p.owner.kind == "ReplicaSet" for p in dns)
    assert dns[0].owner.parent.name == "coredns"
    web = plan.pod("shop", "web-5d8f7c9b6-x2k4p")
    assert (web.ip, web.dns_server, web.owner.name, web.owner.parent.kind) == (
        "10.244.0.3", "10.244.0.2", "web-5d8f7c9b6", "Deployment")
    assert web.labels["pod-template-hash"] == "5d8f7c9b6"
    report = plan.pod("batch", "report-28471-abcde")
    assert (report.owner.kind, report.owner.name, report.owner.parent.kind) == ("Job", "report-28471", "CronJob")
    assert report.labels["batch.kubernetes.io/job-name"] == "report-28471"
    agent = plan.pod("monitoring", "agent-x7k2p")
    assert (agent.host_network, agent.ip, agent.node) == (True, "172.18.0.11", "node-b")


def test_generated_names_follow_the_controllers():
    plan = build_plan(parse_scenario({"pods": [
        {"namespace": "a", "workload": "Deployment/web"},
        {"namespace": "a", "workload": "StatefulSet/db"},
        {"namespace": "a", "workload": "StatefulSet/db"},
        {"namespace": "a", "workload": "CronJob/tick"},
        {"namespace": "a", "workload": "DaemonSet/agent"},
        {"namespace": "a", "workload": "Job/once"},
    ]}))
    names = [p.name for p in plan.client_pods]
    assert re.fullmatch(r"web-[a-z0-9]{10}-[a-z0-9]{5}", names[0])
    assert names[1:3] == ["db-0", "db-1"]
    assert re.fullmatch(r"tick-\d{8}-[a-z0-9]{5}", names[3])
    assert re.fullmatch(r"agent-[a-z0-9]{5}", names[4]) and re.fullmatch(r"once-[a-z0-9]{5}", names[5])


def test_objects_chain_owners_with_controller_references():
    plan = _plan("basic.yaml")
    web = plan.pod("shop", "web-5d8f7c9b6-x2k4p")
    pod = objects.pod(web, plan.node("node-a"))
    ref = pod["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("ReplicaSet", "web-5d8f7c9b6", web.owner.uid, True)
    rs = objects.owner_object(web.owner, plan.pods)
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert rs["spec"]["selector"]["matchLabels"]["pod-template-hash"] == "5d8f7c9b6"
    assert pod["status"]["podIP"] == "10.244.0.3" and pod["status"]["hostIP"] == "172.18.0.10"
    pending = objects.pod(web, plan.node("node-a"), "Pending")
    assert "podIP" not in pending["status"]
    node_obj = objects.node(plan.node("node-b"))
    assert node_obj["spec"]["podCIDR"] == "10.244.1.0/24"
    assert {"type": "InternalIP", "address": "172.18.0.11"} in node_obj["status"]["addresses"]


def test_node_local_layout_points_clients_at_the_link_local_cache():
    plan = _plan("nodelocal.yaml")
    assert {p.dns_server for p in plan.client_pods} == {"169.254.20.10"}
    nl = plan.node_local_pods
    assert [(p.node, p.ip, p.host_network) for p in nl] == [("node-a", "172.18.0.10", True),
                                                             ("node-b", "172.18.0.11", True)]
    services = {s["metadata"]["name"]: s for s in objects.dns_services(plan) if s["kind"] == "Service"}
    assert services["kube-dns-upstream"]["metadata"]["labels"]["k8s-app"] == "kube-dns"


def test_search_list_expansion_follows_ndots():
    from tests.lab.querier import candidates

    search = ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    assert candidates("evil.example.com", search, 5) == [
        "evil.example.com.shop.svc.cluster.local", "evil.example.com.svc.cluster.local",
        "evil.example.com.cluster.local", "evil.example.com"]
    assert candidates("a.b.c.d.e.f", search, 5)[0] == "a.b.c.d.e.f"
    assert candidates("evil.example.com.", search, 5) == ["evil.example.com"]
    assert candidates("evil.example.com", [], 5) == ["evil.example.com"]


def test_check_command_prints_the_layout():
    out = subprocess.run([PYTHON, "-m", "tests.lab", "check", "--scenario", str(SCENARIOS / "incident.yaml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(r"shop\s+checkout-84d6c7b9f-tw7pn\s+node-a\s+10\.244\.0\.4", out.stdout)
    bad = subprocess.run([PYTHON, "-m", "tests.lab", "check", "--scenario", str(SCENARIOS / "nope.yaml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot read" in bad.stderr


# -- the running lab -------------------------------------------------------------------------


def _lab(scenario):
    require_lab()
    from tests.lab.scenario import ScenarioLab

    return ScenarioLab(scenario)


def _core(sl):
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(sl.kubeconfig))
    return client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)


def _wait_for(predicate, timeout: float = 10.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def _dtlab_namespaces(tag: str) -> list[str]:
    return [line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines()
            if line.startswith(f"dtlab-{tag}-")]


@pytest.mark.lab
def test_pods_resolve_through_cluster_dns_which_forwards_and_caches():
    with _lab(SCENARIOS / "upstream.yaml") as sl:
        web = sl.pod("shop", "web-5d8f7c9b6-x2k4p")
        dns_ip = web.dns_server
        dig = sl.netns("shop", web.name).run("dig", "+short", "+time=2", "+tries=2", f"@{dns_ip}", "evil.example.com")
        assert dig.stdout.split() == ["203.0.113.66"]
        nx = sl.netns("shop", web.name).run("dig", "+time=2", "+tries=2", f"@{dns_ip}", "nothing.example.com")
        assert "status: NXDOMAIN" in nx.stdout
        sl.netns("shop", web.name).run("dig", "+time=2", "+tries=2", f"@{dns_ip}", "nothing.example.com")
        svc = sl.netns("shop", web.name).run("dig", "+short", f"@{dns_ip}", "kube-dns.kube-system.svc.cluster.local")
        assert svc.stdout.split() == ["10.96.0.10"]
        sl.wait_until(4.0)
        log = sl.query_log("shop", web.name)
        assert len(log) >= 6 and all(q["rcode"] == 0 and q["answers"] == 1 and q["server"] == dns_ip for q in log)
        dns_pod = next(p for p in sl.plan.dns_pods if p.ip == dns_ip)
        coredns_log = sl.dns_log(f"kube-system/{dns_pod.name}")
        assert f"query[A] evil.example.com from {web.ip}" in coredns_log
        assert "cached evil.example.com is 203.0.113.66" in coredns_log  # served from cache
        assert "cached nothing.example.com is NXDOMAIN" in coredns_log  # denials are cached too
        upstream = sl.dns_log("upstream")
        forwarded = re.findall(rf"query\[A\] evil\.example\.com from {re.escape(dns_ip)}$", upstream, re.M)
        client_queries = len(re.findall(rf"query\[A\] evil\.example\.com from {re.escape(web.ip)}$", coredns_log, re.M))
        assert len(forwarded) >= 1 and len(forwarded) < client_queries  # the upstream leg, thinned by the 3 s TTL


@pytest.mark.lab
def test_every_record_form_of_the_format_resolves():
    records = {"multi.example.com": ["203.0.113.7", "203.0.113.8", "2001:db8::7"],
               "txt.example.com": {"TXT": "v=spf1 -all", "A": "203.0.113.9"},
               "alias.example.com": {"CNAME": "multi.example.com"},
               "*.tunnel.example.com": "203.0.113.99",
               "db.shop.svc.cluster.local": "10.96.1.2"}
    scenario = {"dns": {"records": records}, "pods": [{"name": "web-1", "namespace": "shop"}],
                "services": [{"name": "web", "namespace": "shop", "clusterIP": "10.96.12.34",
                              "selector": {"run": "web-1"}, "ports": [80]}]}
    with _lab(scenario) as sl:
        ns, dns = sl.netns("shop", "web-1"), sl.dns_pod_ips[0]

        def dig(name: str, qtype: str = "A") -> list[str]:
            return sorted(ns.run("dig", "+short", "+time=2", "+tries=2", f"@{dns}", name, qtype).stdout.split())

        assert dig("multi.example.com") == ["203.0.113.7", "203.0.113.8"]
        assert dig("multi.example.com", "AAAA") == ["2001:db8::7"]
        assert dig("txt.example.com", "TXT") == ['"v=spf1', '-all"']
        assert dig("txt.example.com") == ["203.0.113.9"]
        assert dig("alias.example.com") == ["203.0.113.7", "203.0.113.8", "multi.example.com."]
        assert dig("a.b.tunnel.example.com") == ["203.0.113.99"]
        assert dig("db.shop.svc.cluster.local") == ["10.96.1.2"]
        assert dig("web.shop.svc.cluster.local") == ["10.96.12.34"]
        core, _apps, _batch = _core(sl)
        eps = core.read_namespaced_endpoints("web", "shop")
        assert [a.ip for a in eps.subsets[0].addresses] == [sl.pod_ip("shop", "web-1")]


@pytest.mark.lab
def test_a_capture_in_a_dns_pod_sees_clients_and_the_upstream_leg():
    with _lab(SCENARIOS / "upstream.yaml") as sl:
        dns = sl.plan.dns_pods[0]
        cap = sl.netns(dns.namespace, dns.name).popen(
            ["tcpdump", "-n", "-l", "-i", "eth0", "udp", "port", "53"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        time.sleep(4.0)
        cap.send_signal(signal.SIGINT)
        out, _ = cap.communicate(timeout=10)
        web, db = sl.pod("shop", "web-5d8f7c9b6-x2k4p"), sl.pod("data", "db-0")
        assert re.search(rf"IP {re.escape(web.ip)}\.\d+ > {re.escape(dns.ip)}\.53: .* A\? evil\.example\.com", out)
        assert re.search(rf"IP {re.escape(db.ip)}\.\d+ > {re.escape(dns.ip)}\.53: .* A\? good\.example\.com", out)
        assert re.search(rf"IP {re.escape(dns.ip)}\.\d+ > {re.escape(sl.upstream_ip)}\.53: .* A\? ", out)


@pytest.mark.lab
def test_api_objects_match_the_network_and_chain_their_owners():
    with _lab(SCENARIOS / "basic.yaml") as sl:
        core, apps, _batch = _core(sl)
        pods = {(p.metadata.namespace, p.metadata.name): p for p in core.list_pod_for_all_namespaces().items}
        web = pods[("shop", "web-5d8f7c9b6-x2k4p")]
        assert (web.status.phase, web.status.pod_ip, web.status.host_ip, web.spec.node_name) == (
            "Running", "10.244.0.3", "172.18.0.10", "node-a")
        assert web.status.container_statuses[0].state.running is not None
        pending = pods[("shop", "web-5d8f7c9b6-p3n8d")]
        assert (pending.status.phase, pending.status.pod_ip) == ("Pending", None)
        assert pending.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
        with pytest.raises(KeyError):
            sl.netns("shop", "web-5d8f7c9b6-p3n8d")
        rs_ref = web.metadata.owner_references[0]
        rs = apps.read_namespaced_replica_set(rs_ref.name, "shop")
        assert rs.metadata.uid == rs_ref.uid and rs.metadata.owner_references[0].name == "web"
        assert apps.read_namespaced_deployment("web", "shop").metadata.uid == rs.metadata.owner_references[0].uid
        agent = pods[("monitoring", "agent-x7k2p")]
        assert agent.spec.host_network and agent.status.pod_ip == "172.18.0.11"
        assert apps.read_namespaced_daemon_set("agent", "monitoring").metadata.uid == agent.metadata.owner_references[0].uid
        dns = core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-dns").items
        assert sorted(p.status.pod_ip for p in dns) == ["10.244.0.2", "10.244.1.2"]
        svc = core.read_namespaced_service("kube-dns", "kube-system")
        assert (svc.spec.cluster_ip, svc.spec.selector) == ("10.96.0.10", {"k8s-app": "kube-dns"})
        eps = core.read_namespaced_endpoints("kube-dns", "kube-system")
        assert sorted(a.ip for a in eps.subsets[0].addresses) == ["10.244.0.2", "10.244.1.2"]
        namespaces = {n.metadata.name: n.metadata.labels for n in core.list_namespace().items}
        assert namespaces["batch"]["pod-security.kubernetes.io/enforce"] == "baseline"
        assert namespaces["shop"]["team"] == "web" and "kube-system" in namespaces
        nodes = {n.metadata.name: n for n in core.list_node().items}
        assert nodes["node-b"].spec.pod_cidr == "10.244.1.0/24"
        assert [a.address for a in nodes["node-b"].status.addresses if a.type == "InternalIP"] == ["172.18.0.11"]
        # the hostNetwork pod asks from its node's address, and the DNS pod on node-a sees that
        sl.wait_until(1.5)
        asked = next(p for p in sl.plan.dns_pods if p.ip == sl.pod("monitoring", "agent-x7k2p").dns_server)
        assert asked.node == "node-a"
        assert "query[A] good.example.com from 172.18.0.11" in sl.dns_log(f"kube-system/{asked.name}")


@pytest.mark.lab
def test_short_lived_cronjob_pod_comes_and_goes_on_schedule():
    with _lab(SCENARIOS / "basic.yaml") as sl:
        core, _apps, batch = _core(sl)

        def present() -> bool:
            return any(p.metadata.name == "report-28471-abcde"
                       for p in core.list_namespaced_pod("batch").items)

        def running():
            pods = core.list_namespaced_pod("batch", field_selector="status.phase=Running").items
            return next((p for p in pods if p.metadata.name == "report-28471-abcde"), None)

        assert not present()
        assert _wait_for(present, timeout=5)
        appeared = sl.elapsed()
        pod = _wait_for(running, timeout=3, step=0.05)  # Pending (no IP) first, as on a cluster
        assert pod is not None and pod.status.pod_ip == sl.pod_ip("batch", "report-28471-abcde")
        job = batch.read_namespaced_job("report-28471", "batch")
        assert pod.metadata.owner_references[0].uid == job.metadata.uid
        assert batch.read_namespaced_cron_job("report", "batch").metadata.uid == job.metadata.owner_references[0].uid
        assert _wait_for(lambda: not present(), timeout=8)
        gone = sl.elapsed()
        assert appeared >= 1.5 and appeared <= 4.0 and gone >= 5.5 and gone <= 8.0  # start 2s, stop 6s (+ polling, busy CPUs)
        log = sl.query_log("batch", "report-28471-abcde")
        assert len(log) >= 5 and {q["proto"] for q in log} == {"tcp"} and {q["rcode"] for q in log} == {3}
        created = next(e for e in sl.events if e.name == pod.metadata.name and e.action == "created")
        deleted = next(e for e in sl.events if e.name == pod.metadata.name and e.action == "deleted")
        assert all(created.wall <= q["ts"] <= deleted.wall for q in log)
        with pytest.raises(KeyError):
            sl.netns("batch", "report-28471-abcde")


@pytest.mark.lab
def test_an_ip_is_reused_only_after_the_first_pod_is_gone():
    with _lab(SCENARIOS / "ip-reuse.yaml") as sl:
        core, _apps, _batch = _core(sl)
        first = core.read_namespaced_pod("sync-29410031-k7tqz", "batch")
        assert (first.status.phase, first.status.pod_ip) == ("Running", "10.244.0.20")
        sl.wait_until(6.5)
        second = core.read_namespaced_pod("web-5d8f7c9b6-x2k4p", "shop")
        assert (second.status.phase, second.status.pod_ip) == ("Running", "10.244.0.20")
        first = core.read_namespaced_pod("sync-29410031-k7tqz", "batch")  # completed, still listed
        assert (first.status.phase, first.status.pod_ip) == ("Succeeded", "10.244.0.20")
        assert first.status.container_statuses[0].state.terminated.reason == "Completed"
        old = sl.query_log("batch", "sync-29410031-k7tqz")
        new = sl.query_log("shop", "web-5d8f7c9b6-x2k4p")
        assert {q["name"] for q in old} == {"evil.example.com"} and {q["name"] for q in new} == {"good.example.com"}
        finished = next(e for e in sl.events if e.action == "finished")
        assert max(q["ts"] for q in old) <= finished.wall < min(q["ts"] for q in new)
        dns_log = sl.dns_log(f"kube-system/{sl.plan.dns_pods[0].name}")
        assert "query[A] evil.example.com from 10.244.0.20" in dns_log
        assert "query[A] good.example.com from 10.244.0.20" in dns_log


def test_finish_frees_the_ip_but_an_earlier_reuse_is_refused():
    pods = [{"name": "a", "ip": "10.244.0.20", "finish": "4s"}, {"name": "b", "ip": "10.244.0.20", "start": "3s"}]
    with pytest.raises(ScenarioError, match="at the same time"):
        build_plan(parse_scenario({"pods": pods}))
    with pytest.raises(ScenarioError, match=r"finish \(4s\) must come after start and before stop"):
        build_plan(parse_scenario({"pods": [{"name": "a", "finish": "4s", "stop": "3s"}]}))


@pytest.mark.lab
def test_node_local_dns_hides_pods_from_coredns():
    with _lab(SCENARIOS / "nodelocal.yaml") as sl:
        core, apps, _batch = _core(sl)
        web, api = sl.pod("shop", "web-5d8f7c9b6-x2k4p"), sl.pod("shop", "api-7f6d5c4b3-p9q8r")
        dig = sl.netns("shop", web.name).run("dig", "+short", "@169.254.20.10", "evil.cluster.local")
        assert dig.stdout.split() == ["10.96.66.66"]
        caps = [sl.netns("kube-system", p.name).popen(
            ["tcpdump", "-n", "-l", "-i", "eth0", "udp", "dst", "port", "53"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True) for p in sl.plan.dns_pods]
        sl.wait_until(5.0)
        out = ""
        for cap in caps:
            cap.send_signal(signal.SIGINT)
            out += cap.communicate(timeout=10)[0]
        sources = set(re.findall(r"IP (\d+\.\d+\.\d+\.\d+)\.\d+ > ", out))
        assert sources, out
        node_addresses = {"10.244.0.1", "10.244.1.1", "172.18.0.10", "172.18.0.11"}
        assert sources <= node_addresses, sources  # CoreDNS never sees a pod IP
        coredns_logs = "".join(sl.dns_log(f"kube-system/{p.name}") for p in sl.plan.dns_pods)
        assert "evil.example.com" not in coredns_logs and "good.example.com" not in coredns_logs
        assert re.search(r"query\[A\] (evil\.cluster\.local|kube-dns\.kube-system\.svc\.cluster\.local) from "
                         r"(10\.244\.[01]\.1|172\.18\.0\.1[01])$", coredns_logs, re.M)
        assert f"query[A] evil.example.com from {web.ip}" in sl.dns_log("node-local-dns/node-a")
        assert f"query[A] good.example.com from {api.ip}" in sl.dns_log("node-local-dns/node-b")
        assert "query[A] evil.example.com from 172.18.0.10" in sl.dns_log("upstream")
        nl = core.list_namespaced_pod("kube-system", label_selector="k8s-app=node-local-dns").items
        assert sorted((p.spec.node_name, p.status.pod_ip, p.spec.host_network) for p in nl) == [
            ("node-a", "172.18.0.10", True), ("node-b", "172.18.0.11", True)]
        assert apps.read_namespaced_daemon_set("node-local-dns", "kube-system").metadata.uid == \
            nl[0].metadata.owner_references[0].uid
        kube_dns_labelled = core.list_namespaced_service("kube-system", label_selector="k8s-app=kube-dns").items
        assert sorted(s.metadata.name for s in kube_dns_labelled) == ["kube-dns", "kube-dns-upstream"]


@pytest.mark.lab
def test_search_list_queries_reach_coredns_and_stop_at_the_answer():
    scenario = {"dns": {"records": {"evil.example.com": "203.0.113.66"}}, "pods": [
        {"name": "web-1", "namespace": "shop", "queries": [
            {"name": "evil.example.com", "every": "10s", "search": True}]}]}
    with _lab(scenario) as sl:
        log = _wait_for(lambda: sl.query_log("shop", "web-1") if len(sl.query_log("shop", "web-1")) >= 4 else None)
        assert [(q["name"], q["rcode"]) for q in log] == [
            ("evil.example.com.shop.svc.cluster.local", 3), ("evil.example.com.svc.cluster.local", 3),
            ("evil.example.com.cluster.local", 3), ("evil.example.com", 0)]
        assert {q["lookup"] for q in log} == {"evil.example.com"}
        coredns = sl.dns_log(f"kube-system/{sl.plan.dns_pods[0].name}")
        assert "query[A] evil.example.com.shop.svc.cluster.local from 10.244.0.3" in coredns
        assert "cluster.local" not in sl.dns_log("upstream")  # the cluster zone never leaves CoreDNS


@pytest.mark.lab
def test_host_network_pods_share_their_nodes_namespace_and_address():
    with _lab(SCENARIOS / "hostnetwork.yaml") as sl:
        core, _apps, _batch = _core(sl)
        node_b = sl.node_netns("node-b")
        assert sl.netns("monitoring", "agent-x7k2p") is node_b
        assert sl.netns("kube-system", "kube-proxy-m4n5b") is node_b
        hostnet = [p for p in core.list_pod_for_all_namespaces().items if p.spec.host_network]
        assert sorted((p.metadata.name, p.status.pod_ip, p.status.host_ip) for p in hostnet) == [
            ("agent-x7k2p", "172.18.0.11", "172.18.0.11"), ("kube-proxy-m4n5b", "172.18.0.11", "172.18.0.11")]
        sl.wait_until(2.5)
        log = sl.dns_log(f"kube-system/{sl.plan.dns_pods[0].name}")
        assert "query[A] evil.example.com from 172.18.0.11" in log
        assert "query[A] good.example.com from 172.18.0.11" in log
        assert "query[A] good.example.com from 10.244.0.3" in log


@pytest.mark.lab
def test_ephemeral_containers_run_in_the_pods_network_namespace():
    """The lab registers every pod's namespace with the kubelet — the node's for hostNetwork pods."""
    with _lab(SCENARIOS / "hostnetwork.yaml") as sl:
        core, _apps, _batch = _core(sl)
        show_addresses = "import socket; print(sorted(open('/proc/net/fib_trie').read().split()))"
        for namespace, name, want, not_there in (("shop", "web-5d8f7c9b6-x2k4p", "10.244.0.3", "172.18.0.11"),
                                                 ("monitoring", "agent-x7k2p", "172.18.0.11", "10.244.0.3")):
            body = {"spec": {"ephemeralContainers": [{
                "name": "probe", "image": "python:3.13-alpine", "command": ["python3", "-c", show_addresses]}]}}
            core.patch_namespaced_pod_ephemeralcontainers(name, namespace, body)

            def finished(namespace=namespace, name=name):
                statuses = core.read_namespaced_pod(name, namespace).status.ephemeral_container_statuses or []
                return any(st.state.terminated for st in statuses)

            assert _wait_for(finished, timeout=15)
            log = core.read_namespaced_pod_log(name, namespace, container="probe")
            assert f"'{want}'" in log and f"'{not_there}'" not in log, log


@pytest.mark.lab
def test_everything_is_torn_down():
    sl = _lab(SCENARIOS / "basic.yaml")
    sl.start()
    try:
        sl.wait_until(2.5)  # the CronJob pod is up too
        procs = list(sl.lab.processes)
        pids = [p.pid for p in procs]
        assert len(pids) >= 6  # upstream + 2 DNS pods + 3 queriers
        assert len(_dtlab_namespaces(sl.lab.tag)) >= 7
        workdir = sl.workdir
    finally:
        sl.stop()
    assert _dtlab_namespaces(sl.lab.tag) == []
    assert all(p.poll() is not None for p in procs)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert not workdir.exists()


@pytest.mark.lab
def test_runner_runs_a_command_against_the_cluster_and_returns_its_code():
    require_lab()
    script = ("kubectl get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name} "
              "{.status.podIP} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}'; "
              "command -v kubectl-dnstrace >/dev/null && echo dnstrace-on-path; exit 3")
    out = subprocess.run([PYTHON, "-m", "tests.lab", "run", "--quiet", "--scenario", str(SCENARIOS / "basic.yaml"),
                          "--", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert "shop/web-5d8f7c9b6-x2k4p 10.244.0.3 node-a Running" in out.stdout.splitlines(), out.stdout
    assert "dnstrace-on-path" in out.stdout
    assert "lab: scenario" in out.stderr and "lab:" not in out.stdout


@pytest.mark.lab
def test_runner_tears_down_on_ctrl_c():
    require_lab()
    proc = subprocess.Popen([PYTHON, "-m", "tests.lab", "run", "--quiet", "--scenario", str(SCENARIOS / "basic.yaml"),
                             # Not ``sh -c``: a Ctrl-C landing between its fork and the exec of
                             # the next command is caught by dash and lost to the child.
                             "--", PYTHON, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
                            cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        banner = proc.stderr.readline()
        tag = re.search(r"network namespaces dtlab-(\w+)-\*", banner).group(1)
        assert proc.stdout.readline().strip() == "ready"
        assert _dtlab_namespaces(tag)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code in (130, -signal.SIGINT, 128 + signal.SIGINT), proc.stderr.read()
    assert _dtlab_namespaces(tag) == []


@pytest.mark.lab
def test_runner_duration_interrupts_the_command():
    require_lab()
    started = time.monotonic()
    out = subprocess.run([PYTHON, "-m", "tests.lab", "run", "--quiet", "--duration", "2",
                          "--scenario", str(SCENARIOS / "ip-reuse.yaml"), "--", "sleep", "60"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode in (130, -signal.SIGINT), out.stderr
    assert "duration reached" in out.stderr
    assert time.monotonic() - started < 30


@pytest.mark.lab
def test_up_prints_the_kubeconfig_and_tears_down_after_its_duration():
    require_lab()
    out = subprocess.run([PYTHON, "-m", "tests.lab", "up", "--duration", "1", "--scenario",
                          str(SCENARIOS / "ip-reuse.yaml")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kubeconfig = re.search(r"^export KUBECONFIG=(\S+)$", out.stdout, re.M).group(1)
    assert not Path(kubeconfig).exists()  # removed with the rest
    tag = re.search(r"network namespaces dtlab-(\w+)-\*", out.stderr).group(1)
    assert _dtlab_namespaces(tag) == []


@pytest.mark.lab
@pytest.mark.slow
def test_incident_demo_names_both_culprits_and_no_neighbour():
    """The README's demo: the trace through kubectl finds the quiet Deployment pod and the
    six-second CronJob pod among busy benign neighbours, and blames no one else."""
    require_lab()
    import json

    out = subprocess.run([PYTHON, "-m", "tests.lab", "run", "--quiet", "--scenario", str(SCENARIOS / "incident.yaml"),
                          "--", "kubectl", "dnstrace", "coredns", "--domain", "evil.example.com",
                          "--duration", "11s", "-o", "ndjson"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    clients = {(e["client"]["namespace"], e["client"]["name"], e["client"]["workload"])
               for e in events if e.get("type") == "dns" and e["qr"] == "query" and e["dport"] == 53
               and e["dst"] != "172.18.0.53"}
    assert clients == {("shop", "checkout-84d6c7b9f-tw7pn", "Deployment/checkout"),
                       ("batch", "backup-29410020-h7k2m", "CronJob/backup")}
    assert {e["qname"] for e in events if e.get("type") == "dns"} <= {"evil.example.com", "c2.evil.example.com"}
