"""An in-memory etcd + watch cache: plain dict objects, one global resourceVersion.

Mirrors the storage semantics clients rely on:
- every write bumps one cluster-wide, monotonically increasing ``resourceVersion`` (a string);
  lists carry the current one in ``metadata.resourceVersion``;
- a write that changes nothing (the recorded no-op strategic-merge PATCH) keeps the
  resourceVersion and emits no watch event;
- watches replay history after a given resourceVersion (410 Expired when it is older than the
  kept window), ``"0"``/absent starts with synthetic ADDED events for the current objects;
- with a selector, an object that stops matching is sent as DELETED and one that starts
  matching as ADDED, like the watch cache does.
"""

from __future__ import annotations

import copy
import queue
import random
import string
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from . import defaults, resources
from .resources import Resource
from .status import ApiError, already_exists, conflict, failure, not_found

HISTORY = 20000


def resolve(kind: str | Resource) -> Resource:
    """A Resource from a plural ("pods"), a Kind ("Pod"), "deployments.apps" or a Resource."""
    if isinstance(kind, Resource):
        return kind
    if "." in kind:
        plural, group = kind.split(".", 1)
        return resources.by_plural(plural, group)
    try:
        return resources.by_plural(kind)
    except KeyError:
        return resources.by_kind(kind)


@dataclass
class Watcher:
    res: Resource
    namespace: str | None
    match: Callable[[dict], bool]
    events: queue.Queue = field(default_factory=queue.Queue)
    closed: bool = False

    def offer(self, etype: str, old: dict | None, new: dict) -> None:
        if self.namespace and new["metadata"].get("namespace") != self.namespace:
            return
        now = self.match(new)
        before = old is not None and self.match(old)
        if etype == "DELETED":
            if now:
                self.events.put(("DELETED", new))
        elif now and (etype == "ADDED" or not before):
            self.events.put(("ADDED", new))
        elif now:
            self.events.put(("MODIFIED", new))
        elif before:
            self.events.put(("DELETED", new))

    def close(self) -> None:
        self.closed = True
        self.events.put(None)


