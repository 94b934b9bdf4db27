"""Per client, per name: how often, which types and answers, since when, seen where.

One query is one count, however many captures saw it: a capture in a node's namespace sees
a query before and after kube-proxy's DNAT, and a pod traced together with CoreDNS shows
its query at both. The agent already reports each message once per capture; across
captures (and for files from other tools) the aggregator drops a message it counted within
the last second — same client address and port, DNS id, name and type — and only adds the
extra place it was seen. A response counts only when its query was not seen (the capture
started mid-exchange, or ``--rcode`` hid queries).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kubectl_dnstrace.agent.dedupe import Deduper
from kubectl_dnstrace.attribution import Attributed
from kubectl_dnstrace.model import Client

DUPLICATE_WINDOW = 1.0
QUERY_WINDOW = 30.0  # how long a response may follow its query (the agent's pending window)
QUERY_MAX = 200_000  # queries remembered per generation: memory stays flat on busy captures
MAX_ANSWERS = 20  # distinct answers kept per name: enough to recognise, bounded in memory
MAX_LATENCIES = 100_000  # per name; beyond that, every other sample (percentiles stay fair)


@dataclass(slots=True)
class NameStats:
    name: str
    count: int = 0
    # Plain dicts, not Counters: one NameStats per (client, name), and a Counter costs a
    # Python-level __init__ each.
    qtypes: dict[str, int] = field(default_factory=dict)
    rcodes: dict[str, int] = field(default_factory=dict)
    answers: dict[str, None] = field(default_factory=dict)  # ordered set
    first: float = 0.0
    last: float = 0.0
    observed_at: set[str] = field(default_factory=set)
    servers: set[str] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)  # "cache" / "forwarded"


@dataclass(slots=True)
class ClientStats:
    client: Client
    ips: set[str] = field(default_factory=set)
    names: dict[str, NameStats] = field(default_factory=dict)
    count: int = 0
    first: float = 0.0
    last: float = 0.0

    def total(self, attr: str) -> Counter:
        total: Counter = Counter()
        for ns in self.names.values():
            total.update(getattr(ns, attr))
        return total

    def latencies(self) -> list[float]:
        return sorted(x for ns in self.names.values() for x in ns.latencies)

    def observed_at(self) -> list[str]:
        return sorted({o for ns in self.names.values() for o in ns.observed_at})

    def servers(self) -> list[str]:
        return sorted({s for ns in self.names.values() for s in ns.servers})


def client_key(c: Client) -> tuple:
    """Who counts as one client: a pod, a node, a Service, or one address."""
    if c.kind == "pod":
        return ("pod", c.namespace, c.name)
    if c.kind == "node":
        return ("node", c.name)
    if c.kind == "service":
        return ("service", c.namespace, c.name)
    if c.kind == "ambiguous":
        return ("ambiguous", c.ip, tuple(c.candidates))
    return (c.kind, c.ip)


class Aggregator:
    """``add(attributed)`` per event; ``clients()`` gives the summary, busiest first."""

    def __init__(self) -> None:
        self.by_client: dict[tuple, ClientStats] = {}
        self._dup = Deduper(window=DUPLICATE_WINDOW)
        self._asked = Deduper(window=QUERY_WINDOW, max_entries=QUERY_MAX)
        self.duplicates = 0

    def add(self, a: Attributed) -> None:
        ev = a.event
        client = a.client
        is_query = ev.qr == "query"
        cip, cport = (ev.src, ev.sport) if is_query else (ev.dst, ev.dport)
        server = ev.dst if is_query else ev.src
        key = client_key(client)
        qname = ev.qname.lower()
        tx = (cip, cport, ev.id, qname, ev.qtype)
        cs = self.by_client.get(key)
        if self._dup.seen_key((ev.qr, *tx), ev.ts):
            self.duplicates += 1
            ns = cs.names.get(qname) if cs is not None else None
            if ns is not None:
                ns.observed_at.add(ev.observed_at)
            return
        if cs is None:
            cs = self.by_client[key] = ClientStats(client, first=ev.ts, last=ev.ts)
        ns = cs.names.get(qname)
        if ns is None:
            ns = cs.names[qname] = NameStats(ev.qname, first=ev.ts, last=ev.ts)
        ns.observed_at.add(ev.observed_at)
        cs.ips.add(cip)
        ns.servers.add(server)
        if is_query:
            self._asked.seen_key(tx, ev.ts)
            counted = True
        else:
            counted = not self._asked.seen_key(tx, ev.ts)
            if ev.rcode:
                ns.rcodes[ev.rcode] = ns.rcodes.get(ev.rcode, 0) + 1
            for ans in ev.answers:
                if len(ns.answers) >= MAX_ANSWERS:
                    break
                ns.answers[ans] = None
            if ev.latency_ms is not None:
                lat = ns.latencies
                if len(lat) >= MAX_LATENCIES:
                    del lat[::2]
                lat.append(ev.latency_ms)
            if a.served:
                ns.served[a.served] = ns.served.get(a.served, 0) + 1
        if counted:
            ns.count += 1
            cs.count += 1
            ns.qtypes[ev.qtype] = ns.qtypes.get(ev.qtype, 0) + 1
        if ev.ts < ns.first:
            ns.first = ev.ts
        if ev.ts > ns.last:
            ns.last = ev.ts
        if ev.ts < cs.first:
            cs.first = ev.ts
        if ev.ts > cs.last:
            cs.last = ev.ts

    def add_group(self, client: Client, ip: str, qname: str, qtype: str, rcode: str | None,
                  count: int, ts: float, observed_at: str) -> None:
        """One group of an agent's ``agg`` record: ``count`` queries (rcode None) or
        responses of one client for one name and type in one interval. Aggregates carry
        no ids, so they are not deduplicated across captures."""
        key = client_key(client)
        cs = self.by_client.get(key)
        if cs is None:
            cs = self.by_client[key] = ClientStats(client, first=ts, last=ts)
        lname = qname.lower()
        ns = cs.names.get(lname)
        if ns is None:
            ns = cs.names[lname] = NameStats(qname, first=ts, last=ts)
        ns.observed_at.add(observed_at)
        cs.ips.add(ip)
        if rcode is None:
            ns.count += count
            cs.count += count
            ns.qtypes[qtype] = ns.qtypes.get(qtype, 0) + count
        else:
            ns.rcodes[rcode] = ns.rcodes.get(rcode, 0) + count
        ns.first, ns.last = min(ns.first, ts), max(ns.last, ts)
        cs.first, cs.last = min(cs.first, ts), max(cs.last, ts)

    def clients(self) -> list[ClientStats]:
        """Busiest client first; ties by namespace, name, address: a stable order."""
        return sorted(self.by_client.values(),
                      key=lambda c: (-c.count, c.client.namespace, c.client.name, c.client.ip))


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]
