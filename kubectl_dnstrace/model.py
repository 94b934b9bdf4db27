"""Plain dataclasses shared by every stage of the pipeline.

Stages (source -> attribute -> aggregate -> render) exchange only these objects, so each
stage can be tested alone as a sandwich: list producer -> stage -> list collector.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

# The ``iface`` of events read from CoreDNS's ``log`` lines (``--via log``): such a line says
# who asked what and the rcode, never the answers, so their JSON carries no ``answers`` at all
# rather than an empty list that would read as "no answers".
LOG_ROUTE_IFACE = "log"


@dataclass(slots=True)
class DnsEvent:
    """One DNS message seen by an agent (live) or read from a capture file (analyze).

    ``raw`` holds the captured frame's IP packet when pcap output was asked for; it rides
    along hidden from table and JSON output, so pcap writing is just another sink.
    """

    ts: float
    qr: str  # "query" | "response"
    proto: str  # "udp" | "tcp"
    src: str
    sport: int
    dst: str
    dport: int
    id: int
    qname: str
    qtype: str
    iface: str = ""
    rcode: str | None = None
    answers: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    seq: int = 0
    observed_at: str = ""  # where it was captured: "ns/pod" or the file name
    raw: bytes | None = None
    linktype: int = 101  # pcap LINKTYPE of ``raw`` (101 = raw IP)
    # A response a capture file's snap length cut short: rcode and question are whole,
    # ``answers`` are those that fit.
    truncated: bool = False
    # Set by the pipeline, never positionally (capture-file readers build events from
    # field tuples that end with ``truncated``): keep it last.
    resolver: dict | None = None  # {ip, kind, bypass}: set by the pipeline (bypass.py)

    @classmethod
    def from_record(cls, record: dict, observed_at: str = "") -> DnsEvent:
        """Build an event from a validated ``dns`` record of the agent protocol."""
        get = record.get
        raw = get("raw")
        answers = get("answers")
        # Positional: a live trace builds one per line, and keywords cost a third more.
        return cls(float(record["ts"]), record["qr"], record["proto"], record["src"],
                   record["sport"], record["dst"], record["dport"], record["id"],
                   record["qname"], record["qtype"], get("iface", ""), get("rcode"),
                   list(answers) if answers else [], get("latency_ms"), get("seq", 0),
                   observed_at, base64.b64decode(raw) if raw else None)


@dataclass(slots=True)
class PodRef:
    """A pod as a target of capture: where to add the ephemeral container."""

    namespace: str
    name: str
    node: str = ""
    host_network: bool = False
    role: str = "pod"  # "pod" | "coredns" | "node-local-dns"
    containers: list[str] = field(default_factory=list)
    ephemeral_containers: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(slots=True)
class Client:
    """Who an IP was at an instant: the answer attribution gives for an event's source."""

    kind: str  # "pod" | "node" | "service" | "external" | "unknown"
    ip: str
    namespace: str = ""
    name: str = ""
    workload: str = ""  # "Deployment/web", "CronJob/report", "" for a bare pod
    node: str = ""
    candidates: list[str] = field(default_factory=list)  # hostNetwork pods on a node IP
    reason: str = ""  # why, when it is not a plain pod IP (e.g. "podCIDR gateway of node-a")


@dataclass(slots=True)
class Filters:
    """What the user asked to see; applied in the agent (live) or in analyze (offline)."""

    domains: list[str] = field(default_factory=list)
    qtypes: list[str] = field(default_factory=list)
    rcodes: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.domains or self.qtypes or self.rcodes)


@dataclass(slots=True)
class OutputOptions:
    """How results are shown: -o table|wide|json|ndjson, plus an optional evidence pcap."""

    format: str = "table"
    pcap_path: str | None = None
    live: bool = True  # one line per query while the trace runs (table/wide only)
    width: int | None = None  # the terminal's columns; None: COLUMNS, the tty's, else 120


@dataclass(slots=True)
class ClusterOptions:
    """kubectl's connection flags, with kubectl's meanings."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None  # None: the context's namespace, then "default"
    all_namespaces: bool = False
    request_timeout: float = 10.0


@dataclass(slots=True)
class TraceRequest:
    """Everything ``kubectl dnstrace TARGET...`` was asked to do."""

    targets: list[str]
    cluster: ClusterOptions
    filters: Filters
    output: OutputOptions
    selector: str | None = None
    duration: float = 300.0
    image: str | None = None
    image_pull_policy: str | None = None
    wait_timeout: float = 60.0
    dry_run: bool = False
    dns_namespace: str = "kube-system"
    dns_selector: str | None = None
    force: bool = False  # trace a pod even when another trace's agent runs in it
    # node/NAME and nodes (kube/nodes.py): attach to --via-pod, or --create-pod in
    # --pod-namespace; DoH resolver addresses from --doh-resolvers FILE (None: built-in list).
    via_pod: str | None = None
    create_pod: bool = False
    pod_namespace: str | None = None
    doh_resolvers: list[str] | None = None
    via: str = "capture"  # "capture" (ephemeral containers) | "log" (CoreDNS's log plugin)
    since: float | None = None  # --via log: read what CoreDNS already logged, seconds back
    restore: bool = False  # put back a Corefile change a killed --via log run left


@dataclass(slots=True)
class AnalyzeRequest:
    """Everything ``kubectl dnstrace analyze FILE...`` was asked to do."""

    files: list[str]
    filters: Filters
    output: OutputOptions
    cluster: ClusterOptions
    offline: bool = False
    pods_file: str | None = None
