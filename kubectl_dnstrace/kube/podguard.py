"""Before any pod is changed: is there room in it, and is another trace already in it?

Room: every capture container stays in the pod object until the pod is recreated
(ephemeral containers cannot be removed), and etcd refuses writes over its
``--max-request-bytes`` (1.5 MiB by default). A pod at that size accepts no change at all —
the kubelet's own status updates included, so the pod's status freezes. The API server
reports it as ``500 etcdserver: request is too large``. So each pod is read first, and a
trace that would bring it within :data:`HEADROOM` of the limit is refused, naming the pod
and how to reset it.

Another trace: two traces of one pod at once each add a container and both report the same
packets, without either knowing. A capture container of another run that runs (or is
being created) is reported before anything is added; ``--force`` runs both.

Every pod is checked before the first one is patched: a refusal changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubectl_dnstrace.errors import AlreadyTraced, PodTooLarge
from kubectl_dnstrace.kube.client import Kube
from kubectl_dnstrace.model import PodRef

CONTAINER_PREFIX = "dnstrace-"
ETCD_LIMIT = 1_572_864  # etcd's default --max-request-bytes (1.5 MiB)
HEADROOM = 100 * 1024  # refuse a trace that leaves less than this below the limit
# What the API server and the kubelet add for one ephemeral container beyond what we send:
# defaulted fields (terminationMessagePath, resources, imagePullPolicy) and its terminated
# status entry (container ID, image ID, times); measured on the real cluster, see
# docs/performance.md ("Pod object footprint").
SERVER_BYTES = 750
STARTING = ("ContainerCreating", "PodInitializing")
# The kubelet reports a container's end a few seconds after it: a trace that just ended
# still shows "running". This long, a pod that another trace seems to run in is read again
# before the new trace is refused (back-to-back traces of one pod are normal).
ENDING_GRACE = 12.0


def object_size(obj: dict) -> int:
    """The object's size as compact JSON, as the API serves it (etcd stores protobuf,
    which is smaller: the estimate errs on the safe side)."""
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def container_cost(container: dict) -> int:
    """Bytes one capture container adds to the pod object for the pod's lifetime."""
    return object_size(container) + SERVER_BYTES


@dataclass(slots=True)
class OtherTrace:
    """A capture container of another run, still running or starting."""

    name: str
    state: str  # "running" | "starting"
    user: str = ""
    since: str = ""

    def describe(self) -> str:
        who = f" by {self.user}" if self.user else ""
        when = f" since {self.since}" if self.since else ""
        return f"{self.name} ({self.state}{when}{who})"


def other_traces(pod_obj: dict, own_name: str) -> list[OtherTrace]:
    """Capture containers of other runs that capture now or are about to."""
    spec = (pod_obj.get("spec") or {}).get("ephemeralContainers") or []
    statuses = {s.get("name"): s for s in (pod_obj.get("status") or {})
                .get("ephemeralContainerStatuses") or []}
    found = []
    for c in spec:
        name = c.get("name", "")
        if not name.startswith(CONTAINER_PREFIX) or name == own_name:
            continue
        env = {e.get("name"): e.get("value", "") for e in c.get("env") or []}
        state = (statuses.get(name) or {}).get("state") or {}
        if "running" in state:
            found.append(OtherTrace(name, "running", env.get("DNSTRACE_USER", ""),
                                    (state["running"] or {}).get("startedAt", "")))
        elif name not in statuses or (state.get("waiting") or {}).get("reason") in STARTING:
            found.append(OtherTrace(name, "starting", env.get("DNSTRACE_USER", "")))
    return found


@dataclass(slots=True)
class PodRoom:
    """A pod's size before the trace and what the trace adds."""

    pod: PodRef
    size: int
    cost: int

    @property
    def after(self) -> int:
        return self.size + self.cost


def check_pods(kube: Kube, pods: list[PodRef], container_for: Callable[[PodRef], dict],
               force: bool = False,
               notice: Callable[[str], None] = lambda s: None,
               grace: float = ENDING_GRACE,
               sleep: Callable[[float], None] = time.sleep) -> dict[str, PodRoom]:
    """Read every pod; refuse (changing nothing) when one is too full or already traced.

    Returns each pod's room by key, for telling the user what the trace added.
    """
    rooms: dict[str, PodRoom] = {}
    full: list[PodRoom] = []
    traced: list[tuple[PodRef, list[OtherTrace]]] = []
    for pod in pods:
        obj = kube.get("pods", pod.name, pod.namespace)
        container = container_for(pod)
        room = rooms[pod.key] = PodRoom(pod, object_size(obj), container_cost(container))
        if room.after > ETCD_LIMIT - HEADROOM:
            full.append(room)
        others = other_traces(obj, container.get("name", ""))
        if others:
            traced.append((pod, others))
    if full:
        raise PodTooLarge(
            "not adding a capture container: " + "; ".join(
                f"pod {r.pod.key} is {r.size / 1024:.0f} KB and the trace would add "
                f"{r.cost / 1024:.1f} KB, within {HEADROOM // 1024} KB of etcd's "
                f"{ETCD_LIMIT / 1048576:.1f} MiB object limit" for r in full)
            + ". At the limit no change to the pod is accepted, the kubelet's status updates "
            "included",
            "recreate the pod to drop its old ephemeral containers (e.g. kubectl rollout "
            f"restart deployment/NAME -n {full[0].pod.namespace}, or delete the pod if a "
            "controller recreates it), then trace again; nothing was changed",
        )
    if traced and not force:
        traced = _wait_ending(kube, traced, container_for, grace, notice, sleep)
    if traced:
        text = "; ".join(f"pod {pod.key} has {', '.join(o.describe() for o in others)}"
                         for pod, others in traced)
        if not force:
            raise AlreadyTraced(
                f"another trace is running: {text}. Both would capture the same packets and "
                "each adds a container to the pod",
                "wait for it to end (its agent stops at its --duration deadline), or pass "
                "--force to run both; nothing was changed",
            )
        notice(f"warning: another trace is running ({text}); --force: tracing anyway")
    return rooms


def _wait_ending(kube: Kube, traced: list[tuple[PodRef, list[OtherTrace]]],
                 container_for: Callable[[PodRef], dict], grace: float,
                 notice: Callable[[str], None],
                 sleep: Callable[[float], None]) -> list[tuple[PodRef, list[OtherTrace]]]:
    """Read the pods again for ``grace`` seconds; returns those still traced."""
    notice("another trace's capture container seems to run in "
           + ", ".join(pod.key for pod, _ in traced)
           + f": waiting up to {grace:.0f}s in case it is just ending")
    end = time.monotonic() + grace
    while traced and time.monotonic() < end:
        sleep(1.0)
        still = []
        for pod, _ in traced:
            obj = kube.get("pods", pod.name, pod.namespace)
            others = other_traces(obj, container_for(pod).get("name", ""))
            if others:
                still.append((pod, others))
        traced = still
    return traced
