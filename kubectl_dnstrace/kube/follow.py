"""Workload targets follow their pods for the whole run: new pods in, gone pods out.

``deploy/web`` names a workload, not the pods it has at the start. A rollout, an eviction or
a crash replaces a pod while a trace runs; the capture in the old pod ends with it, and the
replacement asks its questions unseen unless the trace attaches to it too. A ``PodFollower``
watches each workload's selector (list, then watch from the list's version; relist on 410)
and reports, on a queue:

- ``running``: a pod of the workload that was not traced is Running: attach to it;
- ``gone``: a traced pod is terminating, finished or deleted: its capture ends.

``trace`` decides what to do with them (the same pre-flight and footprint rules as at the
start); this module only watches.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

from kubectl_dnstrace.errors import DnstraceError
from kubectl_dnstrace.model import PodRef


@dataclass(frozen=True, slots=True)
class Follow:
    """One workload (or selector) to follow: where, which pods, and what they are to the trace.

    ``owner_uid`` and ``kind``: the workload's uid and API kind, so pods another workload
    owns (an overlapping selector) are left out, as at the start (targets._owned_by).
    """

    what: str  # as the user named it: "deploy/web", "-l app=web", "coredns"
    namespace: str | None  # None: every namespace (-A -l ...)
    selector: str
    role: str = "pod"
    owner_uid: str | None = None
    kind: str = ""


@dataclass(frozen=True, slots=True)
class PodChange:
    kind: str  # "running" | "gone"
    pod: PodRef
    follow: Follow
    why: str = ""


def gone_reason(pod: dict) -> str:
    """Why a pod's capture is over (it is being deleted or has finished), else ""."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "terminating"
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        return f"finished ({phase})"
    return ""


class PodFollower:
    """Watch threads, one per ``Follow``, reporting ``PodChange``s on ``changes``.

    ``traced``: the keys ("ns/pod") already traced at the start; they are reported when they
    go, never as new. ``relist_wait``: seconds between attempts after an error.
    """

    def __init__(self, kube: Any, follows: list[Follow], traced: set[str],
                 watch_timeout: float = 60.0) -> None:
        self.kube = kube
        self.follows = follows
        self.changes: queue.Queue[PodChange] = queue.Queue()
        self.error = ""
        self._traced = set(traced)
        self._members: dict[Follow, set[str]] = {}  # the traced pods of each follow
        self._gone: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchers: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._timeout = watch_timeout

    def start(self) -> None:
        for follow in self.follows:
            watcher = self.kube.clone() if hasattr(self.kube, "clone") else self.kube
            self._watchers.append(watcher)
            thread = threading.Thread(target=self._loop, args=(watcher, follow), daemon=True,
                                      name=f"dnstrace-follow-{follow.what}")
            self._threads.append(thread)
            thread.start()

    def stop(self, wait: float = 2.0) -> None:
        import time

        self._stop.set()
        for watcher in self._watchers:
            if hasattr(watcher, "interrupt"):
                watcher.interrupt()
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for watcher in self._watchers:
            if watcher is not self.kube and hasattr(watcher, "close"):
                watcher.close()

    # ---- the watch ---------------------------------------------------------------------

    def _loop(self, kube: Any, follow: Follow) -> None:
        rv = None
        owners: dict[str, set] = {}
        while not self._stop.is_set():
            try:
                if rv is None:
                    items, rv = kube.list("pods", follow.namespace,
                                          label_selector=follow.selector)
                    listed = set()
                    for pod in items:
                        listed.add(_key(pod))
                        self._look(kube, follow, pod, owners)
                    self._vanished(follow, listed)
                for etype, obj in kube.watch("pods", follow.namespace, resource_version=rv,
                                             label_selector=follow.selector,
                                             timeout_seconds=self._timeout):
                    if self._stop.is_set():
                        return
                    if etype == "ERROR":
                        rv = None  # 410 Gone: relist
                        break
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if etype == "DELETED":
                        self._went(follow, _key(obj), "deleted")
                    elif etype in ("ADDED", "MODIFIED"):
                        self._look(kube, follow, obj, owners)
            except DnstraceError as exc:
                if self._stop.is_set():
                    return
                self.error = exc.message
                rv = None
                self._stop.wait(1.0)
            except Exception as exc:  # the follower must never take the trace down
                if self._stop.is_set():
                    return
                self.error = f"{type(exc).__name__}: {exc}"
                rv = None
                self._stop.wait(1.0)

    def _look(self, kube: Any, follow: Follow, pod: dict, owners: dict[str, set]) -> None:
        from kubectl_dnstrace.kube.targets import _owned_by, not_running_reason, pod_ref

        key = _key(pod)
        why = gone_reason(pod)
        if why:
            self._went(follow, key, why)
            return
        with self._lock:
            known = key in self._traced or key in self._gone
        if known or not_running_reason(pod):
            return
        ns = (pod.get("metadata") or {}).get("namespace") or ""
        if follow.owner_uid and not _owned_by(pod, follow.owner_uid, follow.kind, kube, ns,
                                              owners):
            return
        with self._lock:
            if key in self._traced:
                return
            self._traced.add(key)
            self._members.setdefault(follow, set()).add(key)
        self.changes.put(PodChange("running", pod_ref(pod, follow.role), follow))

    def _went(self, follow: Follow, key: str, why: str) -> None:
        with self._lock:
            if key not in self._members.get(follow, ()) or key in self._gone:
                return
            self._gone.add(key)
        ns, _, name = key.partition("/")
        self.changes.put(PodChange("gone", PodRef(ns, name, role=follow.role), follow, why))

    def _vanished(self, follow: Follow, listed: set[str]) -> None:
        """After a (re)list: this follow's traced pods no longer listed were deleted while
        the watch was down; the traced pods it lists are its own from now on."""
        with self._lock:
            members = self._members.setdefault(follow, set())
            members.update(k for k in listed if k in self._traced)
            missing = [k for k in members if k not in listed and k not in self._gone]
        for key in missing:
            self._went(follow, key, "deleted")


def _key(pod: dict) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"
