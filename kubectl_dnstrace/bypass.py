"""Which resolver each query went to, and what went around cluster DNS.

Malware often skips cluster DNS: it asks a hard-coded resolver (8.8.8.8, its own server)
or speaks DNS over TLS/HTTPS. CoreDNS never sees those queries; a capture in a node's (or
the pod's) network namespace does. Every ``dns`` event gets ``resolver: {ip, kind,
bypass}`` where ``kind`` is

- ``cluster-dns``: a kube-dns Service address or a cluster DNS pod (its endpoints);
- ``node-local``: a NodeLocal DNSCache address (169.254.20.10 by default, or the node of a
  node-local-dns pod: those are hostNetwork);
- ``pod``, ``service``: another pod's or Service's address (a resolver of one's own);
- ``node``: a node's address that runs no node-local-dns;
- ``external``: anything the cluster does not know.

``bypass`` is true when the query did not go to cluster DNS or node-local DNS — except when
the asker is itself a cluster resolver (CoreDNS or a node running node-local-dns asking its
upstream: that is their job, the link to the pod behind it is ``linking``'s).

Encrypted DNS attempts (``encrypted-dns`` records: a SYN to 853, or to a public DoH
resolver on 443) are tallied here too: no payload, just who opened what.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kubectl_dnstrace.attribution import Attributor
from kubectl_dnstrace.model import Client, DnsEvent

CLUSTER_DNS_SERVICES = ("kube-dns", "kube-dns-upstream")
NODE_LOCAL_ADDRESSES = ("169.254.20.10",)
TEXT_LINES = 50  # lines per summary section; -o json has every entry
RESOLVER_KINDS = ("cluster-dns", "node-local", "pod", "service", "node", "external")


@dataclass(slots=True)
class BypassStats:
    """One client's queries to one resolver that bypassed cluster DNS."""

    client: Client
    resolver: dict[str, Any]
    names: Counter = field(default_factory=Counter)
    first: float = 0.0
    last: float = 0.0


@dataclass(slots=True)
class EncryptedStats:
    client: Client
    protocol: str
    dst: str
    dport: int
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    observed_at: set[str] = field(default_factory=set)


class ResolverClassifier:
    """``classify(event, client)`` -> the event's resolver dict (one per address and asker
    kind, so renderers can keep its text once)."""

    def __init__(self, attributor: Attributor, dns_namespace: str = "kube-system",
                 node_local: tuple[str, ...] = NODE_LOCAL_ADDRESSES) -> None:
        self.attributor = attributor
        self._inventory = attributor.inventory
        self.dns_namespace = dns_namespace
        self.node_local = frozenset(node_local)
        self._out: dict[tuple[str, bool, bool], tuple[int, dict[str, Any]]] = {}
        self._askers: dict[int, tuple[Client, int, bool]] = {}

    def classify(self, event: DnsEvent, client: Client,
                 at_cluster_dns: bool = False) -> dict[str, Any]:
        """``at_cluster_dns``: the event was captured in a CoreDNS pod (its own network
        namespace): a query there that CoreDNS did not send went to cluster DNS."""
        ip = event.dst if event.qr == "query" else event.src
        version = self._inventory.version
        asker = self._askers.get(id(client))
        if asker is None or asker[0] is not client or asker[1] != version:
            if len(self._askers) > 100_000:
                self._askers.clear()
            asker = self._askers[id(client)] = (client, version,
                                                self._is_resolver(client, event.ts))
        inbound = at_cluster_dns and not asker[2]
        key = (ip, asker[2], inbound)
        hit = self._out.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        kind = "cluster-dns" if inbound else self.kind(ip, event.ts)
        out = {"ip": ip, "kind": kind,
               "bypass": kind not in ("cluster-dns", "node-local") and not asker[2]}
        if len(self._out) > 100_000:
            self._out.clear()
        self._out[key] = (version, out)
        return out

    def kind(self, ip: str, ts: float) -> str:
        inv = self.attributor.inventory
        if ip in self.node_local:
            return "node-local"
        svc = inv.services.get(ip)
        if svc is not None:
            return "cluster-dns" if (svc[0] == self.dns_namespace
                                     and svc[1] in CLUSTER_DNS_SERVICES) else "service"
        holders = inv.holders(ip, ts)
        if len(holders) == 1 and not holders[0].host_network:
            return {"coredns": "cluster-dns", "node-local-dns": "node-local"}.get(
                holders[0].dns_role, "pod")
        if holders:
            return "pod"
        server = self.attributor.attribute(ip, ts)
        if server.kind == "node":
            return "node-local" if self._node_local_on(server.node) else "node"
        if server.kind in ("pod", "ambiguous"):
            return "pod"
        return "external"

    def _node_local_on(self, node: str) -> bool:
        return any(p.node == node for p in self.attributor.inventory.dns_pods("node-local-dns"))

    def _is_resolver(self, client: Client, ts: float) -> bool:
        if client.kind == "pod":
            return any(p.dns_role in ("coredns", "node-local-dns")
                       for p in self.attributor.inventory.holders(client.ip, ts))
        if client.kind == "node":
            return self._node_local_on(client.node)
        return False


