"""From a parsed scenario to a concrete cluster layout: names, nodes, IPs, owners, DNS servers.

Pure and deterministic (no namespaces, no processes): the same scenario always gives the
same pod names, IPs and UIDs, so tests can state expectations up front and the layout can be
checked without root.

Rules (documented for scenario authors in tests/lab/README.md):
- node ``i`` (in file order) has InternalIP 172.18.0.(10+i) and podCIDR 10.244.i.0/24;
- cluster DNS replicas go round-robin over the nodes and take the first free pod IPs (.2 up);
- client pods without ``node:`` go round-robin over the nodes in file order; pods without
  ``ip:`` take the next free address of their node; an explicit ``ip:`` is never handed out
  to anyone else, and two pods may share one only if their lifetimes do not overlap;
- a client asks 169.254.20.10 (node-local-dns) when ``nodeLocalDNS`` is on, otherwise DNS
  replica ``k mod replicas`` where ``k`` is its position among the Running client pods.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid
from dataclasses import dataclass, field

from tests.lab import topology
from tests.lab.resolvers import NODE_LOCAL_ADDRESS
from tests.lab.spec import PodSpec, QuerySpec, Scenario, ScenarioError

# Kubernetes' rand.SafeEncodeString alphabet: no vowels, no 0/1/3 (no accidental words).
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
UID_NAMESPACE = uuid.UUID("6c1d3f1e-4a57-4d1c-9d5e-2f0b7c0a5e11")
DNS_NAMESPACE = "kube-system"
COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.11.3"
NODE_LOCAL_IMAGE = "registry.k8s.io/dns/k8s-dns-node-cache:1.23.1"


def safe_string(seed: str, length: int) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:length])


def stable_uid(*parts: str) -> str:
    return str(uuid.uuid5(UID_NAMESPACE, "/".join(parts)))


@dataclass
class NodePlan:
    name: str
    index: int
    ip: str
    pod_cidr: str
    gateway: str
    uid: str


@dataclass
class OwnerPlan:
    """A workload object (Deployment, ReplicaSet, DaemonSet, StatefulSet, Job, CronJob)."""

    kind: str
    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    selector: dict[str, str]
    template_labels: dict[str, str]
    parent: OwnerPlan | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


@dataclass
class PodPlan:
    namespace: str
    name: str
    node: str
    ip: str
    host_network: bool
    labels: dict[str, str]
    owner: OwnerPlan | None
    uid: str
    role: str  # "client", "coredns" or "node-local-dns"
    container: str
    image: str
    start: float = 0.0
    stop: float | None = None
    queries: list[QuerySpec] = field(default_factory=list)
    dns_server: str | None = None
    phase: str = "Running"
    finish: float | None = None

    @property
    def network_end(self) -> float | None:
        """When the pod stops holding its IP: it finished, or was deleted."""
        return self.finish if self.finish is not None else self.stop

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def netns_role(self) -> str:
        return f"{self.role[:4]}-{self.namespace[:12]}-{self.name}"[:44]


@dataclass
class Plan:
    scenario: Scenario
    nodes: list[NodePlan]
    owners: list[OwnerPlan]
    pods: list[PodPlan]  # DNS pods first, then node-local-dns, then clients in file order

    @property
    def dns_pods(self) -> list[PodPlan]:
        return [p for p in self.pods if p.role == "coredns"]

    @property
    def node_local_pods(self) -> list[PodPlan]:
        return [p for p in self.pods if p.role == "node-local-dns"]

    @property
    def client_pods(self) -> list[PodPlan]:
        return [p for p in self.pods if p.role == "client"]

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)

    def pod(self, namespace: str, name: str) -> PodPlan:
        for pod in self.pods:
            if pod.key == (namespace, name):
                return pod
        raise KeyError(f"no pod {namespace}/{name} in the scenario")


class _Owners:
    """Creates each owner once, with realistic names and labels, keyed by kind/namespace/name."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str, str], OwnerPlan] = {}
        self.counters: dict[tuple[str, str, str], int] = {}

    def get(self, kind: str, namespace: str, name: str, parent: OwnerPlan | None = None,
            extra: dict[str, str] | None = None) -> OwnerPlan:
        key = (kind, namespace, name)
        if key not in self.by_key:
            uid = stable_uid(kind, namespace, name)
            base = dict(parent.template_labels) if parent else {"app": name}
            if kind == "Job":
                job_labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                              "controller-uid": uid, "job-name": name}
                template = {**base, **job_labels}
                selector = {"batch.kubernetes.io/controller-uid": uid}
            else:
                template = {**base, **(extra or {})}
                selector = {k: v for k, v in template.items() if k != "controller-revision-hash"}
            self.by_key[key] = OwnerPlan(kind, namespace, name, uid, labels=dict(base),
                                         selector=selector, template_labels=template, parent=parent)
        return self.by_key[key]

    def next_index(self, key: tuple[str, str, str]) -> int:
        self.counters[key] = self.counters.get(key, -1) + 1
        return self.counters[key]


