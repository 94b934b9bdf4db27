"""The upstream leg: which client query caused a resolver's own query.

A capture in a CoreDNS pod sees two kinds of queries: clients asking CoreDNS, and CoreDNS
asking its upstream resolvers — the packets a node's host-security agent alerts on. The
same holds for every forwarding hop (pod -> node-local-dns -> CoreDNS -> upstream): each hop
is a new query with a new DNS id and a new source port, so nothing in the packet ties it
to its cause. Name and time do: a resolver forwards a name right after a client asked it
for that name and before it answered.

A query is a *forward* when its source is a resolver: an address that itself received
queries from another address in this run, a DNS pod (label ``k8s-app=kube-dns`` /
``node-local-dns``, or a capture target with that role), or a node running node-local-dns
(CoreDNS sees those nodes' addresses, or their CNI gateway address, instead of the pods).
A query from an address to itself is never one, nor does it make its address a resolver:
on loopback (``tcpdump -i lo``, a host whose resolver listens on 127.0.0.1) the client
and the resolver share the address, and every repeat of the client's own query would
otherwise be taken for an upstream lookup without a cause.

Its causes are the queries for the same name and type, in the window just before it, not
yet answered, that went *to that resolver*: first those whose destination is the forward's
source address (the CoreDNS capture sees the client query arrive at the pod IP it then
forwards from); else, when the forwarder is a node (node-local-dns), those sent by pods on
that node. Nothing else is linked: no cause is better than a wrong pod. Causes that are
themselves forwards are followed to the pods that started the chain.

A client query answered in a capture of a forwarding resolver without any forward is marked
``cache`` (answered from the cache or an authoritative zone); one whose name was forwarded
is marked ``forwarded``.

Events from several captures interleave with delays (one log stream each), so a forward
that found no cause stays open for the window and picks up a late-arriving cause.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kubectl_dnstrace.model import Client, DnsEvent
from kubectl_dnstrace.pairing import exchange_key

WINDOW = 5.0  # seconds: a forward follows its cause within milliseconds; retries within ~2 s


@dataclass(slots=True)
class Link:
    """One forwarded query and the client queries that caused it."""

    ts: float
    qname: str
    qtype: str
    resolver: Client  # who forwarded: a CoreDNS pod, a node (node-local-dns)
    server: Client  # where to: an upstream resolver, or the next cluster DNS hop
    observed_at: str
    causes: list[Client] = field(default_factory=list)  # the pods (or IPs) that started it
    via: list[Client] = field(default_factory=list)  # hops in between

    @property
    def upstream(self) -> bool:
        """True when the query left the cluster (the alerted lookup), not a hop inside it."""
        return self.server.kind in ("external", "unknown")


@dataclass(slots=True)
class _Query:
    ts: float
    src: str
    dst: str
    client: Client
    observed_at: str
    forward: Link | None
    answered_at: float | None = None  # event time of its response
    linked: bool = False  # some forward named it as a cause


@dataclass(slots=True)
class Annotation:
    """What linking says about one event: the link of a forward, or how a query was served."""

    link: Link | None = None
    served: str = ""  # "cache" | "forwarded" | ""


_NOTHING = Annotation()  # the common answer, shared (never mutated)


class Linker:
    """``observe(event, client)`` in event order; ``links`` collects every forward.

    ``resolver_pods`` ("ns/name") and ``resolver_nodes`` (node names running node-local-dns)
    come from the inventory and the capture targets, and are fixed once the linker is built
    (which kinds of client are asked about follows from them); more resolvers are learnt
    from the traffic itself (an address that received queries and then sends some).
    """

    def __init__(self, resolver_pods: set[str] | None = None,
                 resolver_nodes: set[str] | None = None,
                 resolver_captures: set[str] | None = None, window: float = WINDOW,
                 server_of: Callable[[str, float], Client] | None = None) -> None:
        self.resolver_pods = frozenset(resolver_pods or ())
        self.resolver_nodes = frozenset(resolver_nodes or ())
        self.resolver_captures = set(resolver_captures or ())  # observed_at of resolver pods
        # The kinds of client that may be a resolver by who they are: pods when DNS pods
        # are known, nodes when nodes run node-local-dns (most clients are pods, and most
        # runs know no node-local-dns: the question is not asked at all then).
        self._resolver_kinds = tuple(kind for kind, known in (("pod", self.resolver_pods),
                                                              ("node", self.resolver_nodes))
                                     if known)
        self.window = window
        self.server_of = server_of or (lambda ip, ts: Client(kind="unknown", ip=ip))
        self.links: list[Link] = []
        self._servers: set[str] = set()
        self._recent: dict[tuple[str, str], deque[_Query]] = {}
        self._pending: dict[tuple, _Query] = {}
        self._unresolved: dict[tuple[str, str], list[tuple[Link, str, Client]]] = {}
        self._count = 0
        self.late_causes = 0  # causes added to forwards seen earlier (for held output lines)

    # ---- the one method ----------------------------------------------------------------

    def observe(self, ev: DnsEvent, client: Client) -> Annotation:
        """``client`` is who asked: the query's source, the response's destination."""
        self._count += 1
        if self._count % 4096 == 0:
            self._prune(ev.ts)
        if ev.qr == "response":
            q = self._pending.pop(exchange_key(ev), None)
            if q is None or q.forward is not None:
                return _NOTHING
            q.answered_at = ev.ts
            if q.linked:
                return Annotation(served="forwarded")
            if q.observed_at in self.resolver_captures:
                return Annotation(served="cache")
            return _NOTHING

        key = (ev.qname.lower(), ev.qtype)
        link = None
        # A forward: from an address that received queries, or from a resolver pod or node;
        # never a query to its own address (see the module's docstring).
        own = ev.src == ev.dst
        if not own and (ev.src in self._servers or (client.kind in self._resolver_kinds
                                                    and self._is_resolver(client))):
            link = Link(ev.ts, ev.qname, ev.qtype, client, self.server_of(ev.dst, ev.ts),
                        ev.observed_at)
            self._link(link, key, ev.src, client)
            self.links.append(link)
            self.resolver_captures.add(ev.observed_at)
            if not link.causes:
                self._unresolved.setdefault(key, []).append((link, ev.src, client))
        q = _Query(ev.ts, ev.src, ev.dst, client, ev.observed_at, link)
        if not own:
            self._servers.add(ev.dst)
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = deque()
        recent.append(q)
        while recent and recent[0].ts < ev.ts - self.window:
            recent.popleft()
        self._pending[exchange_key(ev)] = q
        if link is None and key in self._unresolved:
            self._late_cause(key, q)
        return _NOTHING if link is None else Annotation(link=link)

    # ---- helpers ---------------------------------------------------------------------------

    def _is_resolver(self, client: Client) -> bool:
        if client.kind == "pod":
            return f"{client.namespace}/{client.name}" in self.resolver_pods
        return client.node in self.resolver_nodes

    def _link(self, link: Link, key: tuple[str, str], src: str, forwarder: Client) -> None:
        recent = self._recent.get(key)
        if not recent:
            return
        lo = link.ts - self.window
        # Waiting at the forward's instant: not yet answered *then*. Judged by event time,
        # not arrival: another capture's log stream may deliver the answer first.
        waiting = [q for q in recent if lo <= q.ts <= link.ts and q.src != src
                   and (q.answered_at is None or q.answered_at >= link.ts)]
        chosen = [q for q in waiting if q.dst == src]
        if not chosen and forwarder.kind == "node":
            chosen = [q for q in waiting
                      if q.client.kind == "pod" and q.client.node == forwarder.node]
        for q in chosen:
            self._add_cause(link, q)

    def _add_cause(self, link: Link, q: _Query) -> None:
        q.linked = True
        if q.forward is not None:
            if q.client not in link.via:
                link.via.append(q.client)
            for c in q.forward.causes:
                if c not in link.causes:
                    link.causes.append(c)
            for c in q.forward.via:
                if c not in link.via:
                    link.via.append(c)
        elif q.client not in link.causes:
            link.causes.append(q.client)

    def _late_cause(self, key: tuple[str, str], q: _Query) -> None:
        """A cause that arrived after its forward (another capture's log stream lagged)."""
        still = []
        for link, src, forwarder in self._unresolved[key]:
            if link.ts - self.window <= q.ts <= link.ts and q.src != src and (
                    q.dst == src or (forwarder.kind == "node" and q.client.kind == "pod"
                                     and q.client.node == forwarder.node)):
                self._add_cause(link, q)
                self.late_causes += 1
            if not link.causes and q.ts - link.ts <= self.window:
                still.append((link, src, forwarder))
        if still:
            self._unresolved[key] = still
        else:
            del self._unresolved[key]

    def _prune(self, now: float) -> None:
        old = now - 2 * self.window
        for key in [k for k, d in self._recent.items() if not d or d[-1].ts < old]:
            del self._recent[key]
        for key in [k for k, q in self._pending.items() if q.ts < old]:
            del self._pending[key]
        for key in [k for k, v in self._unresolved.items() if all(lk.ts < old for lk, _, _ in v)]:
            del self._unresolved[key]


def describe_client(c: Client) -> str:
    """A short human name: "shop/web-5d8f7c9b6-x2x (Deployment/web)", "node/node-a", IP."""
    if c.kind == "pod":
        return f"{c.namespace}/{c.name}" + (f" ({c.workload})" if c.workload else "")
    if c.kind == "node":
        return f"node/{c.name}"
    if c.kind == "service":
        return f"svc/{c.namespace}/{c.name}"
    if c.kind == "ambiguous":
        return f"{c.ip} (one of {', '.join(c.candidates)})"
    return c.ip


def describe_link(link: Link, clock) -> str:
    """"upstream lookup of evil.example.com A at 10:02:03 by kube-system/coredns-1 to
    8.8.8.8 caused by shop/web-5d8f7c9b6-x2x (Deployment/web)"."""
    what = "upstream lookup" if link.upstream else "forwarded lookup"
    resolver = describe_client(link.resolver)
    if link.resolver.kind == "node" and any(
            c.split("/")[-1].startswith("node-local-dns") for c in link.resolver.candidates):
        resolver += " (node-local-dns)"
    text = (f"{what} of {link.qname} {link.qtype} at {clock(link.ts)} by "
            f"{resolver} to {describe_client(link.server)}")
    if link.causes:
        text += " caused by " + ", ".join(describe_client(c) for c in link.causes)
    else:
        text += " caused by no client query seen just before it (cause outside the capture)"
    if link.via:
        text += " via " + ", ".join(describe_client(c) for c in link.via)
    return text
