"""Client IP + time -> who it was: a pod, a node (with hostNetwork candidates), a Service,
or an honest ``external`` / ``unknown`` / ``ambiguous``. Never dropped, never guessed.

Order of the questions, most specific first:

1. Which pod held the address at that instant? One pod: that pod. Two (inside a handover
   overlap): ``ambiguous``, both listed as candidates.
2. Is it a node address (InternalIP/ExternalIP)? Then it is a node process or one of that
   node's hostNetwork pods: the node, with those pods as candidates — never one of them.
3. A Service ClusterIP.
4. A pod held it at another time only: ``unknown``, saying who held it when.
5. Inside a node's podCIDR but held by no pod: the node itself. Traffic from the host
   network toward pods leaves with the address of the CNI interface — a bridge gateway
   (x.x.x.1), flannel's x.x.x.0, Calico's tunl0, Cilium's cilium_host. Behind a node-local
   DNS cache, CoreDNS sees exactly this address.
6. Otherwise ``external`` (a public address) or ``unknown`` (a private one).

When pods could be listed only in some namespaces (the inventory's ``scope``), a pod
elsewhere is invisible, so step 5 would name a node for that pod's address: there, such an
address is ``unknown``, and the reason says which namespaces were seen.

Results are cached per address together with the time range they are valid for and the
inventory version they came from, so a busy capture costs one dict lookup per event.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from kubectl_dnstrace.kube.inventory import FIRST_HOLDER_SLACK, INF, Inventory, PodInfo
from kubectl_dnstrace.model import Client, DnsEvent


def clock(ts: float) -> str:
    """HH:MM:SS in UTC: every time this tool prints is UTC, so reports compare across nodes."""
    return time.strftime("%H:%M:%S", time.gmtime(ts))


@dataclass(slots=True)
class Attributed:
    """An event with its answers: who asked (``client``), and what linking found
    (``link`` when the event is a resolver's own forwarded query, ``served`` "cache" /
    "forwarded" on the response to a client query)."""

    event: DnsEvent
    client: Client
    link: Any = None  # linking.Link
    served: str = ""
    # Addresses of the event (its server, its answers) that are Services: ip -> "ns/name",
    # shown as svc/NS/NAME (a resolver behind a Service is known by the Service's name).
    services: dict[str, str] | None = None


@dataclass(slots=True)
class _Cached:
    version: int
    lo: float
    hi: float
    client: Client


class Attributor:
    """``attribute(ip, ts)`` answers for one event; an empty inventory gives IPs only."""

    def __init__(self, inventory: Inventory | None = None) -> None:
        self.inventory = inventory if inventory is not None else Inventory()
        self._cache: dict[str, _Cached] = {}

    def attribute(self, ip: str, ts: float) -> Client:
        inv = self.inventory
        hit = self._cache.get(ip)
        if hit is not None and hit.version == inv.version and hit.lo <= ts < hit.hi:
            return hit.client
        if len(self._cache) > 200_000:
            self._cache.clear()
        version = inv.version
        client, lo, hi = self._resolve(ip, ts)
        self._cache[ip] = _Cached(version, lo, hi, client)
        return client

    # ---- the questions, in order -----------------------------------------------------------

    def _resolve(self, ip: str, ts: float) -> tuple[Client, float, float]:
        inv = self.inventory
        holders = inv.holders(ip, ts)
        history = inv.history(ip) if not holders or len(holders) > 1 else []
        if len(holders) == 1:
            pod = holders[0]
            lo, hi = self._valid(ip, pod)
            return self._pod_client(ip, pod), lo, hi
        if len(holders) > 1:
            names = sorted(p.key for p in holders)
            return Client(
                kind="ambiguous", ip=ip, candidates=names,
                reason=f"the address changed hands around {clock(ts)}: "
                       f"{' or '.join(names)}",
            ), ts, ts  # never cached: the overlap is narrow and time-sensitive

        node_hit = inv.node_by_address.get(ip)
        if node_hit is not None:
            node, addr_type = node_hit
            cands = sorted(p.key for p in inv.host_network_pods(node.name, ts))
            reason = (f"{addr_type} of node {node.name}: a node process or one of its "
                      f"hostNetwork pods" + ("" if cands else " (none known)"))
            lo, hi = self._stable(node.name, ts)
            return Client(kind="node", ip=ip, name=node.name, node=node.name,
                          candidates=cands, reason=reason), lo, hi

        svc = inv.services.get(ip)
        if svc is not None:
            return Client(kind="service", ip=ip, namespace=svc[0], name=svc[1],
                          reason="Service ClusterIP"), -INF, INF

        if history:
            spans = "; ".join(
                f"{h.pod.key} from {clock(h.start)}"
                + ("" if h.end == INF else f" to {clock(h.end)}") for h in history)
            return Client(kind="unknown", ip=ip,
                          reason=f"no known pod held this address then ({spans})"), ts, ts

        node = inv.node_for_pod_cidr(ip)
        if node is not None and inv.scope:
            return Client(kind="unknown", ip=ip, node=node.name, reason=(
                f"address in {node.name}'s podCIDR held by no pod of {_scope(inv)}: a pod in "
                "another namespace, or the node's CNI gateway")), -INF, INF
        if node is not None:
            cands = sorted(p.key for p in inv.host_network_pods(node.name, ts))
            reason = (f"address in {node.name}'s podCIDR held by no pod: the node's CNI "
                      "gateway (bridge x.x.x.1 / flannel x.x.x.0 / tunl0 / cilium_host)")
            if ts < inv.since and not inv.watching:
                reason += f", or a pod deleted before the inventory was taken ({clock(inv.since)})"
            lo, hi = self._stable(node.name, ts)
            if ts < inv.since:
                hi = min(hi, inv.since)
            return Client(kind="node", ip=ip, name=node.name, node=node.name,
                          candidates=cands, reason=reason), lo, hi

        if inv.scope and not _is_public(ip):
            return Client(kind="unknown", ip=ip, reason=(
                f"no pod of {_scope(inv)}, node or Service known to hold this address "
                "(pods may be listed only there)")), -INF, INF
        return _outside(ip, inv.empty), -INF, INF

    def _stable(self, node: str, ts: float) -> tuple[float, float]:
        """The time range around ``ts`` in which the node's hostNetwork pods do not change."""
        lo, hi = -INF, INF
        for h in self.inventory.host_pods.get(node, ()):
            for edge in (h.start - FIRST_HOLDER_SLACK, h.end):
                if edge <= ts:
                    lo = max(lo, edge)
                else:
                    hi = min(hi, edge)
        return lo, hi

    def _pod_client(self, ip: str, pod: PodInfo) -> Client:
        return Client(kind="pod", ip=ip, namespace=pod.namespace, name=pod.name,
                      workload=self.inventory.workload(pod), node=pod.node)

    def _valid(self, ip: str, pod: PodInfo) -> tuple[float, float]:
        """The time range in which ``pod`` is the only holder: where the cache may answer."""
        lo, hi = 0.0, 0.0
        others = []
        for h in self.inventory.history(ip):
            if h.pod is pod:
                lo, hi = h.start, h.end
            else:
                others.append(h)
        for h in others:
            if h.end <= hi and h.end > lo:
                lo = h.end
            if lo <= h.start < hi:
                hi = h.start
        return lo, hi


def scope_label(inv: Inventory) -> str:
    """``meta.attribution`` of ``-o json``: "cluster", or "namespaces a, b" (always plural,
    for whoever parses it) when pods could be listed only there."""
    return "namespaces " + ", ".join(inv.scope) if inv.scope else "cluster"


def scope_notice(inv: Inventory) -> str:
    """What a trace or ``analyze`` says when the inventory covers only some namespaces."""
    return ("you may not list pods in every namespace: client attribution covers the pods of "
            f"{', '.join(inv.scope)} only; clients in other namespaces show as unknown "
            "addresses")


def _scope(inv: Inventory) -> str:
    return ("namespace " if len(inv.scope) == 1 else "namespaces ") + ", ".join(inv.scope)


def _is_public(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_global
    except ValueError:
        return False


def _outside(ip: str, no_inventory: bool = False) -> Client:
    if _is_public(ip):
        return Client(kind="external", ip=ip, reason="a public address outside the cluster")
    if no_inventory:
        return Client(kind="unknown", ip=ip, reason="no cluster inventory (offline): address only")
    return Client(kind="unknown", ip=ip,
                  reason="not a pod, node or Service address known to the inventory")
