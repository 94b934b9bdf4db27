"""Who held which address, and when: pods, nodes and services of the cluster, with history.

The inventory is listed once and then kept current by a pod watch for the whole trace.
It keeps *history* rather than a snapshot, because the events it explains happened at
their own instant:

- a CronJob's Job pod may live four seconds; once deleted it vanishes from the API, yet
  the query it sent must still be named after it;
- pod IPs are reused. A completed pod (phase Succeeded/Failed) keeps ``status.podIP`` in
  the API although the kubelet released the address when it tore the sandbox down, so a
  new pod can hold the same IP while the old object still exists.

So every pod address is a list of *holdings* (start, end, pod). A holding starts at the
pod's ``status.startTime`` (when the kubelet acknowledged the pod: before the sandbox and
its IP exist) and ends when its containers finished (``finishedAt``, truncated to the
second by the API, hence one second of slack) or when the pod was deleted. When a new pod
shows up with an address whose previous holder has no known end, the new pod is proof
that the old one let go: the old holding is closed at the new one's start. Overlapping
holdings are not resolved by guessing: an event inside the overlap is ambiguous.

hostNetwork pods share their node's address and never own it: they are kept per node as
*candidates* for that node's addresses.

Owners are resolved lazily (only for pods that appear in events), the way a human names
workloads: Pod -> ReplicaSet -> Deployment, Job -> CronJob, DaemonSet, StatefulSet. A
403 or 404 while reading a ReplicaSet or Job degrades to the owner reference itself
("ReplicaSet/web-5d8f7c9b6"), never to a failure of the run.
"""

from __future__ import annotations

import ipaddress
import itertools
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubectl_dnstrace.errors import DnstraceError, Forbidden

INF = float("inf")
# finishedAt / startTime / creationTimestamp are RFC 3339 with whole seconds (truncated).
TRUNCATION_SLACK = 1.0
# Failed pod watches in a row before the user is told and events stop waiting for it.
WATCH_GIVE_UP = 5

# Tolerance before the first known holder of an address: clocks of nodes and API server
# differ a little, and startTime is truncated.
FIRST_HOLDER_SLACK = 2.0

DNS_ROLE_LABELS = {"kube-dns": "coredns", "node-local-dns": "node-local-dns"}
_TERMINAL_PHASES = ("Succeeded", "Failed")
_OWNER_KINDS = {"ReplicaSet": "replicasets", "Job": "jobs"}

# Every field this module reads from an API object, with the JSON type it must have (a
# dict: an object with these fields; a one-item list: a list of such). The API server's
# objects always match; a saved file (``analyze --pods``) may not — edited, damaged, or
# hostile — and is checked against this before anything is read from it (``misfit``).
_OWNER_REFS = [{"kind": str, "name": str}]
_READ: dict[str, Any] = {
    "kind": str,
    "metadata": {"name": str, "namespace": str, "uid": str, "resourceVersion": str,
                 "creationTimestamp": str, "ownerReferences": _OWNER_REFS,
                 "labels": {"pod-template-hash": str, "k8s-app": str}},
    "spec": {"nodeName": str, "podCIDR": str, "podCIDRs": [str], "clusterIP": str,
             "clusterIPs": [str]},
    "status": {"podIP": str, "podIPs": [{"ip": str}], "phase": str, "startTime": str,
               "addresses": [{"type": str, "address": str}],
               "containerStatuses": [{"state": {"terminated": {"finishedAt": str}}}]},
}


class ObjectMisfit(Exception):
    """An object of a saved listing has a field this module reads in another type."""

    def __init__(self, index: int, obj: dict, field: str) -> None:
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        name = "/".join(str(meta.get(k)) for k in ("namespace", "name") if meta.get(k))
        kind = obj.get("kind") if isinstance(obj.get("kind"), str) else "object"
        super().__init__(f"item {index} ({kind} {name or 'without a name'}): {field}")