def _owner_and_name(spec: PodSpec, owners: _Owners, seed: str) -> tuple[OwnerPlan | None, str, dict[str, str]]:
    """The pod's direct owner, its name and its controller-given labels."""
    ns, wl = spec.namespace, spec.workload
    suffix = safe_string(seed, 5)
    if wl is None:
        return None, spec.name or "", {"run": spec.name or ""}
    if wl.kind == "Deployment":
        match = re.fullmatch(rf"{re.escape(wl.name)}-([a-z0-9]{{6,10}})-[a-z0-9]{{5}}", spec.name or "")
        rs_hash = match.group(1) if match else safe_string(f"{ns}/{wl.name}/rs", 10)
        deploy = owners.get("Deployment", ns, wl.name)
        rs = owners.get("ReplicaSet", ns, f"{wl.name}-{rs_hash}", deploy, {"pod-template-hash": rs_hash})
        return rs, spec.name or f"{rs.name}-{suffix}", dict(rs.template_labels)
    if wl.kind == "CronJob":
        match = re.fullmatch(rf"({re.escape(wl.name)}-\d{{1,10}})-[a-z0-9]{{5}}", spec.name or "")
        cron = owners.get("CronJob", ns, wl.name)
        if match:
            job_name = match.group(1)
        else:  # CronJob names its Jobs <cronjob>-<scheduled time in minutes since the epoch>
            job_name = f"{wl.name}-{29410000 + owners.next_index(cron.key)}"
        job = owners.get("Job", ns, job_name, cron)
        return job, spec.name or f"{job.name}-{suffix}", dict(job.template_labels)
    if wl.kind == "StatefulSet":
        revision = f"{wl.name}-{safe_string(f'{ns}/{wl.name}/rev', 10)}"
        sts = owners.get("StatefulSet", ns, wl.name, extra={"controller-revision-hash": revision})
        name = spec.name or f"{wl.name}-{owners.next_index(sts.key)}"
        ordinal = name.rsplit("-", 1)[-1]
        labels = {**sts.template_labels, "statefulset.kubernetes.io/pod-name": name}
        if ordinal.isdigit():
            labels["apps.kubernetes.io/pod-index"] = ordinal
        return sts, name, labels
    if wl.kind == "DaemonSet":
        extra = {"controller-revision-hash": safe_string(f"{ns}/{wl.name}/rev", 10),
                 "pod-template-generation": "1"}
        owner = owners.get("DaemonSet", ns, wl.name, extra=extra)
    elif wl.kind == "Job":
        owner = owners.get("Job", ns, wl.name)
    else:  # ReplicaSet without a Deployment
        owner = owners.get("ReplicaSet", ns, wl.name)
    return owner, spec.name or f"{wl.name}-{suffix}", dict(owner.template_labels)


class _Addresses:
    """Per-node pod IP allocation that never hands out an address a scenario pinned."""

    def __init__(self, nodes: list[NodePlan], pinned: set[str]) -> None:
        self.next_host = {n.name: 2 for n in nodes}
        self.nodes = {n.name: n for n in nodes}
        self.pinned = pinned

    def allocate(self, node: str) -> str:
        net = ipaddress.ip_network(self.nodes[node].pod_cidr)
        while True:
            host = self.next_host[node]
            if host >= net.num_addresses - 1:
                raise ScenarioError(f"node {node}: its podCIDR {net} is full")
            self.next_host[node] = host + 1
            ip = str(net.network_address + host)
            if ip not in self.pinned:
                return ip


