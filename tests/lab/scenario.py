"""A scenario file brought to life: network, DNS servers, API objects, querying pods, schedule.

Usage from a test::

    from tests.lab.scenario import ScenarioLab

    with ScenarioLab("tests/scenarios/basic.yaml") as sl:   # or a Scenario, or a dict
        env = sl.env()                     # KUBECONFIG (+ PATH with the venv's bin)
        sl.kubeconfig                      # Path of the admin kubeconfig
        sl.pod_ip("shop", "web-5d8f7c9b6-x2k4p")
        sl.wait_until(3.0)                 # scenario time (seconds since the clock started)
        sl.query_log("shop", "web-5d8f7c9b6-x2k4p")   # what that pod asked, one dict per query

``start()`` = ``up()`` (namespaces, dnsmasq servers, API server and every pod whose
``start`` is 0) followed by ``begin()`` (the clock: queries start, timed pods come and go).
Everything is torn down by ``stop()`` — also when bring-up fails half way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab import objects, resolvers
from tests.lab.netns import Lab, Netns
from tests.lab.plan import DNS_NAMESPACE, Plan, PodPlan, build_plan
from tests.lab.resolvers import NODE_LOCAL_ADDRESS, Record
from tests.lab.spec import Scenario, ScenarioError, load_scenario, parse_scenario
from tests.lab.topology import Topology

__all__ = ["LifecycleEvent", "ScenarioError", "ScenarioLab", "load_scenario", "parse_scenario"]

QUERIER = Path(__file__).with_name("querier.py")
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass
class LifecycleEvent:
    """A pod appearing in or leaving the API, in scenario time and wall-clock time."""

    t: float
    wall: float
    action: str  # "created", "finished" (Succeeded, network gone) or "deleted"
    namespace: str
    name: str
    ip: str


@dataclass
class _LivePod:
    plan: PodPlan
    netns: Netns | None  # None: in the API only (a Pending, Succeeded or Failed pod)
    querier: subprocess.Popen | None = None
    own_netns: bool = True


@dataclass
class _Action:
    at: float
    action: str  # "create", "finish" or "delete"
    pod: PodPlan = field(compare=False)


class ScenarioLab:
    """One running scenario. See the module docstring; format in tests/lab/README.md."""

    def __init__(self, scenario: Scenario | Mapping | str | os.PathLike, *, cluster=None,
                 workdir: str | os.PathLike | None = None, lab: Lab | None = None) -> None:
        if isinstance(scenario, Scenario):
            self.scenario = scenario
        elif isinstance(scenario, Mapping):
            self.scenario = parse_scenario(scenario)
        else:
            self.scenario = load_scenario(scenario)
        self.plan: Plan = build_plan(self.scenario)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="dtlab-scenario-"))
        self.kubeconfig = self.workdir / "kubeconfig"
        self._own_lab = lab is None
        self.lab = lab or Lab()
        self._own_cluster = cluster is None
        self.cluster = cluster
        self.topology = Topology(self.lab, self.scenario.nodes)
        self.events: list[LifecycleEvent] = []
        self.errors: list[str] = []
        self.t0: float | None = None
        self._live: dict[tuple[str, str], _LivePod] = {}
        self._dns_logs: dict[str, Path] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._started = False
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> ScenarioLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> ScenarioLab:
        self.up()
        self.begin()
        return self

    def up(self) -> None:
        """Build everything that exists at scenario time 0. Queries start with ``begin()``."""
        try:
            self._up()
        except BaseException:
            self.stop()
            raise

    def _up(self) -> None:
        self._started = True
        (self.workdir / "queries").mkdir(parents=True, exist_ok=True)
        (self.workdir / "dns").mkdir(parents=True, exist_ok=True)
        self.topology.build()
        self._start_upstream()
        if self.cluster is None:
            from tests.lab.cluster import SimCluster

            self.cluster = SimCluster()
            self.cluster.start()
        self.cluster.write_kubeconfig(str(self.kubeconfig), user="admin")
        self._create_static_objects()
        for pod in self.plan.dns_pods:
            self._create_pod(pod)
        if self.scenario.node_local.enabled:
            for pod in self.plan.node_local_pods:
                self._create_pod(pod)
        self._wait_dns_ready()
        for pod in self.plan.client_pods:
            if pod.start == 0:
                self._create_pod(pod)

    def begin(self) -> None:
        """Start the scenario clock: static pods start asking, timed pods get scheduled."""
        with self._lock:
            self.t0 = time.monotonic()
            for live in self._live.values():
                self._start_querier(live)
        actions = [_Action(p.start, "create", p) for p in self.plan.client_pods if p.start > 0]
        actions += [_Action(p.finish, "finish", p) for p in self.plan.client_pods if p.finish is not None]
        actions += [_Action(p.stop, "delete", p) for p in self.plan.client_pods if p.stop is not None]
        # At one instant, free addresses (finish, delete) before handing them out again (create).
        actions.sort(key=lambda a: (a.at, a.action == "create"))
        self._scheduler = threading.Thread(target=self._run_schedule, args=(actions,),
                                           name="scenario-schedule", daemon=True)
        self._scheduler.start()

    def stop(self) -> None:
        """Tear everything down: schedule, queriers, servers, API server, namespaces, files.

        Idempotent, and safe after a bring-up that failed half way."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=30)
        with self._lock:
            for live in self._live.values():
                self._stop_querier(live)
            self._live.clear()
        if self.cluster is not None and self._own_cluster and self._started:
            with contextlib.suppress(Exception):
                self.cluster.stop()
        if self._own_lab:
            self.lab.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- what tests ask ----------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds of scenario time (0 before ``begin()``)."""
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    def wait_until(self, t: float) -> None:
        """Sleep until scenario time ``t``."""
        delay = t - self.elapsed()
        if delay > 0:
            time.sleep(delay)

    def pod(self, namespace: str, name: str) -> PodPlan:
        return self.plan.pod(namespace, name)

    def pod_ip(self, namespace: str, name: str) -> str:
        return self.plan.pod(namespace, name).ip

    def is_live(self, namespace: str, name: str) -> bool:
        with self._lock:
            return (namespace, name) in self._live

    def netns(self, namespace: str, name: str) -> Netns:
        """The network namespace a live pod runs in (its node's for a hostNetwork pod)."""
        with self._lock:
            live = self._live.get((namespace, name))
        if live is None or live.netns is None:
            raise KeyError(f"pod {namespace}/{name} is not running now")
        return live.netns

    def node_netns(self, node: str) -> Netns:
        return self.topology.nodes[node].ns

    @property
    def dns_pod_ips(self) -> list[str]:
        return [p.ip for p in self.plan.dns_pods]

    @property
    def upstream_ip(self) -> str:
        return self.topology.upstream_ip

    @property
    def upstream_netns(self) -> Netns:
        assert self.topology.upstream is not None
        return self.topology.upstream

    def query_log(self, namespace: str, name: str) -> list[dict]:
        """Every query the pod's querier made so far (one dict per query, see querier.py)."""
        path = self._query_log_path(self.plan.pod(namespace, name))
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]

    def dns_log(self, server: str) -> str:
        """dnsmasq's query log of ``"upstream"``, a DNS pod (``"kube-system/<name>"``) or a
        node-local-dns instance (``"node-local-dns/<node>"``)."""
        path = self._dns_logs[server]
        return path.read_text() if path.exists() else ""

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for commands against this cluster: KUBECONFIG, and PATH starting with
        the running interpreter's bin directory so ``kubectl dnstrace`` finds the console script."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bindir, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir]])
        return env

    def summary(self) -> str:
        """A human-readable table of the scenario's pods (for the runner's stderr)."""
        return self.layout(self.plan)

    @staticmethod
    def layout(plan: Plan) -> str:
        rows = [f"{'NAMESPACE':<14} {'POD':<40} {'NODE':<10} {'IP':<15} {'DNS':<15} WHEN"]
        for p in plan.pods:
            when = "" if p.role != "client" else (
                f"{p.start:g}s..{p.stop:g}s" if p.stop is not None else (f"from {p.start:g}s" if p.start else ""))
            if p.finish is not None:
                when = f"{when} finish {p.finish:g}s".strip()
            if p.phase != "Running":
                when = f"{when} {p.phase}".strip()
            rows.append(f"{p.namespace:<14} {p.name:<40} {p.node:<10} {p.ip:<15} {p.dns_server or '':<15} {when}")
        return "\n".join(rows)

    # -- building ----------------------------------------------------------------------------

    def _start_upstream(self) -> None:
        records = [r for r in self.scenario.dns.records if not self._in_cluster_domain(r.name)]
        log = self.workdir / "dns" / "upstream.log"
        self._dns_logs["upstream"] = log
        assert self.topology.upstream is not None
        self.topology.upstream.popen(
            resolvers.upstream_command(self.upstream_ip, records, self.scenario.dns.ttl, str(log)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _in_cluster_domain(self, name: str) -> bool:
        domain = self.scenario.dns.cluster_domain
        return name == domain or name.endswith("." + domain)

    def _cluster_records(self) -> list[Record]:
        domain = self.scenario.dns.cluster_domain
        records = [Record(f"kube-dns.{DNS_NAMESPACE}.svc.{domain}", "A", self.scenario.dns.service_ip)]
        if self.scenario.node_local.enabled:
            records.append(Record(f"kube-dns-upstream.{DNS_NAMESPACE}.svc.{domain}", "A",
                                  objects.KUBE_DNS_UPSTREAM_IP))
        records += [Record(f"{s.name}.{s.namespace}.svc.{domain}", "A", s.cluster_ip)
                    for s in self.scenario.services]
        records += [r for r in self.scenario.dns.records if self._in_cluster_domain(r.name)]
        return records

    def _create_static_objects(self) -> None:
        store = self.cluster.store
        wanted = {ns.name: ns.labels for ns in self.scenario.namespaces}
        names = list(SYSTEM_NAMESPACES) + sorted({p.namespace for p in self.plan.pods} | set(wanted))
        for name in dict.fromkeys(names):
            obj = objects.namespace(name, wanted.get(name))
            existing = store.find("namespaces", name)
            if existing is None:
                store.create(obj)
            else:
                existing.setdefault("metadata", {}).setdefault("labels", {}).update(obj["metadata"]["labels"])
                store.update(existing, check_rv=False)
        for node in self.plan.nodes:
            store.create(objects.node(node))
        # Parents before children, so ownerReferences never point at something not yet there.
        order = {"Deployment": 0, "CronJob": 0, "DaemonSet": 0, "StatefulSet": 0, "ReplicaSet": 1, "Job": 1}
        for owner in sorted(self.plan.owners, key=lambda o: order[o.kind]):
            store.create(objects.owner_object(owner, self.plan.pods))
        for obj in objects.dns_services(self.plan):
            store.create(obj)
        for svc in self.scenario.services:
            ports = [{"name": f"p{port}", "port": port, "protocol": "TCP", "targetPort": port} for port in svc.ports]
            store.create(objects.service(svc.name, svc.namespace, svc.cluster_ip, svc.selector, ports))
            store.create(objects.endpoints(svc.name, svc.namespace, [], ports))

    def _dns_server_command(self, pod: PodPlan) -> list[str]:
        if pod.role == "coredns":
            log = self.workdir / "dns" / f"{pod.name}.log"
            self._dns_logs[f"{pod.namespace}/{pod.name}"] = log
            return resolvers.cluster_dns_command(pod.ip, self.upstream_ip, self.scenario.dns.cluster_domain,
                                                 self._cluster_records(), self.scenario.dns.ttl, str(log))
        log = self.workdir / "dns" / f"node-local-dns-{pod.node}.log"
        self._dns_logs[f"node-local-dns/{pod.node}"] = log
        return resolvers.node_local_command(self.dns_pod_ips, self.upstream_ip, self.scenario.dns.cluster_domain,
                                            self.scenario.node_local.forward_all, str(log))

    def _wait_dns_ready(self) -> None:
        assert self.topology.upstream is not None
        resolvers.wait_listening(self.topology.upstream, self.upstream_ip)
        with self._lock:
            lives = list(self._live.values())
        for live in lives:
            if live.plan.role == "coredns":
                resolvers.wait_listening(live.netns, live.plan.ip)
            elif live.plan.role == "node-local-dns":
                resolvers.wait_listening(live.netns, NODE_LOCAL_ADDRESS)

    def _create_pod(self, pod: PodPlan) -> None:
        """Pending in the API → network (CNI) → kubelet knows its netns → Running → processes."""
        store = self.cluster.store
        node = self.plan.node(pod.node)
        created = time.time()
        store.create(objects.pod(pod, node, "Pending", created))
        if pod.phase != "Running":
            if pod.phase != "Pending":
                final = objects.pod(pod, node, pod.phase, created)
                store.mutate("pods", pod.name, pod.namespace, lambda cur: {**cur, "status": final["status"]})
            with self._lock:
                self._live[pod.key] = _LivePod(pod, None, own_netns=False)
            self.events.append(LifecycleEvent(self.elapsed(), time.time(), "created", pod.namespace, pod.name, pod.ip))
            return
        if pod.host_network:
            netns, own = self.topology.nodes[pod.node].ns, False
            if pod.role == "node-local-dns":
                self.topology.add_node_local_address(pod.node, NODE_LOCAL_ADDRESS)
        else:
            netns, own = self.topology.add_pod(pod.netns_role, pod.node, pod.ip), True
        live = _LivePod(pod, netns, own_netns=own)
        with self._lock:
            self._live[pod.key] = live
        self.cluster.kubelet.register_pod_netns(pod.namespace, pod.name, netns.name)
        if pod.role in ("coredns", "node-local-dns"):
            netns.popen(self._dns_server_command(pod), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running = objects.pod(pod, node, "Running", created)
        store.mutate("pods", pod.name, pod.namespace, lambda cur: {**cur, "status": running["status"]})
        self.events.append(LifecycleEvent(self.elapsed(), time.time(), "created", pod.namespace, pod.name, pod.ip))
        self._sync_endpoints()
        if self.t0 is not None:
            self._start_querier(live)

    def _finish_pod(self, pod: PodPlan, live: _LivePod | None = None) -> None:
        """The pod's process exits: Succeeded in the API (podIP stays in its status, as on a
        real cluster), its network goes and the CNI may hand the IP to another pod."""
        with self._lock:
            live = live or self._live.get(pod.key)
        if live is None or live.netns is None:
            return
        self._stop_querier(live)
        done = objects.pod(pod, self.plan.node(pod.node), "Succeeded")
        self.cluster.store.mutate("pods", pod.name, pod.namespace, lambda cur: {**cur, "status": done["status"]})
        self.cluster.kubelet.register_pod_netns(pod.namespace, pod.name, None)
        if live.own_netns:
            self.topology.remove_pod(live.netns)
        live.netns = None
        self.events.append(LifecycleEvent(self.elapsed(), time.time(), "finished", pod.namespace, pod.name, pod.ip))
        self._sync_endpoints()

    def _delete_pod(self, pod: PodPlan) -> None:
        """Graceful deletion as the API shows it: (Succeeded for Job pods) → deletionTimestamp → gone."""
        with self._lock:
            live = self._live.pop(pod.key, None)
        if live is None:
            return
        self._stop_querier(live)
        store = self.cluster.store
        if pod.owner is not None and pod.owner.kind == "Job" and live.netns is not None:
            self._finish_pod(pod, live)

        def terminating(cur: dict) -> dict:
            cur["metadata"]["deletionTimestamp"] = objects.timestamp()
            cur["metadata"]["deletionGracePeriodSeconds"] = 0
            return cur

        store.mutate("pods", pod.name, pod.namespace, terminating)
        store.delete("pods", pod.name, pod.namespace)
        if live.netns is not None:
            self.cluster.kubelet.register_pod_netns(pod.namespace, pod.name, None)
        if live.own_netns and live.netns is not None:
            self.topology.remove_pod(live.netns)
        self.events.append(LifecycleEvent(self.elapsed(), time.time(), "deleted", pod.namespace, pod.name, pod.ip))
        self._sync_endpoints()

    def _sync_endpoints(self) -> None:
        if not self.scenario.services:
            return
        with self._lock:
            live = [lp.plan for lp in self._live.values() if lp.netns is not None]
        for svc in self.scenario.services:
            ready = [p for p in live if p.namespace == svc.namespace and svc.selector
                     and all(p.labels.get(k) == v for k, v in svc.selector.items())]
            ports = [{"name": f"p{port}", "port": port, "protocol": "TCP"} for port in svc.ports]
            subsets = objects.endpoints(svc.name, svc.namespace, ready, ports)["subsets"]
            self.cluster.store.mutate("endpoints", svc.name, svc.namespace, lambda cur, s=subsets: {**cur, "subsets": s})

    def _query_log_path(self, pod: PodPlan) -> Path:
        return self.workdir / "queries" / f"{pod.namespace}_{pod.name}.jsonl"

    def _start_querier(self, live: _LivePod) -> None:
        pod = live.plan
        if pod.role != "client" or not pod.queries or live.querier is not None:
            return
        domain = self.scenario.dns.cluster_domain
        spec = {"server": pod.dns_server, "ndots": 5,
                "search": [f"{pod.namespace}.svc.{domain}", f"svc.{domain}", domain],
                "queries": [{"name": q.name, "type": q.qtype, "every": q.every, "tcp": q.tcp, "count": q.count,
                             "server": q.server, "search": q.search, "offset": q.offset} for q in pod.queries]}
        live.querier = live.netns.popen(
            [sys.executable, "-I", str(QUERIER), "--spec", json.dumps(spec), "--log", str(self._query_log_path(pod))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _stop_querier(self, live: _LivePod) -> None:
        proc = live.querier
        if proc is None:
            return
        live.querier = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=3)
        with contextlib.suppress(ValueError):
            self.lab.processes.remove(proc)

    def _run_schedule(self, actions: list[_Action]) -> None:
        for action in actions:
            assert self.t0 is not None
            if self._stop.wait(max(0.0, self.t0 + action.at - time.monotonic())):
                return
            try:
                if action.action == "create":
                    self._create_pod(action.pod)
                elif action.action == "finish":
                    self._finish_pod(action.pod)
                else:
                    self._delete_pod(action.pod)
            except Exception as exc:  # a failed step must not kill the schedule silently
                message = f"scenario: {action.action} {action.pod.namespace}/{action.pod.name} failed: {exc}"
                self.errors.append(message)
                print(message, file=sys.stderr)