class Store:
    """Objects by resource, then by (namespace, name). Thread-safe; returns deep copies."""

    def __init__(self, first_rv: int = 100):
        self.lock = threading.RLock()
        self._rv = first_rv
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}
        self._history: deque = deque(maxlen=HISTORY)
        self._watchers: list[Watcher] = []
        self._listeners: list[Callable[[str, Resource, dict | None, dict], None]] = []

    # -- reads -------------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        with self.lock:
            return str(self._rv)

    def get(self, kind: str | Resource, name: str, namespace: str | None = None) -> dict:
        res = resolve(kind)
        with self.lock:
            obj = self._bucket(res).get((namespace or "" if res.namespaced else "", name))
            if obj is None:
                raise not_found(res, name)
            return copy.deepcopy(obj)

    def find(self, kind: str | Resource, name: str, namespace: str | None = None) -> dict | None:
        try:
            return self.get(kind, name, namespace)
        except ApiError:
            return None

    def list(self, kind: str | Resource, namespace: str | None = None,
             match: Callable[[dict], bool] | None = None) -> tuple[list[dict], str]:
        items, rv, _ = self.page(kind, namespace, match)
        return items, rv

    def page(self, kind: str | Resource, namespace: str | None = None,
             match: Callable[[dict], bool] | None = None, after: tuple[str, str] | None = None,
             limit: int = 0) -> tuple[list[dict], str, int]:
        """The objects after the key ``after`` (namespace, name), at most ``limit`` (0: all),
        copied; with the version and how many more match after them."""
        res = resolve(kind)
        with self.lock:
            keys = [key for key, o in sorted(self._bucket(res).items())
                    if (not namespace or key[0] == namespace) and (after is None or key > after)
                    and (match is None or match(o))]
            shown = keys[:limit] if limit else keys
            bucket = self._bucket(res)
            return ([copy.deepcopy(bucket[key]) for key in shown], str(self._rv),
                    len(keys) - len(shown))

    def oldest_version(self) -> int:
        """The oldest resourceVersion still consistent to read (what compaction left)."""
        with self.lock:
            if len(self._history) < (self._history.maxlen or 0):
                return 0
            return self._history[0][0] - 1

    def namespace_exists(self, name: str) -> bool:
        return self.find("namespaces", name) is not None

    # -- writes ------------------------------------------------------------------------------

    def create(self, obj: dict, kind: str | Resource | None = None, namespace: str | None = None) -> dict:
        """Create ``obj`` (kind from ``obj["kind"]`` unless given); returns the stored copy."""
        res = resolve(kind or obj["kind"])
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        if not meta.get("name"):
            raise ApiError(failure(422, f'{res.kind} "" is invalid: metadata.name: Required value: name or '
                                   "generateName is required", "Invalid",
                                   {"kind": res.kind, "causes": [{"reason": "FieldValueRequired",
                                    "message": "Required value: name or generateName is required",
                                                                  "field": "metadata.name"}]}))
        obj["kind"], obj["apiVersion"] = res.kind, res.api_version
        with self.lock:
            if res.namespaced and not self.namespace_exists(meta["namespace"]):
                raise not_found(resources.by_plural("namespaces"), meta["namespace"])
            key = (meta.get("namespace", ""), meta["name"])
            bucket = self._bucket(res)
            if key in bucket:
                raise already_exists(res, meta["name"])
            meta.setdefault("uid", defaults.new_uid())
            meta.setdefault("creationTimestamp", defaults.now_rfc3339())
            meta.pop("resourceVersion", None)
            if res.kind in defaults.GENERATION_KINDS:
                meta["generation"] = 1
            defaults.apply(res.kind, obj)
            self._commit(res, "ADDED", None, obj)
            bucket[key] = obj
            return copy.deepcopy(obj)

    def update(self, obj: dict, kind: str | Resource | None = None, check_rv: bool = True) -> dict:
        """Replace an object. With ``check_rv`` a stale ``metadata.resourceVersion`` is a 409."""
        res = resolve(kind or obj["kind"])
        meta = obj["metadata"]
        with self.lock:
            cur = self._bucket(res).get((meta.get("namespace", "") if res.namespaced else "", meta["name"]))
            if cur is None:
                raise not_found(res, meta["name"])
            if check_rv and meta.get("resourceVersion") and meta["resourceVersion"] != cur["metadata"]["resourceVersion"]:
                raise conflict(res, meta["name"])
            return self._replace(res, cur, copy.deepcopy(obj))

    def mutate(self, kind: str | Resource, name: str, namespace: str | None,
               fn: Callable[[dict], dict | None]) -> dict:
        """Atomically apply ``fn`` to a copy of the object and store the result."""
        res = resolve(kind)
        with self.lock:
            cur = self._bucket(res).get((namespace or "" if res.namespaced else "", name))
            if cur is None:
                raise not_found(res, name)
            work = copy.deepcopy(cur)
            out = fn(work)
            return self._replace(res, cur, out if out is not None else work)

    def delete(self, kind: str | Resource, name: str, namespace: str | None = None) -> dict:
        res = resolve(kind)
        with self.lock:
            key = (namespace or "" if res.namespaced else "", name)
            cur = self._bucket(res).pop(key, None)
            if cur is None:
                raise not_found(res, name)
            gone = copy.deepcopy(cur)
            self._commit(res, "DELETED", cur, gone)
            return copy.deepcopy(gone)

    def ensure_namespace(self, name: str, labels: dict | None = None) -> dict:
        found = self.find("namespaces", name)
        if found:
            return found
        return self.create({"kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}})

    # -- watch -------------------------------------------------------------------------------

    def watch(self, kind: str | Resource, namespace: str | None, match: Callable[[dict], bool],
              since: str | None) -> Watcher:
        """Subscribe; queue history after ``since`` (or ADDED for everything when 0/absent)."""
        res = resolve(kind)
        w = Watcher(res, namespace, match)
        with self.lock:
            if since and since != "0":
                rv = int(since)
                oldest = self._history[0][0] if self._history else self._rv + 1
                if self._history and rv < oldest - 1:
                    w.events.put(("ERROR", failure(410, f"too old resource version: {rv} ({oldest - 1})", "Expired")))
                    w.events.put(None)
                    return w
                for erv, etype, eres, old, new in self._history:
                    if erv > rv and eres.key == res.key:
                        w.offer(etype, old, copy.deepcopy(new))
            else:
                for (ns, _), obj in sorted(self._bucket(res).items()):
                    if (not namespace or ns == namespace) and match(obj):
                        w.events.put(("ADDED", copy.deepcopy(obj)))
            self._watchers.append(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        with self.lock:
            if w in self._watchers:
                self._watchers.remove(w)
        w.close()

    def close_watches(self) -> None:
        with self.lock:
            watchers, self._watchers = self._watchers, []
        for w in watchers:
            w.close()

    def add_listener(self, fn: Callable[[str, Resource, dict | None, dict], None]) -> None:
        """Call ``fn(event_type, resource, old, new)`` after every committed write (under the lock)."""
        self._listeners.append(fn)

    # -- internals ---------------------------------------------------------------------------

    def _bucket(self, res: Resource) -> dict:
        return self._objects.setdefault(res.key, {})

    def _replace(self, res: Resource, cur: dict, new: dict) -> dict:
        new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
        for keep in ("uid", "creationTimestamp", "name", "namespace"):
            if keep in cur["metadata"]:
                new["metadata"][keep] = cur["metadata"][keep]
        new["kind"], new["apiVersion"] = cur["kind"], cur["apiVersion"]
        if "generation" in cur["metadata"]:
            new["metadata"]["generation"] = cur["metadata"]["generation"]
        if new == cur:
            return copy.deepcopy(cur)
        if res.kind in defaults.GENERATION_KINDS and new.get("spec") != cur.get("spec"):
            new["metadata"]["generation"] = cur["metadata"].get("generation", 1) + 1
        old = copy.deepcopy(cur)
        self._commit(res, "MODIFIED", old, new)
        cur.clear()
        cur.update(new)
        return copy.deepcopy(cur)

    def _commit(self, res: Resource, etype: str, old: dict | None, new: dict) -> None:
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        snapshot = copy.deepcopy(new)
        self._history.append((self._rv, etype, res, old, snapshot))
        for w in list(self._watchers):
            if w.res.key == res.key:
                w.offer(etype, old, copy.deepcopy(snapshot))
        for fn in self._listeners:
            fn(etype, res, old, snapshot)
