"""The scenario file: parsing and validation into plain dataclasses (format: tests/lab/README.md).

Strict on purpose: a misspelt key (``hostnetwork``, ``querys``) would otherwise silently give
a test a different cluster than its author meant, so every unknown key, bad duration, bad
address or impossible schedule is a ``ScenarioError`` naming where it is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.lab.querier import type_code
from tests.lab.resolvers import Record

WORKLOAD_KINDS = {
    "deployment": "Deployment", "deploy": "Deployment",
    "replicaset": "ReplicaSet", "rs": "ReplicaSet",
    "daemonset": "DaemonSet", "ds": "DaemonSet",
    "statefulset": "StatefulSet", "sts": "StatefulSet",
    "job": "Job",
    "cronjob": "CronJob", "cj": "CronJob",
}
POD_SECURITY_LEVELS = ("privileged", "baseline", "restricted")
DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")


class ScenarioError(ValueError):
    """The scenario file is wrong; the message says where and what."""


@dataclass(frozen=True)
class QuerySpec:
    name: str
    qtype: str = "A"
    every: float = 1.0
    tcp: bool = False
    count: int | None = None  # stop after this many (None: until the pod stops)
    server: str | None = None  # ask this address instead of the pod's cluster DNS
    search: bool = False  # expand through the pod's resolv.conf search list (ndots:5)
    offset: float = 0.0  # delay before the first query


@dataclass(frozen=True)
class WorkloadRef:
    kind: str  # Deployment, ReplicaSet, DaemonSet, StatefulSet, Job, CronJob
    name: str


@dataclass
class PodSpec:
    name: str | None
    namespace: str = "default"
    node: str | None = None
    workload: WorkloadRef | None = None
    start: float = 0.0
    stop: float | None = None
    finish: float | None = None  # turns Succeeded (network gone, IP free, object kept) at this time
    host_network: bool = False
    ip: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    image: str = "registry.example.com/app:1.0"
    queries: list[QuerySpec] = field(default_factory=list)
    phase: str = "Running"  # Pending, Succeeded, Failed: in the API only, no network, no queries


@dataclass
class DnsSpec:
    replicas: int = 1
    records: list[Record] = field(default_factory=list)
    ttl: int = 5
    cluster_domain: str = "cluster.local"
    service_ip: str = "10.96.0.10"


@dataclass
class NodeLocalSpec:
    enabled: bool = False
    forward_all: bool = False  # True: every name goes to CoreDNS (stock: only the cluster domain)


@dataclass
class NamespaceSpec:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ServiceSpec:
    name: str
    namespace: str
    cluster_ip: str
    selector: dict[str, str]
    ports: list[int]


@dataclass
class Scenario:
    nodes: list[str]
    dns: DnsSpec
    node_local: NodeLocalSpec
    pods: list[PodSpec]
    namespaces: list[NamespaceSpec]
    services: list[ServiceSpec]
    source: str = "<scenario>"


def parse_duration(value, where: str) -> float:
    """Seconds from ``2s``, ``500ms``, ``1m`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: {value!r} is not a duration (write 2s, 500ms or 1.5)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise ScenarioError(f"{where}: {value!r} is not a duration (write 2s, 500ms or 1.5)")
        number, unit = float(match.group(1)), match.group(2) or "s"
        seconds = number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]
    if seconds < 0:
        raise ScenarioError(f"{where}: {value!r} is negative")
    return seconds


def _mapping(value, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise ScenarioError(f"{where}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        raise ScenarioError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _check_keys(data: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ScenarioError(f"{where}: unknown key {', '.join(map(repr, unknown))} (known: {', '.join(known)})")


def _str(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ScenarioError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(f"{where}: expected true or false, got {value!r}")
    return value


def _dns_label(value, where: str, max_len: int = 63) -> str:
    text = _str(value, where)
    if len(text) > max_len or not all(DNS_NAME.match(part) for part in text.split(".")):
        raise ScenarioError(f"{where}: {text!r} is not a valid Kubernetes name (lower case, digits, '-')")
    return text


def _labels(value, where: str) -> dict[str, str]:
    labels = _mapping(value, where)
    return {str(k): "" if v is None else str(v) for k, v in labels.items()}


def _ipv4(value, where: str) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise ScenarioError(f"{where}: {value!r} is not an IPv4 address") from None


def parse_records(value, where: str) -> list[Record]:
    """``{name: IP | [IP...] | {A: .., AAAA: .., TXT: .., CNAME: ..}}``; ``*.name`` is a wildcard."""
    records: list[Record] = []
    for raw_name, raw in _mapping(value, where).items():
        name = _str(raw_name, where).rstrip(".").lower()
        here = f"{where}.{name}"
        wildcard = name.startswith("*.")
        if wildcard:
            name = name[2:]
        if isinstance(raw, Mapping):
            typed = {str(k).upper(): v for k, v in raw.items()}
            _check_keys(typed, ("A", "AAAA", "TXT", "CNAME"), here)
        else:
            typed = {"": raw}
        for rtype, values in typed.items():
            for item in values if isinstance(values, list) else [values]:
                text = _str(str(item) if item is not None else None, here)
                kind = rtype
                if kind in ("", "A", "AAAA"):
                    try:
                        addr = ipaddress.ip_address(text)
                    except ValueError:
                        raise ScenarioError(f"{here}: {text!r} is not an IP address") from None
                    if kind and kind != ("A" if addr.version == 4 else "AAAA"):
                        raise ScenarioError(f"{here}: {text!r} is not an {kind} address")
                    kind = "A" if addr.version == 4 else "AAAA"
                elif wildcard:
                    raise ScenarioError(f"{here}: wildcard names can only hold addresses")
                records.append(Record(name, kind, text, wildcard))
    return records


def parse_query(value, where: str) -> QuerySpec:
    data = _mapping(value, where)
    _check_keys(data, ("name", "type", "every", "tcp", "count", "server", "search", "offset"), where)
    if "name" not in data:
        raise ScenarioError(f"{where}: a query needs a name")
    qtype = str(data.get("type", "A")).upper()
    try:
        type_code(qtype)
    except ValueError:
        raise ScenarioError(f"{where}.type: unknown query type {qtype!r}") from None
    every = parse_duration(data.get("every", "1s"), f"{where}.every")
    if every < 0.01:
        raise ScenarioError(f"{where}.every: at least 10ms between queries")
    count = data.get("count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise ScenarioError(f"{where}.count: a positive whole number, got {count!r}")
    return QuerySpec(
        name=_str(data["name"], f"{where}.name").rstrip("."),
        qtype=qtype, every=every, tcp=_bool(data.get("tcp", False), f"{where}.tcp"), count=count,
        server=_ipv4(data["server"], f"{where}.server") if "server" in data else None,
        search=_bool(data.get("search", False), f"{where}.search"),
        offset=parse_duration(data.get("offset", 0), f"{where}.offset"),
    )


def parse_workload(value, where: str) -> WorkloadRef:
    text = _str(value, where)
    kind, sep, name = text.partition("/")
    if not sep or kind.lower() not in WORKLOAD_KINDS:
        raise ScenarioError(f"{where}: {text!r} should be KIND/NAME with KIND one of "
                            "Deployment, ReplicaSet, DaemonSet, StatefulSet, Job, CronJob")
    return WorkloadRef(WORKLOAD_KINDS[kind.lower()], _dns_label(name, where, 52))


POD_KEYS = ("name", "namespace", "node", "workload", "start", "stop", "finish", "hostNetwork", "ip",
            "labels", "image", "queries", "phase")
PHASES = ("Running", "Pending", "Succeeded", "Failed")


def parse_pod(value, where: str) -> PodSpec:
    data = _mapping(value, where)
    _check_keys(data, POD_KEYS, where)
    workload = parse_workload(data["workload"], f"{where}.workload") if "workload" in data else None
    if "name" not in data and workload is None:
        raise ScenarioError(f"{where}: a bare pod needs a name (or give a workload to name it after)")
    pod = PodSpec(
        name=_dns_label(data["name"], f"{where}.name") if "name" in data else None,
        namespace=_dns_label(data.get("namespace", "default"), f"{where}.namespace"),
        node=_str(data["node"], f"{where}.node") if "node" in data else None,
        workload=workload,
        start=parse_duration(data.get("start", 0), f"{where}.start"),
        stop=parse_duration(data["stop"], f"{where}.stop") if data.get("stop") is not None else None,
        finish=parse_duration(data["finish"], f"{where}.finish") if data.get("finish") is not None else None,
        host_network=_bool(data.get("hostNetwork", False), f"{where}.hostNetwork"),
        ip=_ipv4(data["ip"], f"{where}.ip") if "ip" in data else None,
        labels=_labels(data.get("labels", {}), f"{where}.labels"),
        image=_str(data.get("image", PodSpec.image), f"{where}.image"),
        queries=[parse_query(q, f"{where}.queries[{i}]")
                 for i, q in enumerate(_list(data.get("queries", []), f"{where}.queries"))],
        phase=data.get("phase", "Running"),
    )
    if pod.phase not in PHASES:
        raise ScenarioError(f"{where}.phase: one of {', '.join(PHASES)}, got {pod.phase!r}")
    if pod.phase != "Running" and pod.queries:
        raise ScenarioError(f"{where}: a {pod.phase} pod runs nothing, so it cannot have queries")
    if pod.stop is not None and pod.stop <= pod.start:
        raise ScenarioError(f"{where}: stop ({pod.stop:g}s) must come after start ({pod.start:g}s)")
    if pod.finish is not None and (pod.finish <= pod.start or (pod.stop is not None and pod.finish >= pod.stop)):
        raise ScenarioError(f"{where}: finish ({pod.finish:g}s) must come after start and before stop")
    if pod.host_network and pod.ip:
        raise ScenarioError(f"{where}: a hostNetwork pod has its node's IP; drop ip:")
    return pod


def parse_namespaces(value, where: str) -> list[NamespaceSpec]:
    """``[name, ...]``, ``[{name, labels, podSecurity}]`` or ``{name: {labels, podSecurity}}``."""
    if isinstance(value, Mapping):
        items = [{"name": k, **_mapping(v or {}, f"{where}.{k}")} for k, v in value.items()]
    else:
        items = [{"name": v} if isinstance(v, str) else v for v in _list(value, where)]
    result = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        data = _mapping(item, here)
        _check_keys(data, ("name", "labels", "podSecurity"), here)
        name = _dns_label(data.get("name"), f"{here}.name")
        labels = _labels(data.get("labels", {}), f"{here}.labels")
        level = data.get("podSecurity")
        if level is not None:
            if level not in POD_SECURITY_LEVELS:
                raise ScenarioError(f"{here}.podSecurity: one of {', '.join(POD_SECURITY_LEVELS)}, got {level!r}")
            labels["pod-security.kubernetes.io/enforce"] = level
        result.append(NamespaceSpec(name, labels))
    return result


def parse_services(value, where: str) -> list[ServiceSpec]:
    result = []
    for i, item in enumerate(_list(value, where)):
        here = f"{where}[{i}]"
        data = _mapping(item, here)
        _check_keys(data, ("name", "namespace", "clusterIP", "selector", "ports"), here)
        ports = [int(p) for p in _list(data.get("ports", [80]), f"{here}.ports")]
        result.append(ServiceSpec(
            name=_dns_label(data.get("name"), f"{here}.name"),
            namespace=_dns_label(data.get("namespace", "default"), f"{here}.namespace"),
            cluster_ip=_ipv4(data.get("clusterIP"), f"{here}.clusterIP"),
            selector=_labels(data.get("selector", {}), f"{here}.selector"),
            ports=ports,
        ))
    return result


def parse_dns(value, where: str) -> DnsSpec:
    data = _mapping(value or {}, where)
    _check_keys(data, ("replicas", "records", "ttl", "clusterDomain", "serviceIP"), where)
    replicas = data.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= 10:
        raise ScenarioError(f"{where}.replicas: 1 to 10, got {replicas!r}")
    ttl = data.get("ttl", 5)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
        raise ScenarioError(f"{where}.ttl: seconds as a whole number >= 0, got {ttl!r}")
    return DnsSpec(
        replicas=replicas,
        records=parse_records(data.get("records", {}), f"{where}.records"),
        ttl=ttl,
        cluster_domain=_str(data.get("clusterDomain", "cluster.local"), f"{where}.clusterDomain").strip("."),
        service_ip=_ipv4(data.get("serviceIP", "10.96.0.10"), f"{where}.serviceIP"),
    )


def parse_node_local(value, where: str) -> NodeLocalSpec:
    if isinstance(value, bool):
        return NodeLocalSpec(enabled=value)
    data = _mapping(value, where)
    _check_keys(data, ("enabled", "forward"), where)
    forward = data.get("forward", "cluster")
    if forward not in ("cluster", "all"):
        raise ScenarioError(f"{where}.forward: 'cluster' (stock node-local-dns) or 'all', got {forward!r}")
    return NodeLocalSpec(enabled=_bool(data.get("enabled", True), f"{where}.enabled"),
                         forward_all=forward == "all")


TOP_KEYS = ("nodes", "dns", "nodeLocalDNS", "pods", "namespaces", "services")


def parse_scenario(data, source: str = "<scenario>") -> Scenario:
    """A validated ``Scenario`` from the YAML document's data."""
    data = _mapping(data if data is not None else {}, source)
    _check_keys(data, TOP_KEYS, source)
    nodes = [_dns_label(n, f"{source}: nodes[{i}]")
             for i, n in enumerate(_list(data.get("nodes", ["node-a"]), f"{source}: nodes"))]
    if not nodes:
        raise ScenarioError(f"{source}: nodes: at least one node")
    if len(set(nodes)) != len(nodes):
        raise ScenarioError(f"{source}: nodes: names must be unique")
    pods = [parse_pod(p, f"{source}: pods[{i}]") for i, p in enumerate(_list(data.get("pods", []), f"{source}: pods"))]
    scenario = Scenario(
        nodes=nodes,
        dns=parse_dns(data.get("dns"), f"{source}: dns"),
        node_local=parse_node_local(data.get("nodeLocalDNS", False), f"{source}: nodeLocalDNS"),
        pods=pods,
        namespaces=parse_namespaces(data.get("namespaces", []), f"{source}: namespaces"),
        services=parse_services(data.get("services", []), f"{source}: services"),
        source=source,
    )
    for i, pod in enumerate(pods):
        if pod.node is not None and pod.node not in nodes:
            raise ScenarioError(f"{source}: pods[{i}].node: {pod.node!r} is not one of the nodes {nodes}")
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    return parse_scenario(data, str(path))
