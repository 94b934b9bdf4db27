"""The node part of one ``kubectl dnstrace`` run (``node/NAME``, ``nodes``): which pod carries
each node's capture, the pods created with ``--create-pod`` (created after every check,
deleted at the end, after Ctrl-C or an error), and the nodes that could not be covered.

``trace.TraceRun`` stays the one lifecycle; this object only adds the node steps to it, so
attaching to a hostNetwork pod is the ordinary ephemeral-container path.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from kubectl_dnstrace.errors import DnstraceError
from kubectl_dnstrace.kube import nodes
from kubectl_dnstrace.kube.ephemeral import CONTAINER_PREFIX, CaptureSpec, build_container
from kubectl_dnstrace.model import PodRef

if TYPE_CHECKING:
    from kubectl_dnstrace.kube.preflight import Preflight
    from kubectl_dnstrace.kube.targets import Resolution
    from kubectl_dnstrace.trace import TraceRun

CREATED_CAPABILITIES = ["NET_RAW"]
ADD_CONCURRENCY = 8  # capture containers added at once (each a PATCH) on many nodes


class NodeTrace:
    def __init__(self, trace: TraceRun, resolution: Resolution) -> None:
        req = trace.req
        self.trace = trace
        self.namespace = (req.pod_namespace or req.cluster.namespace or trace.kube.namespace
                          or "default")
        self.plan = nodes.plan_nodes(
            trace.kube, resolution.nodes, via_pod=req.via_pod, create_pod=req.create_pod,
            pod_namespace=self.namespace, container_name=CONTAINER_PREFIX + trace.run_id)
        if not self.plan.captures:
            raise nodes.uncovered_error(self.plan)
        for node, why in self.plan.uncovered:
            trace.say(f"node {node} is not covered: {why} (--create-pod would create a "
                      "capture pod there)")
        for cap in self.plan.captures:
            trace.say(cap.why)
            if not cap.create:
                resolution.pods.append(cap.pod)
        self.created: list[PodRef] = []
        self.created_keys: set[str] = set()  # pods we made (deleted at the end, not patched)

    @property
    def to_create(self) -> list[nodes.NodeCapture]:
        return [c for c in self.plan.captures if c.create]

    def preflight(self, spec: CaptureSpec, pre: Preflight) -> None:
        if not self.to_create:
            return
        for note in nodes.check_create(self.trace.kube, self.namespace):
            self.trace.say(note)
        # The agents in created pods are asked to stop like the others (pods/exec).
        plan = pre.plan(self.namespace)
        for verb in ("create", "get"):
            with contextlib.suppress(DnstraceError):  # could not ask: the deadline stops it
                plan.can_exec = plan.can_exec or self.trace.kube.can_i(
                    verb, "pods", self.namespace, subresource="exec")[0]
        if not self.trace.req.dry_run:
            for key in nodes.delete_leftovers(self.trace.kube, self.namespace):
                self.trace.say(f"deleted {key}, a finished capture pod of an earlier run")

    def _pod(self, spec: CaptureSpec, cap: nodes.NodeCapture) -> dict:
        container = build_container(spec, cap.pod, CREATED_CAPABILITIES)
        return nodes.capture_pod(cap.pod, container, spec.run_id, self.trace.req.duration)

    def dry_run(self, spec: CaptureSpec) -> None:
        for cap in self.to_create:
            self.trace.out.write(json.dumps({"create": self._pod(spec, cap)}) + "\n")

    def create_pods(self, spec: CaptureSpec) -> None:
        from kubectl_dnstrace.trace import PodRun

        for cap in self.to_create:
            self.trace.progress.set(cap.pod.key, "creating capture pod")
            try:
                nodes.create_capture_pod(self.trace.kube, self._pod(spec, cap))
            except DnstraceError as exc:
                if len(self.plan.captures) <= 1:
                    raise
                self.lost(cap.pod, exc.message)
                continue
            self.created.append(cap.pod)
            self.created_keys.add(cap.pod.key)
            self.trace.say(f"created pod {cap.pod.key} on node {cap.node} (hostNetwork, "
                           f"activeDeadlineSeconds {int(self.trace.req.duration) + nodes.DEADLINE_MARGIN}); "
                           "it is deleted when the trace ends")
            run = PodRun(cap.pod, spec.container_name)
            run.patched_at = time.monotonic()
            self.trace.runs[cap.pod.key] = run

    def add_all(self, pods: list[PodRef], add_one) -> None:
        """``add_one(kube, pod)`` for every carrier pod, ADD_CONCURRENCY at a time (each
        worker with its own client); a failure marks that node not covered. When no pod
        could be added at all, the first failure is raised."""
        if len(pods) == 1 and not self.trace.runs:
            add_one(self.trace.kube, pods[0])  # one node: its error is the run's error
            return
        local = threading.local()
        clients: list = []
        lock = threading.Lock()

        def work(pod: PodRef) -> DnstraceError | None:
            kube = getattr(local, "kube", None)
            if kube is None:
                kube = local.kube = self.trace.kube.clone()
                with lock:
                    clients.append(kube)
            try:
                add_one(kube, pod)
            except DnstraceError as exc:
                return exc
            return None

        first: DnstraceError | None = None
        try:
            with ThreadPoolExecutor(ADD_CONCURRENCY, thread_name_prefix="add") as pool:
                for pod, exc in zip(pods, pool.map(work, pods), strict=True):
                    if exc is not None:
                        first = first or exc
                        self.lost(pod, exc.message)
        finally:
            for kube in clients:
                kube.close()
        if not self.trace.runs and first is not None:
            raise first

    def lost(self, pod: PodRef, why: str) -> None:
        """A node whose capture could not start: the others go on."""
        self.plan.uncovered.append((pod.node or pod.key, f"{pod.key}: {why}"))
        self.trace.say(f"node {pod.node or '?'} is not covered: {pod.key}: {why}")
        self.trace.progress.set(pod.key, "failed")
        if self.trace.pipeline is not None:
            self.trace.pipeline.bypass.uncovered = list(self.plan.uncovered)

    def delete_pods(self) -> None:
        for ref in self.created:
            try:
                nodes.delete_capture_pod(self.trace.kube, ref)
                self.trace.say(f"deleted capture pod {ref.key}")
            except DnstraceError as exc:
                self.trace.say(f"could not delete capture pod {ref.key}: {exc.message}; it "
                               "stops at its activeDeadlineSeconds; delete it with kubectl "
                               f"delete pod {ref.name} -n {ref.namespace}")
        self.created = []