def build_plan(scenario: Scenario) -> Plan:
    nodes = [NodePlan(name, i, topology.node_ip(i), topology.pod_cidr(i), topology.pod_gateway(i),
                      stable_uid("Node", name)) for i, name in enumerate(scenario.nodes)]
    if len(nodes) > topology.MAX_NODES:
        raise ScenarioError(f"{scenario.source}: at most {topology.MAX_NODES} nodes")
    pinned = {p.ip for p in scenario.pods if p.ip}
    addresses = _Addresses(nodes, pinned)
    owners = _Owners()
    pods: list[PodPlan] = []

    rs_hash = safe_string("coredns/rs", 10)
    coredns = owners.get("Deployment", DNS_NAMESPACE, "coredns", extra={"k8s-app": "kube-dns"})
    coredns.labels = {"k8s-app": "kube-dns"}
    coredns.template_labels = coredns.selector = {"k8s-app": "kube-dns"}
    coredns_rs = owners.get("ReplicaSet", DNS_NAMESPACE, f"coredns-{rs_hash}", coredns,
                            {"pod-template-hash": rs_hash})
    for r in range(scenario.dns.replicas):
        node = nodes[r % len(nodes)]
        name = f"{coredns_rs.name}-{safe_string(f'coredns/{r}', 5)}"
        pods.append(PodPlan(DNS_NAMESPACE, name, node.name, addresses.allocate(node.name), False,
                            dict(coredns_rs.template_labels), coredns_rs, stable_uid("Pod", DNS_NAMESPACE, name),
                            "coredns", "coredns", COREDNS_IMAGE))

    if scenario.node_local.enabled:
        ds = owners.get("DaemonSet", DNS_NAMESPACE, "node-local-dns",
                        extra={"controller-revision-hash": safe_string("node-local-dns/rev", 10),
                               "pod-template-generation": "1"})
        ds.labels = {"k8s-app": "node-local-dns"}
        ds.template_labels = {"k8s-app": "node-local-dns", **{k: v for k, v in ds.template_labels.items()
                                                              if k != "app"}}
        ds.selector = {"k8s-app": "node-local-dns"}
        for node in nodes:
            name = f"node-local-dns-{safe_string(f'node-local-dns/{node.name}', 5)}"
            pods.append(PodPlan(DNS_NAMESPACE, name, node.name, node.ip, True, dict(ds.template_labels), ds,
                                stable_uid("Pod", DNS_NAMESPACE, name), "node-local-dns", "node-cache",
                                NODE_LOCAL_IMAGE))

    dns_ips = [p.ip for p in pods if p.role == "coredns"]
    unpinned = 0
    for i, spec in enumerate(scenario.pods):
        where = f"{scenario.source}: pods[{i}]"
        owner, name, labels = _owner_and_name(spec, owners, f"{spec.namespace}/{i}")
        node_name = spec.node
        if spec.ip and node_name is None:
            node_name = next((n.name for n in nodes
                              if ipaddress.ip_address(spec.ip) in ipaddress.ip_network(n.pod_cidr)), None)
            if node_name is None:
                raise ScenarioError(f"{where}.ip: {spec.ip} is in no node's podCIDR (10.244.<node>.0/24)")
        if node_name is None:
            node_name = nodes[unpinned % len(nodes)].name
            unpinned += 1
        node = next(n for n in nodes if n.name == node_name)
        if spec.host_network:
            ip = node.ip
        elif spec.ip:
            if ipaddress.ip_address(spec.ip) not in ipaddress.ip_network(node.pod_cidr) or spec.ip == node.gateway:
                raise ScenarioError(f"{where}.ip: {spec.ip} is not a pod address of {node.name} ({node.pod_cidr})")
            ip = spec.ip
        else:
            ip = addresses.allocate(node.name)
        client_index = len([p for p in pods if p.role == "client" and p.phase == "Running"])
        server = NODE_LOCAL_ADDRESS if scenario.node_local.enabled else dns_ips[client_index % len(dns_ips)]
        pods.append(PodPlan(spec.namespace, name, node.name, ip, spec.host_network, {**labels, **spec.labels},
                            owner, stable_uid("Pod", spec.namespace, name, str(i)), "client", "app", spec.image,
                            spec.start, spec.stop, list(spec.queries), server, spec.phase, spec.finish))
    _check_unique(pods, scenario.source)
    return Plan(scenario, nodes, list(owners.by_key.values()), pods)


def _overlaps(a: PodPlan, b: PodPlan, network: bool = False) -> bool:
    a_stop = a.network_end if network else a.stop
    b_stop = b.network_end if network else b.stop
    a_end = a_stop if a_stop is not None else float("inf")
    b_end = b_stop if b_stop is not None else float("inf")
    return a.start < b_end and b.start < a_end


def _check_unique(pods: list[PodPlan], source: str) -> None:
    for i, a in enumerate(pods):
        for b in pods[i + 1:]:
            if a.key == b.key and _overlaps(a, b):
                raise ScenarioError(f"{source}: two pods named {a.namespace}/{a.name} exist at the same time")
            if not a.host_network and not b.host_network and a.ip == b.ip and _overlaps(a, b, network=True):
                raise ScenarioError(f"{source}: pods {a.namespace}/{a.name} and {b.namespace}/{b.name} hold "
                                    f"{a.ip} at the same time (reuse an IP only after the first pod stops)")