class BypassReport:
    """Tallies for the summary: queries that bypassed cluster DNS, encrypted attempts, and
    nodes a node trace could not cover."""

    LIMIT = 10_000  # (client, resolver) pairs kept; more are counted, not itemised

    def __init__(self) -> None:
        self.bypass: dict[tuple, BypassStats] = {}
        self._fast: dict[tuple[int, int], tuple[Client, dict, BypassStats]] = {}
        self.encrypted: dict[tuple, EncryptedStats] = {}
        self.dropped = 0
        self.uncovered: list[tuple[str, str]] = []

    def add_query(self, event: DnsEvent, client: Client, resolver: dict[str, Any]) -> None:
        """Count a query that bypassed cluster DNS. Per query on a busy capture: one lookup
        by the identities of the client and resolver objects (the attributor and the
        classifier hand out one per address); names are case-folded when shown."""
        if event.qr != "query" or not resolver["bypass"]:
            return
        hit = self._fast.get((id(client), id(resolver)))
        if hit is None or hit[0] is not client or hit[1] is not resolver:
            hit = self._slow(client, resolver, event.ts)
            if hit is None:
                return
        st = hit[2]
        st.names[event.qname] += 1
        st.last = event.ts

    def _slow(self, client: Client, resolver: dict[str, Any], ts: float):
        key = (client.kind, client.namespace, client.name, client.ip, resolver["ip"])
        st = self.bypass.get(key)
        if st is None:
            if len(self.bypass) >= self.LIMIT:
                self.dropped += 1
                return None
            st = self.bypass[key] = BypassStats(client, resolver, first=ts)
        if len(self._fast) >= 4 * self.LIMIT:
            self._fast.clear()
        hit = self._fast[(id(client), id(resolver))] = (client, resolver, st)
        return hit

    def add_encrypted(self, record: dict, client: Client, observed_at: str) -> EncryptedStats:
        key = (client.kind, client.namespace, client.name, client.ip, record["protocol"],
               record["dst"], record["dport"])
        st = self.encrypted.get(key)
        if st is None:
            st = EncryptedStats(client, record["protocol"], record["dst"], record["dport"],
                                first=record["ts"])
            if len(self.encrypted) < self.LIMIT:
                self.encrypted[key] = st
        st.count += 1
        st.last = record["ts"]
        st.observed_at.add(observed_at)
        return st

    @property
    def empty(self) -> bool:
        return not (self.bypass or self.encrypted or self.uncovered)


def _folded(names: Counter) -> Counter:
    """Names as DNS compares them: case-insensitive (RFC 4343)."""
    out: Counter = Counter()
    for name, count in names.items():
        out[name.lower()] += count
    return out


def who(c: Client) -> str:
    if c.kind == "pod":
        return f"{c.namespace}/{c.name}" + (f" ({c.workload})" if c.workload else "")
    if c.kind == "node":
        cands = f", one of: {', '.join(c.candidates)}" if c.candidates else ", a node process"
        return f"node/{c.name} ({c.ip}{cands})"
    if c.kind == "service":
        return f"service {c.namespace}/{c.name}"
    return f"{c.ip} ({c.kind})"


def resolver_text(resolver: dict[str, Any], server: Client | None = None) -> str:
    name = f" {who(server)}" if server is not None and server.kind in ("pod", "service") else ""
    return f"{resolver['ip']} ({resolver['kind']}{name})"


def summary_text(report: BypassReport, server_of=None) -> str:
    """The summary's sections; ``server_of(ip)`` names a resolver that is a pod or Service."""
    blocks = []
    if report.bypass:
        lines = ["Queries that bypassed cluster DNS:"]
        ranked = sorted(report.bypass.values(), key=lambda s: -sum(s.names.values()))
        for st in ranked[:TEXT_LINES]:
            server = server_of(st.resolver["ip"]) if server_of else None
            folded = _folded(st.names)
            names = ", ".join(f"{n} x{c}" for n, c in folded.most_common(8))
            more = len(folded) - 8
            lines.append(f"  {who(st.client)} -> {resolver_text(st.resolver, server)} -> "
                         f"{names}{f' (+{more} more names)' if more > 0 else ''}")
        if len(ranked) > TEXT_LINES:
            lines.append(f"  ... and {len(ranked) - TEXT_LINES} more (client, resolver) pairs "
                         "with fewer queries (-o json lists them all)")
        if report.dropped:
            lines.append(f"  ... and {report.dropped} more queries from other clients")
        blocks.append("\n".join(lines) + "\n")
    if report.encrypted:
        lines = ["Encrypted DNS attempts (connection openings: DoT to port 853, DoH to "
                 "public resolvers on 443; contents unseen):"]
        ranked_enc = sorted(report.encrypted.values(), key=lambda s: -s.count)
        for st in ranked_enc[:TEXT_LINES]:
            lines.append(f"  {who(st.client)} -> {st.dst}:{st.dport} ({st.protocol}) "
                         f"x{st.count}")
        if len(ranked_enc) > TEXT_LINES:
            lines.append(f"  ... and {len(ranked_enc) - TEXT_LINES} more (-o json lists them "
                         "all)")
        blocks.append("\n".join(lines) + "\n")
    if report.uncovered:
        lines = ["Nodes not covered:"]
        lines += [f"  {node}: {why}" for node, why in report.uncovered]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def summary_json(report: BypassReport, client_json) -> dict[str, Any]:
    return {
        "bypassed_cluster_dns": [
            {"client": dict(client_json(st.client), ip=st.client.ip), "resolver": st.resolver,
             "names": dict(_folded(st.names).most_common()), "count": sum(st.names.values()),
             "first": st.first, "last": st.last}
            for st in sorted(report.bypass.values(), key=lambda s: -sum(s.names.values()))],
        "encrypted_dns": [
            {"client": dict(client_json(st.client), ip=st.client.ip), "protocol": st.protocol,
             "dst": st.dst, "dport": st.dport, "count": st.count, "first": st.first,
             "last": st.last, "observed_at": sorted(st.observed_at)}
            for st in sorted(report.encrypted.values(), key=lambda s: -s.count)],
        "uncovered_nodes": [{"node": n, "reason": why} for n, why in report.uncovered],
    }


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
