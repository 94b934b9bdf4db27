"""A live trace's workload targets, followed: attach to new pods, account for gone ones.

``kube/follow.py`` watches the workloads' selectors and reports pods that start running and
pods that go away; ``coverage.py`` keeps the account. This joins them to a running
``TraceRun``: a new pod gets a capture container under the same rules as at the start
(pre-flight of its namespace, one container per pod, the run's container name, an agent
deadline that ends with the run's), and its log stream joins the others; a gone pod is said
on stderr with the pod that replaces it.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import TYPE_CHECKING

from kubectl_dnstrace.coverage import Coverage
from kubectl_dnstrace.errors import DnstraceError
from kubectl_dnstrace.kube.follow import PodChange, PodFollower

if TYPE_CHECKING:
    from kubectl_dnstrace.kube.targets import Resolution
    from kubectl_dnstrace.trace import TraceRun

MIN_LEFT = 5.0  # seconds: a pod that starts running later than this before the end is not attached


class Following:
    """Owned by a TraceRun once its first agents stream; ``step`` runs in its drain loop."""

    def __init__(self, trace: TraceRun, resolution: Resolution, pre) -> None:
        self.trace = trace
        self.pre = pre
        self.coverage = Coverage()
        self.until = time.monotonic() + trace.req.duration  # the run's end, as the agents'
        self._wall_until = time.time() + trace.req.duration
        self._started: queue.Queue = queue.Queue()  # (PodRun, state or None, error or None)
        self._starting = 0
        self._cancel = threading.Event()
        self._group: dict[str, str] = {}  # pod key -> the workload that brought it
        for key in trace.runs:
            self.coverage.traced(key, "", at=time.time())  # its workload: told when it goes
        self.follower: PodFollower | None = None
        if resolution.follows:
            self.follower = PodFollower(trace.kube, resolution.follows, set(trace.runs))
            self.follower.start()

    @property
    def active(self) -> bool:
        """Still worth waiting for: pods may come while the run lasts, or are starting."""
        if self._cancel.is_set():
            return False
        return self._starting > 0 or (self.follower is not None
                                      and time.monotonic() < self.until)

    def step(self) -> None:
        if self.follower is None:
            return
        while True:
            try:
                change: PodChange = self.follower.changes.get_nowait()
            except queue.Empty:
                break
            if change.kind == "gone":
                self._gone(change)
            else:
                self._attach(change)
        while True:
            try:
                run, state, exc = self._started.get_nowait()
            except queue.Empty:
                break
            self._starting -= 1
            self._running(run, state, exc)

    def stop(self) -> None:
        """No more pods: the run is ending (its time is up, Ctrl-C, or an error)."""
        self._cancel.set()
        if self.follower is not None:
            self.follower.stop()

    # ---- pods going ----------------------------------------------------------------------

    def _gone(self, change: PodChange) -> None:
        key = change.pod.key
        run = self.trace.runs.get(key)
        if run is not None and not run.ended:
            run.ended = f"pod went away ({change.why})"
        text = self.coverage.gone(key, change.why, group=change.follow.what)
        if text:
            self.trace.pipeline.notice(text)

    # ---- pods coming ---------------------------------------------------------------------

    def _attach(self, change: PodChange) -> None:
        from kubectl_dnstrace.kube.ephemeral import add_capture_container, build_container
        from kubectl_dnstrace.kube.podguard import check_pods
        from kubectl_dnstrace.kube.preflight import run_preflight
        from kubectl_dnstrace.trace import PodRun, capture_spec

        trace, pod = self.trace, change.pod
        left = self.until - time.monotonic()
        if left < MIN_LEFT or pod.key in trace.runs:
            return
        self._group[pod.key] = change.follow.what
        try:
            if pod.namespace not in self.pre.namespaces:
                more = run_preflight(trace.kube, [pod])
                self.pre.namespaces.update(more.namespaces)
            req = dataclasses.replace(trace.req, duration=max(1.0, round(left)))
            spec = capture_spec(req, trace.run_id, trace.kube.whoami())
            capabilities = self.pre.plan(pod.namespace).capabilities
            # The same rules as the run's first pods: the pod's room in etcd, no other trace.
            check_pods(trace.kube, [pod], lambda p: build_container(spec, p, capabilities),
                       force=trace.req.force, notice=trace.say)
            container = add_capture_container(trace.kube, spec, pod, capabilities,
                                              notice=trace.say)
        except DnstraceError as exc:
            trace.pipeline.notice(f"new pod {pod.key} of {change.follow.what} is not traced: "
                                  f"{exc.message}")
            return
        run = PodRun(pod, container["name"], patched_at=time.monotonic())
        trace.runs[pod.key] = run
        trace.say(f"Added ephemeral container {run.container} to pod {pod.key}")
        self._starting += 1
        threading.Thread(target=self._wait, args=(run, spec.program), daemon=True,
                         name=f"follow-wait-{pod.key}").start()

    def _wait(self, run, program: bytes | None) -> None:
        from kubectl_dnstrace.kube.ephemeral import send_program, wait_running

        kube = self.trace.kube.clone()
        try:
            deadline = time.monotonic() + self.trace.req.wait_timeout
            state = wait_running(kube, run.pod, run.container, deadline, cancel=self._cancel)
            if state.phase == "running" and program:
                # The inline agent's bootstrap waits for its program, as at the run's start.
                with run.lock:
                    if not self._cancel.is_set():
                        send_program(kube, run.pod, run.container, program)
                        run.program_sent = True
            self._started.put((run, state, None))
        except DnstraceError as exc:
            self._started.put((run, None, exc))
        finally:
            kube.close()

    def _running(self, run, state, exc) -> None:
        from kubectl_dnstrace.kube.logstream import AgentStream

        trace = self.trace
        if exc is not None or state is None or state.phase != "running":
            run.ended = "failed"
            why = exc.message if exc is not None else f"its agent is {state.phase if state else '?'}"
            trace.pipeline.notice(f"new pod {run.pod.key} is not traced: {why}")
            return
        run.state = state
        run.running_at = time.monotonic()
        run.stream = AgentStream(trace.kube, run.pod, run.container, trace.items)
        run.stream.start()
        text = self.coverage.traced(run.pod.key, self._group.get(run.pod.key, ""),
                                    at=time.time(), added=True)
        trace.pipeline.notice(text)

    # ---- the end -------------------------------------------------------------------------

    def report(self) -> list[str]:
        """The coverage lines for the summary (when the set of pods changed), else []."""
        if not self.coverage.changed:
            return []
        return self.coverage.lines(min(time.time(), self._wall_until))

    def gaps(self) -> list[str]:
        return [s.key for s in self.coverage.gaps()]
