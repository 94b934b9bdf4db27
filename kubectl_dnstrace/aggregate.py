"""Per client, per name: how often, which types and answers, since when, seen where.

One query is one count, however many captures saw it: a capture in a node's namespace sees
a query before and after kube-proxy's DNAT, and a pod traced together with CoreDNS shows
its query at both. The agent already reports each message once per capture; across
captures (and for files from other tools) the aggregator drops a message it counted within
a second of it — same client address and port, DNS id, name and type — and only adds the
extra place it was seen. The captures' log streams reach the trace seconds apart, so a
message is remembered for longer (QUERY_WINDOW) than the second that makes a copy. A
response counts only when neither its query nor an earlier response of the exchange was
seen in the QUERY_WINDOW around it (the capture started mid-exchange, or ``--rcode`` hid
queries); responses are remembered for less on a busy capture (RESPONSE_MAX), still
seconds, far longer than the second that makes a copy.

Names are kept one by one up to MAX_NAMES a client (and MAX_NAMES_TOTAL in all); past that,
a new name is counted under its parent domain as ``*.parent`` (and further up, see
``fold_keys``, so the entries stay bounded whatever the names). A pod tunnelling data
through DNS asks a new name every query — the very case a responder traces — and would
otherwise grow the summary by a kilobyte a query until the machine runs out of memory;
folded, the tunnel's domain is what the summary shows.
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
RESPONSE_MAX = 65_536  # responses remembered per generation (a copy comes within a second)
MAX_ANSWERS = 20  # distinct answers kept per name: enough to recognise, bounded in memory
MAX_LATENCIES = 100_000  # per name; beyond that, every other sample (percentiles stay fair)
IDENTITY_MAX = 100_000  # Client objects remembered by identity (a cache: cleared when full)
MAX_NAMES = 5_000  # names kept one by one per client; further names fold into "*.parent"
MAX_NAMES_TOTAL = 100_000  # the same, over all clients (about 120 MB of statistics)
MAX_FOLDED = 100  # "*.parent" entries per client before names fold further up


# The small sets of strings below (where a name was seen, which servers answered it, its
# answers, a client's addresses) are tuples in the order the values came: nearly always one
# value, looked up by identity first. A busy trace holds a NameStats per (client, name) for
# the whole run — 40,000 with 10,000 pods of four names — and the aggregator touches one at
# random per event: a one-value tuple is 48 bytes where a dict is 184 (and a set 216), so the
# statistics stay small enough for the CPU's caches. A tuple of strings is not tracked by the
# cyclic garbage collector either (a set always is).
_NONE: dict[str, int] = {}  # ``served`` of most names (never written: replaced on first use)


@dataclass(slots=True)
class NameStats:
    name: str
    count: int = 0
    # Plain dicts, not Counters: one NameStats per (client, name), and a Counter costs a
    # Python-level __init__ each.
    qtypes: dict[str, int] = field(default_factory=dict)
    rcodes: dict[str, int] = field(default_factory=dict)
    answers: tuple[str, ...] = ()
    first: float = 0.0
    last: float = 0.0
    observed_at: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    latencies: list[float] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=lambda: _NONE)  # "cache" / "forwarded"
    folded: bool = False  # "*.parent": the names past MAX_NAMES under a domain


@dataclass(slots=True)
class ClientStats:
    client: Client
    ips: tuple[str, ...] = ()
    names: dict[str, NameStats] = field(default_factory=dict)
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    folded_names: int = 0  # "*.parent" entries among ``names`` (more names than MAX_NAMES)

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
    """``add(attributed)`` per event; ``clients()`` gives the summary, busiest first.

    ``add`` runs once per DNS message of a live trace. It computes one key per event, the
    hash of the message's client address and port, DNS id, name and type (as the agent's
    own deduplication does: a 64-bit hash, no collision in practice), and notes it in one
    table per direction, which answers both questions: a copy within DUPLICATE_WINDOW?
    the exchange seen within QUERY_WINDOW? (One table for both, not one each: the
    three tables there were, two written per event, were a sixth of the back half's
    work.) A hash, not the tuple: a table of ints and floats is not tracked by the
    cyclic garbage collector, while the 30-second table of tuples (some hundred thousand
    on a busy trace) was walked entry by entry on each full collection — a third of the
    cost of ``add``. The client's statistics are found by the identity of its ``Client``
    object: the attributor hands out one object per address as long as its answer holds.
    """

    def __init__(self) -> None:
        self.by_client: dict[tuple, ClientStats] = {}
        # Each message's last sighting, per direction: key -> event time.
        self._queries = Deduper(window=QUERY_WINDOW, max_entries=QUERY_MAX)
        self._responses = Deduper(window=QUERY_WINDOW, max_entries=RESPONSE_MAX)
        # id(Client) -> (the Client, its stats); the Client is kept so the id stays its own.
        self._by_identity: dict[int, tuple[Client, ClientStats]] = {}
        self.duplicates = 0
        self.names = 0  # names kept one by one, over all clients

    def add(self, a: Attributed) -> None:
        ev = a.event
        ts = ev.ts
        qname = ev.qname.lower()
        is_query = ev.qr == "query"
        if is_query:
            cip, server = ev.src, ev.dst
            tx = hash((cip, ev.sport, ev.id, qname, ev.qtype))
            prev = self._queries.last(tx, ts)
        else:
            cip, server = ev.dst, ev.src
            tx = hash((cip, ev.dport, ev.id, qname, ev.qtype))
            prev = self._responses.last(tx, ts)
        if prev is not None and -DUPLICATE_WINDOW <= ts - prev <= DUPLICATE_WINDOW:
            self.duplicates += 1
            cs = self.by_client.get(client_key(a.client))
            ns = None
            if cs is not None:
                ns = cs.names.get(qname) or next(
                    (cs.names[k] for k in fold_keys(qname) if k in cs.names), None)
            if ns is not None and ev.observed_at not in ns.observed_at:
                ns.observed_at += (ev.observed_at,)
            return
        client = a.client
        hit = self._by_identity.get(id(client))
        cs = hit[1] if hit is not None and hit[0] is client else self._client_stats(client, ts)
        ns = cs.names.get(qname)
        if ns is None:
            ns = self._new_name(cs, qname, ev.qname, ts)
        if ev.observed_at not in ns.observed_at:
            ns.observed_at += (ev.observed_at,)
        if cip not in cs.ips:
            cs.ips += (cip,)
        if server not in ns.servers:
            ns.servers += (server,)
        if is_query:
            counted = True
        else:
            asked = self._queries.peek(tx)
            counted = ((prev is None or not -QUERY_WINDOW <= ts - prev <= QUERY_WINDOW)
                       and (asked is None or not -QUERY_WINDOW <= ts - asked <= QUERY_WINDOW))
            if ev.rcode:
                ns.rcodes[ev.rcode] = ns.rcodes.get(ev.rcode, 0) + 1
            if ev.answers and len(ns.answers) < MAX_ANSWERS:
                for ans in ev.answers:
                    if ans not in ns.answers and len(ns.answers) < MAX_ANSWERS:
                        ns.answers += (ans,)
            if ev.latency_ms is not None:
                lat = ns.latencies
                if len(lat) >= MAX_LATENCIES:
                    del lat[::2]
                lat.append(ev.latency_ms)
            if a.served:
                if ns.served is _NONE:
                    ns.served = {}
                ns.served[a.served] = ns.served.get(a.served, 0) + 1
        if counted:
            ns.count += 1
            cs.count += 1
            ns.qtypes[ev.qtype] = ns.qtypes.get(ev.qtype, 0) + 1
        if ts < ns.first:
            ns.first = ts
        elif ts > ns.last:
            ns.last = ts
        if ts < cs.first:
            cs.first = ts
        elif ts > cs.last:
            cs.last = ts

    def _new_name(self, cs: ClientStats, lname: str, qname: str, ts: float) -> NameStats:
        """The statistics of a name ``cs`` has not asked yet: its own, or, past MAX_NAMES
        (MAX_NAMES_TOTAL in all), its parent domain's ``*.parent``."""
        if len(cs.names) - cs.folded_names < MAX_NAMES and self.names < MAX_NAMES_TOTAL:
            self.names += 1
            ns = cs.names[lname] = NameStats(qname, first=ts, last=ts)
            return ns
        # The parent domain; if a client has MAX_FOLDED of those already (a tunnel with two
        # random labels), the last two labels; past twice that, one "*" for the rest.
        for i, key in enumerate(fold_keys(lname)):
            ns = cs.names.get(key)
            if ns is not None:
                return ns
            if cs.folded_names < MAX_FOLDED * (i + 1) or key == "*":
                cs.folded_names += 1
                ns = cs.names[key] = NameStats(key, first=ts, last=ts, folded=True)
                return ns
        raise AssertionError("fold_keys ends with '*'")

    def _client_stats(self, client: Client, ts: float) -> ClientStats:
        """The statistics of ``client``'s key (created at ``ts``), remembered by identity."""
        key = client_key(client)
        cs = self.by_client.get(key)
        if cs is None:
            cs = self.by_client[key] = ClientStats(client, first=ts, last=ts)
        if len(self._by_identity) >= IDENTITY_MAX:  # e.g. a new object per ambiguous event
            self._by_identity.clear()
        self._by_identity[id(client)] = (client, cs)
        return cs

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
            ns = self._new_name(cs, lname, qname, ts)
        if observed_at not in ns.observed_at:
            ns.observed_at += (observed_at,)
        if ip not in cs.ips:
            cs.ips += (ip,)
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


def fold_keys(lname: str) -> tuple[str, ...]:
    """Where a name past MAX_NAMES may be counted, nearest first: ``*.`` and its parent
    domain, ``*.`` and its last two labels, ``*`` (``x1.y2.evil.com``: ``*.y2.evil.com``,
    ``*.evil.com``, ``*``)."""
    labels = lname.split(".")
    keys = []
    if len(labels) > 1:
        keys.append("*." + ".".join(labels[1:]))
    if len(labels) > 3:
        keys.append("*." + ".".join(labels[-2:]))
    keys.append("*")
    return tuple(keys)


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]