def misfit(value: Any, spec: Any = _READ, path: str = "") -> str | None:
    """What is wrong with the first field of ``value`` read by this module whose JSON type
    is not the API's ("status.podIPs[0].ip is not a string"), or None. Absent fields and
    nulls are fine: the reads default them."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{path or 'it'} is not an object"
        for key, sub in spec.items():
            field = value.get(key)
            found = None if field is None else misfit(field, sub, f"{path}.{key}".lstrip("."))
            if found:
                return found
        return None
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{path} is not a list"
        return next((found for i, item in enumerate(value)
                     if (found := misfit(item, spec[0], f"{path}[{i}]"))), None)
    return None if isinstance(value, spec) else f"{path} is not {_JSON_NAMES[spec]}"


_JSON_NAMES = {str: "a string"}  # the leaf types of _READ, as the message names them


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch from an RFC 3339 API timestamp, or None."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(slots=True)
class PodInfo:
    """What attribution needs of a pod; ``workload`` is None until first resolved."""

    uid: str
    namespace: str
    name: str
    node: str
    host_network: bool
    owner: tuple[str, str] | None  # controller ownerReference (kind, name)
    template_hash: str  # label pod-template-hash (a Deployment's ReplicaSet suffix)
    dns_role: str  # "coredns" | "node-local-dns" | ""
    ips: tuple[str, ...]
    workload: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(slots=True)
class Holding:
    """``pod`` held an address (or, for hostNetwork pods, ran on a node) in [start, end)."""

    start: float
    end: float
    pod: PodInfo


@dataclass(slots=True)
class NodeInfo:
    name: str
    addresses: tuple[tuple[str, str], ...]  # (type, address): InternalIP, ExternalIP
    pod_cidrs: tuple[Any, ...]  # ipaddress networks from spec.podCIDR(s)


class OwnerResolver:
    """Names the workload behind a controller reference, with a cache and graceful 403s.

    Without a cluster (``kube`` None) it uses the objects it was given, and recognises a
    Deployment's ReplicaSet by its name: the Deployment controller names each ReplicaSet
    ``<deployment>-<pod-template-hash>``, and the pod carries that hash as a label.
    """

    def __init__(self, kube: Any = None, objects: Iterable[dict] = ()) -> None:
        self.kube = kube
        self._cache: dict[tuple[str, str, str], str] = {}
        self._denied: set[tuple[str, str]] = set()  # (resource, namespace) that said 403/404
        for obj in objects:
            self.add(obj)

    def add(self, obj: dict) -> None:
        """A ReplicaSet or Job as given (a saved listing): its workload is known."""
        meta = obj.get("metadata") or {}
        kind = obj.get("kind") or ""
        ref = _controller(meta)
        key = (meta.get("namespace") or "", kind, meta.get("name") or "")
        self._cache[key] = _top_owner(kind, meta.get("name") or "", ref)

    def workload(self, pod: PodInfo) -> str:
        if pod.owner is None:
            return ""
        kind, name = pod.owner
        if kind not in _OWNER_KINDS:
            return f"{kind}/{name}"  # DaemonSet, StatefulSet, Node (static pods), custom
        key = (pod.namespace, kind, name)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        resolved = self._lookup(pod, kind, name)
        self._cache[key] = resolved
        return resolved

    def _lookup(self, pod: PodInfo, kind: str, name: str) -> str:
        fallback = f"{kind}/{name}"
        resource = _OWNER_KINDS[kind]
        if self.kube is None or (resource, pod.namespace) in self._denied:
            if (kind == "ReplicaSet" and pod.template_hash
                    and name.endswith("-" + pod.template_hash)):
                return "Deployment/" + name[: -len(pod.template_hash) - 1]
            return fallback
        try:
            obj = self.kube.get(resource, name, pod.namespace)
        except DnstraceError:
            # 403 (no apps/batch get), 404 (already gone) or a flaky API: the reference
            # itself is still an honest name for the workload.
            self._denied.add((resource, pod.namespace))
            return self._lookup(pod, kind, name)
        return _top_owner(kind, name, _controller(obj.get("metadata") or {}))


def _controller(meta: dict) -> tuple[str, str] | None:
    refs = meta.get("ownerReferences") or []
    for ref in refs:
        if ref.get("controller"):
            return ref.get("kind") or "", ref.get("name") or ""
    if refs:
        return refs[0].get("kind") or "", refs[0].get("name") or ""
    return None


def _top_owner(kind: str, name: str, ref: tuple[str, str] | None) -> str:
    if ref and (kind, ref[0]) in (("ReplicaSet", "Deployment"), ("Job", "CronJob")):
        return f"{ref[0]}/{ref[1]}"
    return f"{kind}/{name}"


class Inventory:
    """Pods (with address history), nodes and services. Thread-safe: a watch thread
    writes while the pipeline reads; ``version`` changes on every write so readers can
    cache."""

    def __init__(self, owners: OwnerResolver | None = None) -> None:
        self.owners = owners or OwnerResolver()
        self.pods: dict[str, PodInfo] = {}  # uid -> latest
        self.holdings: dict[str, list[Holding]] = {}  # pod ip -> holdings by start
        self.host_pods: dict[str, list[Holding]] = {}  # node -> hostNetwork pod holdings
        self.nodes: dict[str, NodeInfo] = {}
        self.node_by_address: dict[str, tuple[NodeInfo, str]] = {}  # ip -> (node, type)
        self.services: dict[str, tuple[str, str]] = {}  # cluster ip -> (namespace, name)
        self.since: float = 0.0  # when the list was taken (events before it: less known)
        # The namespaces whose pods are known, when pods may not be listed cluster-wide;
        # empty: every namespace. Partial knowledge changes what an unknown address means.
        self.scope: tuple[str, ...] = ()
        self.watching: bool = False
        self.version = 0
        self.watch_error: str = ""
        self.watch_failures = 0  # in a row; WATCH_GIVE_UP of them and the watch is reported
        # Where "the pod watch keeps failing" (and "is back") goes: stderr in a trace.
        self.on_notice: Any = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watchers: list[Any] = []  # the clients the watch threads read with
        self._resource_versions: dict[str | None, str] = {}  # namespace (None: all) -> list rv

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def from_objects(cls, pods: Iterable[dict], nodes: Iterable[dict] = (),
                     services: Iterable[dict] = (), owners: Iterable[dict] = (),
                     since: float | None = None) -> Inventory:
        """An inventory from plain API objects (a saved ``kubectl get pods -A -o json``,
        test fixtures). ``owners`` may hold ReplicaSets and Jobs to name workloads."""
        inv = cls(OwnerResolver(None, owners))
        inv.since = time.time() if since is None else since
        for node in nodes:
            inv.add_node(node)
        for svc in services:
            inv.add_service(svc)
        for pod in pods:
            inv.upsert_pod(pod, observed=inv.since)
        return inv

    @classmethod
    def from_items(cls, items: Iterable[Any], since: float) -> Inventory:
        """An inventory from a listing's items of any kind, in any order, taken one at a
        time (a pod's entry depends on no node, Service or owner: those are used when asked).
        Raises ObjectMisfit for an item whose fields are not the API's types (a saved file
        can be anything)."""
        inv = cls(OwnerResolver(None))
        inv.since = since
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            field = misfit(item)
            if field is not None:
                raise ObjectMisfit(index, item, field)
            kind = item.get("kind") or "Pod"
            if kind == "Pod":
                inv.upsert_pod(item, observed=since)
            elif kind == "Node":
                inv.add_node(item)
            elif kind == "Service":
                inv.add_service(item)
            elif kind in ("ReplicaSet", "Job"):
                inv.owners.add(item)
        return inv

    @classmethod
    def from_cluster(cls, kube: Any, namespaces: Iterable[str] = ()) -> Inventory:
        """List pods (all namespaces), nodes and services once; ``start_watch`` follows.

        When pods may not be listed cluster-wide (a namespace Role, as ``kubectl dnstrace
        rbac`` prints without ``--cluster``), the pods and services of ``namespaces`` are
        listed instead, each namespace that allows it; ``scope`` names them. Only when not
        one allows it is the cluster-wide refusal raised.
        """
        inv = cls(OwnerResolver(kube))
        inv.since = time.time()
        for node in _list_or_empty(kube, "nodes"):
            inv.add_node(node)
        try:
            scopes: list[str | None] = [None]
            inv._resource_versions[None] = inv._relist(kube, None, inv.since)
        except Forbidden as refused:
            scopes = []
            for ns in sorted(set(namespaces) - {""}):
                try:
                    inv._resource_versions[ns] = inv._relist(kube, ns, inv.since)
                except Forbidden:
                    continue
                scopes.append(ns)
            if not scopes:
                raise refused from None
            inv.scope = tuple(scopes)
        for ns in scopes:
            for svc in _list_or_empty(kube, "services", ns):
                inv.add_service(svc)
        return inv

    # ---- the pod watch ---------------------------------------------------------------------

    def start_watch(self, kube: Any, timeout_seconds: float = 60.0) -> None:
        """Follow pod changes in a daemon thread until ``stop`` (one per namespace of a
        partial ``scope``).

        The watch resumes from the last resourceVersion when the server closes it, and
        relists when the version is too old (410 Gone): a pod deleted in between is
        closed at the relist.
        """
        if self._threads:
            return
        self.watching = True
        for ns in self.scope or (None,):
            watcher = kube.clone() if hasattr(kube, "clone") else kube
            self._watchers.append(watcher)
            thread = threading.Thread(target=self._watch_loop,
                                      args=(watcher, timeout_seconds, ns),
                                      name=f"dnstrace-pod-watch-{ns or 'all'}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, wait: float = 2.0) -> None:
        """End the watch: its open reads are interrupted and its threads joined (at most
        ``wait`` seconds in all), so none is left reading when the process exits."""
        self._stop.set()
        self.watching = False
        for watcher in self._watchers:
            if hasattr(watcher, "interrupt"):
                watcher.interrupt()
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _watch_loop(self, kube: Any, timeout_seconds: float, namespace: str | None) -> None:
        try:
            self._follow(kube, timeout_seconds, namespace)
        finally:
            if hasattr(kube, "close"):
                kube.close()

    def _follow(self, kube: Any, timeout_seconds: float, namespace: str | None) -> None:
        rv = self._resource_versions.get(namespace) or None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist(kube, namespace)
                for etype, obj in kube.watch("pods", namespace, resource_version=rv,
                                             timeout_seconds=timeout_seconds):
                    self._watch_ok()
                    if self._stop.is_set():
                        return
                    meta = obj.get("metadata") or {}
                    if etype == "ERROR":
                        rv = None  # 410 Gone: relist
                        break
                    rv = meta.get("resourceVersion") or rv
                    if etype in ("ADDED", "MODIFIED"):
                        self.upsert_pod(obj, observed=time.time())
                    elif etype == "DELETED":
                        self.upsert_pod(obj, observed=time.time(), deleted=True)
            except DnstraceError as exc:
                if self._stop.is_set():
                    return  # our own ``stop`` ended the read
                self._stop.wait(self._watch_failed(exc.message))
            except Exception as exc:  # the watch must never take the trace down
                if self._stop.is_set():
                    return
                self._stop.wait(self._watch_failed(f"{type(exc).__name__}: {exc}"))

    def _watch_failed(self, why: str) -> float:
        """Count a failed watch; the WATCH_GIVE_UP-th in a row is said, and from then on no
        event waits for the watch (``watching`` off) — a pipeline holding events for a watch
        that does not come would hold them for nothing. Returns the wait before retrying
        (1 s, growing to 10 s while it keeps failing)."""
        with self._lock:
            self.watch_error = why
            self.watch_failures += 1
            failures = self.watch_failures
            if failures == WATCH_GIVE_UP:
                self.watching = False
        if failures == WATCH_GIVE_UP and self.on_notice is not None:
            self.on_notice(
                f"warning: the pod watch failed {failures} times in a row ({why}); pods "
                "created from now on may show as unknown addresses. Still retrying")
        return min(1.0 * max(1, failures - WATCH_GIVE_UP + 1), 10.0)

    def _watch_ok(self) -> None:
        if not self.watch_failures:
            return
        with self._lock:
            back = self.watch_failures >= WATCH_GIVE_UP
            self.watch_failures = 0
            self.watch_error = ""
            if not self._stop.is_set():
                self.watching = True
        if back and self.on_notice is not None:
            self.on_notice("the pod watch works again")

    def _relist(self, kube: Any, namespace: str | None, now: float | None = None) -> str:
        """List the pods (of ``namespace``, or all) a page at a time — 10,000 pods as the API
        returns them are some hundred MB of objects, their inventory a few MB — and close
        the ones that were not listed (deleted in between). Returns the list's version."""
        now = time.time() if now is None else now
        seen: set[str] = set()
        rv = ""
        for items, page_rv in kube.list_pages("pods", namespace, on_restart=seen.clear):
            for pod in items:
                seen.add(self.upsert_pod(pod, observed=now))
            rv = page_rv
        with self._lock:
            gone = [p for uid, p in self.pods.items() if uid not in seen
                    and (namespace is None or p.namespace == namespace)]
        for pod in gone:
            self._close(pod, now)
        return rv

    # ---- writers ---------------------------------------------------------------------------

    def add_node(self, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        addresses = tuple(
            (a.get("type") or "", a.get("address") or "")
            for a in status.get("addresses") or []
            if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")
        )
        cidrs = []
        for text in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
            try:
                cidrs.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                continue
        node = NodeInfo(meta.get("name") or "", addresses, tuple(cidrs))
        with self._lock:
            self.nodes[node.name] = node
            for kind, addr in addresses:
                self.node_by_address[_norm(addr)] = (node, kind)
            self.version += 1

    def add_service(self, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        ips = list(spec.get("clusterIPs") or []) or [spec.get("clusterIP")]
        with self._lock:
            for ip in ips:
                if ip and ip != "None":
                    self.services[_norm(ip)] = (meta.get("namespace") or "", meta.get("name") or "")
            self.version += 1

    def upsert_pod(self, obj: dict, observed: float, deleted: bool = False) -> str:
        """Record a pod as listed or watched; returns its uid."""
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        uid = meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"
        ips = tuple(dict.fromkeys(
            _norm(x.get("ip")) for x in (status.get("podIPs") or []) if x.get("ip")
        )) or ((_norm(status["podIP"]),) if status.get("podIP") else ())
        labels = meta.get("labels") or {}
        with self._lock:
            pod = self.pods.get(uid)
            if pod is None:
                pod = PodInfo(
                    uid=uid,
                    namespace=meta.get("namespace") or "",
                    name=meta.get("name") or "",
                    node=spec.get("nodeName") or "",
                    host_network=bool(spec.get("hostNetwork")),
                    owner=_controller(meta),
                    template_hash=labels.get("pod-template-hash") or "",
                    dns_role=DNS_ROLE_LABELS.get(labels.get("k8s-app") or "", ""),
                    ips=ips,
                )
                self.pods[uid] = pod
            else:
                pod.node = spec.get("nodeName") or pod.node
                if ips:
                    pod.ips = tuple(dict.fromkeys(pod.ips + ips))
            start = _first_known(parse_time(status.get("startTime")),
                                 parse_time(meta.get("creationTimestamp")), observed)
            end = _end_time(status, observed, deleted)
            if pod.host_network:
                if pod.node:
                    self._hold(self.host_pods.setdefault(pod.node, []), pod, start, end)
            else:
                for ip in ips:
                    self._hold(self.holdings.setdefault(ip, []), pod, start, end)
            self.version += 1
        return uid

    def _close(self, pod: PodInfo, when: float) -> None:
        with self._lock:
            lists = ([self.host_pods.get(pod.node, [])] if pod.host_network
                     else [self.holdings.get(ip, []) for ip in pod.ips])
            for hs in lists:
                for h in hs:
                    if h.pod is pod and h.end > when:
                        h.end = when
            self.version += 1

    @staticmethod
    def _hold(hs: list[Holding], pod: PodInfo, start: float, end: float) -> None:
        for h in hs:
            if h.pod is pod:
                h.end = min(h.end, end)
                return
        hs.append(Holding(start, end, pod))
        hs.sort(key=lambda h: h.start)
        if not pod.host_network:
            # A later holder proves the earlier one let go of the address (two running
            # pods never share a pod IP): an open holding ends where the next one starts.
            for earlier, later in itertools.pairwise(hs):
                if earlier.end == INF:
                    earlier.end = max(earlier.start, later.start)

    # ---- readers ---------------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        """No cluster knowledge at all (``analyze --offline`` without ``--pods``)."""
        return not (self.pods or self.nodes or self.services)

    def holders(self, ip: str, ts: float) -> list[PodInfo]:
        """Pods that held ``ip`` at ``ts`` (usually one; two inside a handover overlap)."""
        hs = self.holdings.get(ip)
        if not hs:
            return []
        with self._lock:
            first = hs[0]
            return [h.pod for h in hs
                    if (h.start - (FIRST_HOLDER_SLACK if h is first else 0.0)) <= ts < h.end]

    def history(self, ip: str) -> list[Holding]:
        with self._lock:
            return list(self.holdings.get(ip, ()))

    def host_network_pods(self, node: str, ts: float) -> list[PodInfo]:
        with self._lock:
            return [h.pod for h in self.host_pods.get(node, ())
                    if h.start - FIRST_HOLDER_SLACK <= ts < h.end]

    def node_for_pod_cidr(self, ip: str) -> NodeInfo | None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        with self._lock:
            for node in self.nodes.values():
                for net in node.pod_cidrs:
                    if addr.version == net.version and addr in net:
                        return node
        return None

    def workload(self, pod: PodInfo) -> str:
        if pod.workload is None:
            pod.workload = self.owners.workload(pod)
        return pod.workload

    def pod_by_key(self, key: str) -> PodInfo | None:
        """The latest pod named "namespace/name" (a name may have been reused: the newest)."""
        with self._lock:
            found = [p for p in self.pods.values() if p.key == key]
        return found[-1] if found else None

    def dns_pods(self, role: str) -> list[PodInfo]:
        """Running DNS pods by role ("coredns" or "node-local-dns"), sorted by name."""
        with self._lock:
            pods = [p for p in self.pods.values() if p.dns_role == role and self._alive(p)]
        return sorted(pods, key=lambda p: (p.namespace, p.name))

    def _alive(self, pod: PodInfo) -> bool:
        hs = self.host_pods.get(pod.node, ()) if pod.host_network else (
            h for ip in pod.ips for h in self.holdings.get(ip, ()))
        return any(h.pod is pod and h.end == INF for h in hs)


def _end_time(status: dict, observed: float, deleted: bool) -> float:
    if status.get("phase") in _TERMINAL_PHASES:
        finished = [
            parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
            for cs in status.get("containerStatuses") or []
        ]
        known = [f for f in finished if f is not None]
        return (max(known) + TRUNCATION_SLACK) if known else observed
    return observed if deleted else INF


def _first_known(*values: float | None) -> float:
    return next(v for v in values if v is not None)


def _norm(ip: str) -> str:
    """One spelling per address (IPv6 has many)."""
    if ":" in ip:
        try:
            return str(ipaddress.ip_address(ip))
        except ValueError:
            return ip
    return ip


def _list_or_empty(kube: Any, kind: str, namespace: str | None = None) -> list[dict]:
    """Nodes and services improve attribution but are not essential: a 403 degrades."""
    try:
        items, _ = kube.list(kind, namespace)
    except DnstraceError:
        return []
    return items
