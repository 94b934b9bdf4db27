"""``kubectl dnstrace TARGET...``: from targets to capture agents to events, and back to clean.

The order is the promise made to users running this in production during an incident:
1. connect and resolve every target (syntax errors before any API call);
2. pre-flight: RBAC, Pod Security, ephemeral-container support, room in each pod object
   and no other trace running in it — before touching any pod;
3. add one capture container per pod (never two in one run), wait until each runs, and
   hand each its agent program (pods/attach) as it comes up;
4. stream every agent's records home and feed them to the pipeline;
5. on the deadline, Ctrl-C, SIGTERM, SIGHUP or an error, ask the agents to stop (exec) or
   say when they stop by themselves; then say which containers were added, what each
   costs the pod object, and that they stay in the spec.
"""

from __future__ import annotations

import json
import queue
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from kubectl_dnstrace import protocol
from kubectl_dnstrace.errors import (
    AgentFailed,
    DnstraceError,
    ExitCode,
    UsageError,
)
from kubectl_dnstrace.following import Following
from kubectl_dnstrace.kube.client import Kube
from kubectl_dnstrace.kube.ephemeral import (
    CaptureSpec,
    ContainerState,
    add_capture_container,
    agent_hint,
    build_container,
    build_patch,
    container_state,
    early_exit_error,
    send_program,
    wait_running,
)
from kubectl_dnstrace.kube.logstream import AgentStream, StreamItem
from kubectl_dnstrace.kube.podguard import PodRoom, check_pods, object_size
from kubectl_dnstrace.kube.preflight import Preflight, run_preflight
from kubectl_dnstrace.kube.stop import (
    leftovers_message,
    request_stop,
    stop_file_path,
)
from kubectl_dnstrace.kube.targets import Resolution, parse_target, resolve_targets
from kubectl_dnstrace.lifecycle import QuietStream, Terminated, stop_signals
from kubectl_dnstrace.model import DnsEvent, Filters, PodRef, TraceRequest
from kubectl_dnstrace.progress import Progress

STATS_INTERVAL = 5.0
STOP_GRACE = 10.0  # how long to wait for the agents' final records after asking them to stop
DEADLINE_GRACE = 20.0  # beyond --duration, before we stop waiting for an agent's bye
WAIT_CONCURRENCY = 32  # capture containers waited for at once (a watch each)
COMPACT_DOMAINS_OVER = 50  # more names than this travel compressed, with the program


# ---- building the agent's command ---------------------------------------------------------------

def agent_args(duration: float, filters: Filters, stop_file: str, pcap: bool,
               encrypted: bool = False, doh_resolvers: list[str] | None = None) -> list[str]:
    """The agent's arguments: ``--duration`` always (ephemeral containers cannot be killed).

    A long domain list is left out here: :func:`long_domain_args` carries it (in the agent
    program on stdin, not in the pod spec).
    """
    args = ["--duration", _num(duration), "--stop-file", stop_file,
            "--stats-interval", _num(STATS_INTERVAL)]
    if encrypted:  # node captures: DoT/DoH attempts too (agent/encrypted.py)
        args.append("--encrypted-dns")
        for addr in doh_resolvers or ():
            args += ["--doh-resolver", addr]
    if len(filters.domains) <= COMPACT_DOMAINS_OVER:
        for d in filters.domains:
            args += ["--domain", d]
    for q in filters.qtypes:
        args += ["--qtype", q]
    for r in filters.rcodes:
        args += ["--rcode", r]
    if pcap:
        args.append("--pcap")
    return args


def long_domain_args(filters: Filters) -> list[str]:
    """``--domains-z BLOB`` for more than COMPACT_DOMAINS_OVER names, else nothing."""
    if len(filters.domains) <= COMPACT_DOMAINS_OVER:
        return []
    from kubectl_dnstrace.agent.main import encode_domains

    return ["--domains-z", encode_domains(filters.domains)]


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def is_project_image(image: str) -> bool:
    """The project's debug image (agent preinstalled), also from a mirror registry."""
    from kubectl_dnstrace.agent_program import PROJECT_IMAGE

    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: len(repo) - len(last)] + last.split(":", 1)[0]
    project_path = PROJECT_IMAGE.split("/", 1)[1]  # "kubectl-dnstrace/agent"
    return repo in (PROJECT_IMAGE, project_path) or repo.endswith("/" + project_path)


def capture_spec(req: TraceRequest, run_id: str, user: str) -> CaptureSpec:
    from kubectl_dnstrace.agent_program import DEFAULT_IMAGE, agent_launch

    image = req.image or DEFAULT_IMAGE
    # Node captures also report DoT/DoH connection attempts (agent/encrypted.py).
    encrypted = any(parse_target(t).kind == "nodes" for t in req.targets)
    args = agent_args(req.duration, req.filters, stop_file_path(run_id),
                      pcap=bool(req.output.pcap_path), encrypted=encrypted,
                      doh_resolvers=req.doh_resolvers)
    launch = agent_launch(args, is_project_image(image), long_domain_args(req.filters))
    return CaptureSpec(run_id=run_id, image=image, command=launch.command,
                       image_pull_policy=req.image_pull_policy, user=user,
                       program=launch.program)


# ---- the run ------------------------------------------------------------------------------------

@dataclass(slots=True)
class PodRun:
    """One pod's capture: the container we added and what its stream reported."""

    pod: PodRef
    container: str
    patched_at: float = 0.0  # 0: the patch was sent but not answered (yet)
    running_at: float = 0.0
    program_sent: bool = False
    hello: bool = False  # the agent said hello: it runs
    lock: threading.Lock = field(default_factory=threading.Lock)
    added_bytes: int = 0  # what the container costs the pod object (spec + its status)
    pod_bytes: int = 0  # the pod object's size with it
    state: ContainerState | None = None
    stream: AgentStream | None = None
    ended: str = ""  # why the stream ended ("bye", ...), "" while it runs
    events: int = 0
    lost: int = 0
    errors: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    bye: dict | None = None
    aggregated: bool = False  # the agent has switched to per-second counts at least once


class TraceRun:
    """One ``kubectl dnstrace`` run against one cluster."""

    def __init__(self, req: TraceRequest, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.req = req
        self.out = out or sys.stdout
        self.err = QuietStream(err or sys.stderr)  # a closed terminal must not stop cleanup
        self.progress = Progress(self.err)
        self.run_id = secrets.token_hex(3)
        self.kube: Kube | None = None
        self.runs: dict[str, PodRun] = {}
        self.items: queue.Queue[StreamItem] = queue.Queue()
        self.pipeline = None
        self.inventory = None
        self.started_streaming = False
        self.agents_started = 0.0  # wall clock when the first capture container ran
        self.startup = 0.0  # seconds from the patch to Running (slowest pod)
        self.following: Following | None = None  # workload targets' new and gone pods
        self._status_at = 0.0
        self.spec: CaptureSpec | None = None
        self.rooms: dict[str, PodRoom] = {}
        self.nodes = None  # a NodeTrace (nodetrace.py) for node/NAME and nodes
        self.resolution: Resolution | None = None

    def say(self, text: str) -> None:
        self.progress.line(text)

    # The whole run ------------------------------------------------------------------------

    def run(self) -> ExitCode:
        with stop_signals():
            try:
                return self._run()
            finally:
                if self.kube is not None:
                    self.kube.on_notice = None

    def _run(self) -> ExitCode:
        req = self.req
        for text in req.targets:  # syntax errors before any API call
            parse_target(text)
        try:
            prepared = self._prepare()
        except KeyboardInterrupt as exc:
            if self.inventory is not None:
                self.inventory.stop()
            self.say(f"{_why_interrupted(exc)} before any change: nothing was changed in "
                     "the cluster")
            return ExitCode.INTERRUPTED
        if isinstance(prepared, ExitCode):
            return prepared
        spec, pods, pre = prepared
        interrupted: KeyboardInterrupt | None = None
        try:
            self._add_all(spec, pods, pre)
            self._wait_all()
            self._stream_all()
            self.following = Following(self, self.resolution, pre)
            late = self._drain(deadline=time.monotonic() + req.duration + DEADLINE_GRACE)
            if late:
                self.say(f"no final record from {', '.join(late)} {DEADLINE_GRACE:.0f}s after "
                         "the deadline: stopping")
        except KeyboardInterrupt as exc:
            if self.runs:
                self.say(f"{_why_interrupted(exc)}: stopping the capture agents (Ctrl-C again "
                         "to stop waiting)")
            else:
                self.say(f"{_why_interrupted(exc)} before the first container was added")
            interrupted = exc
        except BaseException:
            # Refusals and bugs alike: stop what we started and say what stays behind.
            self._cleanup(pre, reason="error")
            self._say_leftovers()
            raise
        self._cleanup(pre, reason="interrupt" if interrupted else "end")
        try:
            if interrupted and not self.started_streaming:
                return ExitCode.INTERRUPTED
            return self._outcome()
        except OSError:
            if isinstance(interrupted, Terminated):  # the terminal went away with SIGHUP
                return ExitCode.INTERRUPTED
            raise
        finally:
            self._say_leftovers()

    def _prepare(self):
        """Everything before the first change: connect, resolve, pre-flight, the pods' room.

        Returns ``(spec, pods, preflight)``, or the exit code of a dry run.
        """
        req = self.req
        kube = self.kube = Kube.connect(req.cluster)
        kube.on_notice = self.say
        resolution = resolve_targets(
            kube, req.targets, req.selector, namespace=req.cluster.namespace,
            all_namespaces=req.cluster.all_namespaces, dns_namespace=req.dns_namespace,
            dns_selector=req.dns_selector,
        )
        self._report_resolution(resolution)
        if resolution.nodes:
            from kubectl_dnstrace.nodetrace import NodeTrace

            self.nodes = NodeTrace(self, resolution)
        elif req.via_pod or req.create_pod:
            raise UsageError("--via-pod and --create-pod go with node/NAME or nodes targets",
                             "for example: kubectl dnstrace node/node-7 --create-pod")
        if any(p.role == "coredns" for p in resolution.pods) and not req.dry_run:
            from kubectl_dnstrace.logtrace import put_back_leftover

            put_back_leftover(kube, req.dns_namespace, self.say)
        spec = self.spec = capture_spec(req, self.run_id, kube.whoami())
        pre = run_preflight(kube, resolution.pods, attach=bool(spec.program))
        for note in pre.notes + [n for p in pre.namespaces.values() for n in p.notes]:
            self.say(note)
        if self.nodes is not None:
            self.nodes.preflight(spec, pre)
        if req.dry_run:
            return self._dry_run(spec, resolution.pods, pre)
        self.rooms = check_pods(
            kube, resolution.pods,
            lambda pod: build_container(spec, pod, pre.plan(pod.namespace).capabilities),
            force=req.force, notice=self.say)
        self.pipeline = self._pipeline(resolution)
        self.resolution = resolution
        return spec, resolution.pods, pre

    # Steps --------------------------------------------------------------------------------

    def _report_resolution(self, res: Resolution) -> None:
        for note in res.notes:
            self.say(note)
        for key, why in res.skipped:
            self.say(f"skipping pod {key}: {why}")

    def _dry_run(self, spec: CaptureSpec, pods: list[PodRef], pre: Preflight) -> ExitCode:
        for pod in pods:
            container = build_container(spec, pod, pre.plan(pod.namespace).capabilities)
            doc = {
                "namespace": pod.namespace,
                "pod": pod.name,
                "subresource": "ephemeralcontainers",
                "patchType": "application/strategic-merge-patch+json",
                "patch": build_patch(container),
            }
            self.out.write(json.dumps(doc) + "\n")
        if self.nodes is not None:
            self.nodes.dry_run(spec)
        self.out.flush()
        if spec.program:
            self.say(f"dry run: once each container runs, its agent program ({len(spec.program)} "
                     "bytes, compressed; length and SHA-256 in the command) would be written to "
                     "its stdin through pods/attach")
        self.say(f"dry run: {len(pods)} pod(s) would get capture container "
                 f"{spec.container_name}; nothing was changed")
        return ExitCode.MATCHED

    def _pipeline(self, res: Resolution):
        from kubectl_dnstrace.pipeline import Pipeline

        attributor = None
        try:
            from kubectl_dnstrace.attribution import Attributor, scope_label, scope_notice
            from kubectl_dnstrace.kube.inventory import Inventory

            home = self.req.cluster.namespace or self.kube.namespace or "default"
            inv = self.inventory = Inventory.from_cluster(
                self.kube, namespaces=[*res.namespaces, home])
            inv.on_notice = self.say
            inv.start_watch(self.kube)
            attributor = Attributor(inv)
            attribution = scope_label(inv)
            if inv.scope:
                self.say(f"{scope_notice(inv)}. `kubectl dnstrace rbac --cluster` grants "
                         "what attribution reads")
        except DnstraceError as exc:
            attribution = f"off: {exc.message}"
            self.say(f"client attribution is off: {exc.message}. Clients show as IP addresses; "
                     "`kubectl dnstrace rbac --cluster` grants what attribution reads")
        meta = {
            "run_id": self.run_id,
            "targets": list(res.pods),  # PodRefs: the pipeline links hops by their roles
            "requested": list(self.req.targets)
            + ([f"-l {self.req.selector}"] if self.req.selector else []),
            "duration": self.req.duration,
            # What clients were named from (analyze says the same): "cluster", "namespaces
            # a, b" under a namespace-only grant, or "off: why".
            "attribution": attribution,
        }
        if self.nodes is not None:
            meta["uncovered"] = self.nodes.plan.uncovered
            meta["dns_namespace"] = self.req.dns_namespace
        return Pipeline(self.req.output, self.out, self.err, attributor=attributor, meta=meta)

    def _add_all(self, spec: CaptureSpec, pods: list[PodRef], pre: Preflight) -> None:
        if self.nodes is not None:
            self.nodes.create_pods(spec)
            if pods:
                # Many nodes: a bounded pool; one node failing does not stop the others.
                self.nodes.add_all(pods, lambda kube, pod: self._add_one(kube, spec, pod, pre))
            return
        for pod in pods:
            self._add_one(self.kube, spec, pod, pre)

    def _add_one(self, kube: Kube, spec: CaptureSpec, pod: PodRef, pre: Preflight) -> None:
        self.progress.set(pod.key, "adding capture container")
        run = PodRun(pod, spec.container_name)
        self.runs[pod.key] = run  # before the patch: an interrupt must check for it
        try:
            container = add_capture_container(
                kube, spec, pod, pre.plan(pod.namespace).capabilities,
                notice=self.say, on_patched=lambda obj, r=run: self._measure(r, obj))
        except BaseException:
            if not run.patched_at:
                self._confirm_patch(run)
            raise
        run.container = container["name"]
        for text in kube.take_warnings():
            self.say(f"warning from the API server ({pod.key}): {text}")
        self.progress.set(pod.key, "waiting (container added)")

    def _measure(self, run: PodRun, pod_obj: dict) -> None:
        """The pod as the patch returned it: what this trace added to it."""
        from kubectl_dnstrace.kube.podguard import SERVER_BYTES

        run.patched_at = time.monotonic()
        room = self.rooms.get(run.pod.key)
        if isinstance(pod_obj, dict) and pod_obj.get("spec"):
            run.pod_bytes = object_size(pod_obj) + SERVER_BYTES
            if room is not None:
                run.added_bytes = run.pod_bytes - room.size
        if not run.added_bytes and room is not None:
            run.added_bytes, run.pod_bytes = room.cost, room.after

    def _confirm_patch(self, run: PodRun) -> None:
        """An interrupted or failed patch may still have been applied: look, and forget the
        run only when the pod does not have the container."""
        try:
            obj = self.kube.get("pods", run.pod.name, run.pod.namespace)
        except (DnstraceError, KeyboardInterrupt):
            self.say(f"could not check whether {run.container} was added to {run.pod.key}")
            run.patched_at = time.monotonic()
            return
        names = [c.get("name") for c in (obj.get("spec") or {}).get("ephemeralContainers") or []]
        if run.container in names:
            self._measure(run, obj)
        else:
            self.runs.pop(run.pod.key, None)

    def _wait_all(self) -> None:
        deadline = time.monotonic() + self.req.wait_timeout
        results: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def on_state(pod: PodRef, state: ContainerState) -> None:
            label = state.phase + (f" ({state.reason})" if state.reason else "")
            self.progress.set(pod.key, label)

        def wait_one(run: PodRun) -> None:
            k = self.kube.clone()
            try:
                state = wait_running(k, run.pod, run.container, deadline, on_state, cancel)
                if state.phase == "running":
                    self._hand_program(k, run, cancel)
                results.put((run, state, None))
            except DnstraceError as exc:
                results.put((run, None, exc))
            finally:
                k.close()

        gate = threading.BoundedSemaphore(WAIT_CONCURRENCY)

        def wait_gated(run: PodRun) -> None:
            with gate:  # many nodes: a bounded number of watches (and clients) at a time
                wait_one(run)

        for run in list(self.runs.values()):
            threading.Thread(target=wait_gated, args=(run,), daemon=True,
                             name=f"wait-{run.pod.key}").start()
        pending = len(self.runs)
        try:
            while pending:
                try:
                    run, state, exc = results.get(timeout=0.2)
                except queue.Empty:
                    self.progress.spin()
                    continue
                pending -= 1
                if exc is not None and self.nodes is not None and len(self.runs) > 1:
                    self.nodes.lost(run.pod, exc.message)  # the other nodes go on
                    del self.runs[run.pod.key]
                    continue
                if exc is not None:
                    raise exc
                run.state = state
                run.running_at = time.monotonic()
                self.agents_started = self.agents_started or time.time()
                if state.phase == "terminated" and state.exit_code not in (0, None):
                    raise early_exit_error(self.kube, run.pod, run.container, state,
                                           _agent_error_message)
                self.progress.set(run.pod.key, "running" if state.phase == "running"
                                  else f"finished (exit {state.exit_code})")
        finally:
            cancel.set()
            self.progress.done()
        self.startup = max(r.running_at - r.patched_at for r in self.runs.values())


    def _hand_program(self, kube: Kube, run: PodRun, cancel: threading.Event) -> None:
        """The bootstrap waits for its program: write it now, unless the run was interrupted
        (then the container ends by itself, never having captured)."""
        spec = self.spec
        if spec is None or not spec.program:
            return
        with run.lock:
            if cancel.is_set():
                return
            self.progress.set(run.pod.key, "running (sending the agent program)")
            send_program(kube, run.pod, run.container, spec.program)
            run.program_sent = True

    def _stream_all(self) -> None:
        for run in self.runs.values():
            run.stream = AgentStream(self.kube, run.pod, run.container, self.items)
            run.stream.start()
        self.started_streaming = True
        name = next(iter(self.runs.values())).container
        self.say(f"capturing in {len(self.runs)} pod(s) with container {name} "
                 f"(running {self.startup:.2f}s after the patch); until "
                 f"{self._until_deadline()} UTC or Ctrl-C")

    def _drain(self, deadline: float) -> list[str]:
        """Feed the pipeline until every stream has ended (and, following workloads, the
        run's time is up); returns the pods still going."""
        following = self.following
        while any(not r.ended for r in self.runs.values()) or (following and following.active):
            if following is not None:
                following.step()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [r.pod.key for r in self.runs.values() if not r.ended]
            if time.monotonic() - self._status_at >= 0.5:
                self._status_at = time.monotonic()
                self._show_stats()
            try:
                item = self.items.get(timeout=min(0.5, remaining))
            except queue.Empty:
                self.pipeline.tick()
                continue
            self._handle(item)
        self.progress.clear_status()
        return []

    def _show_stats(self) -> None:
        """The agents' latest stats as a status line on a terminal, unless stdout shares it."""
        fmt = self.req.output.format
        stdout_tty = bool(getattr(self.out, "isatty", None) and self.out.isatty())
        if stdout_tty and fmt != "json":
            return
        runs = list(self.runs.values())
        seen = sum(int(r.stats.get("seen") or 0) for r in runs)
        matched = sum(int(r.stats.get("matched") or 0) for r in runs)
        drops = sum(int(r.stats.get("drops") or 0) for r in runs)
        events = sum(r.events for r in runs)
        self.progress.status(
            f"capturing in {sum(1 for r in runs if not r.ended)}/{len(runs)} pod(s): "
            f"{seen} DNS packets seen, {matched} matched, {events} received"
            + (f", {drops} dropped by the kernel" if drops else ""))

    def _handle(self, item: StreamItem) -> None:
        run = self.runs[item.pod.key]
        if item.kind == "records":
            key = item.pod.key
            feed, event = self.pipeline.feed, DnsEvent.from_record
            for rec in item.records:
                if rec["type"] == "dns":
                    run.events += 1
                    feed(event(rec, key))
                else:
                    self._record(run, key, rec)
            return
        self.progress.clear_status()  # a notice follows: on its own line
        if item.kind == "notice":
            self.pipeline.notice(item.text)
        elif item.kind == "lost":
            run.lost += item.count
            self.pipeline.notice(f"warning: {item.count} record(s) from {item.pod.key} were "
                                 "lost in the log stream (a sequence gap after a resume)")
        elif item.kind == "end":
            run.ended = item.text or "end"
            if run.ended != "bye":
                self.pipeline.notice(f"{item.pod.key}: {run.ended}")
        elif item.kind == "fail":
            run.ended = "failed"
            exc = item.error
            run.errors.append(exc.message if exc else "stream failed")
            self.pipeline.notice(f"{item.pod.key}: {exc.message if exc else 'stream failed'}")

    def _record(self, run: PodRun, key: str, rec: dict) -> None:
        """An agent's record other than ``dns``."""
        rtype = rec["type"]
        if rtype == "stats":
            run.stats = rec
            return
        self.progress.clear_status()  # a notice may follow: on its own line
        if rtype == "error":
            run.errors.append(rec.get("message", ""))
            self.pipeline.notice(f"agent {key}: error: {rec.get('message', '')}")
        elif rtype == "bye":
            run.bye = rec
        elif rtype == "agg":
            self._feed_aggregate(run, rec)
        elif rtype == "hello":
            run.hello = True
            run.stats.setdefault("interfaces", rec.get("interfaces"))
        elif rtype == "encrypted-dns":
            self.pipeline.feed_encrypted(rec, observed_at=key)

    def _feed_aggregate(self, run: PodRun, rec: dict) -> None:
        """Per-second aggregates (a busy, unfiltered capture) go into the summary like events.

        The agent switches to them above its rate threshold so the pod log stays small; they
        carry client, name, type and rcode with a count, not single messages, so the user is
        told once per pod that live lines stop while the counts go on.
        """
        run.events += rec.get("total") or sum(g["count"] for g in rec["groups"])
        if not run.aggregated:
            run.aggregated = True
            self.pipeline.notice(
                f"{run.pod.key}: more than {rec.get('threshold', '?')} DNS messages/s: the agent "
                "now sends per-second counts (client, name, type, rcode); they go into the "
                "summary, single live lines resume when the rate drops. Use --domain to narrow.")
        self.pipeline.feed_aggregate(rec, observed_at=run.pod.key)

    # Stopping and the outcome -----------------------------------------------------------------

    def _cleanup(self, pre: Preflight, reason: str) -> None:
        if self.following is not None:
            self.following.stop()  # no new pods from here on
        live = [r for r in self.runs.values() if not r.ended]
        try:
            if live:
                self._stop_agents(live, pre, reason)
        except KeyboardInterrupt:
            self.say("Not waiting any longer: the agents still stop at their own deadline "
                     f"({self._until_deadline()} UTC)")
        finally:
            if self.inventory is not None:
                self.inventory.stop()
            self._close_streams()
            if self.nodes is not None:
                self.nodes.delete_pods()

    def _close_streams(self, wait: float = 2.0) -> None:
        """The log streams still reading (agents whose final records the trace no longer
        waits for) are interrupted and joined, at most ``wait`` seconds in all."""
        open_streams = [r.stream for r in self.runs.values()
                        if r.stream is not None and r.stream.is_alive()]
        for stream in open_streams:
            stream.close()
        deadline = time.monotonic() + wait
        for stream in open_streams:
            stream.join(max(0.0, deadline - time.monotonic()))

    def _say_leftovers(self) -> None:
        created = self.nodes.created_keys if self.nodes is not None else set()
        kept = [r for r in self.runs.values() if r.pod.key not in created]  # ours are deleted
        msg = leftovers_message([(r.pod, r.container) for r in kept],
                                {r.pod.key: (r.added_bytes, r.pod_bytes) for r in kept})
        if msg:
            self.say(msg)
        elif not self.req.dry_run and self.spec is not None and self.pipeline is not None:
            self.say("nothing was changed in the cluster")

    def _until_deadline(self) -> str:
        """When the agents' own deadline passes (they started at about the first Running)."""
        start = self.agents_started or time.time()
        return time.strftime("%H:%M:%S", time.gmtime(start + self.req.duration))

    def _stop_agents(self, live: list[PodRun], pre: Preflight, reason: str) -> None:
        from kubectl_dnstrace.agent_program import PROGRAM_WAIT

        # Only a running container can be exec'd into. With the bootstrap (the inline agent),
        # one that never got its program ends by itself and never captures.
        for r in live:
            if r.state is None or r.state.phase != "running":
                r.state = self._current_state(r)
            with r.lock:  # no program is handed over from now on (the waits are cancelled)
                pass
        ended = [r for r in live if r.state is not None
                 and (r.state.phase == "terminated" or r.state.never_starts)]
        bootstrap = bool(self.spec and self.spec.program)
        idle = [r for r in live if r not in ended and bootstrap and not r.program_sent]
        if idle:
            starting = [r for r in idle if r.state is None or r.state.phase != "running"]
            started = [r for r in idle if r not in starting]
            if started:
                self.say("never got its agent program (it did not capture): "
                         + ", ".join(r.pod.key for r in started)
                         + f"; the container ends by itself within {PROGRAM_WAIT}s")
            if starting:
                self.say("not started: " + ", ".join(
                    r.pod.key + (f" ({r.state.reason})" if r.state and r.state.reason else "")
                    for r in starting)
                    + f"; if one starts later it gets no agent program and ends by itself "
                    f"within {PROGRAM_WAIT}s, without capturing")
        waiting = [r for r in live if r not in ended and r not in idle
                   and (r.state is None or r.state.phase != "running")]
        if waiting:
            self._stop_as_they_start(waiting, pre)
        live = [r for r in live if r not in ended and r not in idle and r not in waiting]
        can = [r for r in live if pre.plan(r.pod.namespace).can_exec]
        cannot = [r for r in live if not pre.plan(r.pod.namespace).can_exec]
        if cannot:
            self.say("no pods/exec permission in " + ", ".join(sorted({r.pod.namespace for r in cannot}))
                     + ": those agents stop at their own deadline (--duration "
                     f"{_num(self.req.duration)}s after they started)")
        failed: list[str] = []
        if can:
            failed = request_stop(self.kube, [r.pod for r in can], can[0].container,
                                  stop_file_path(self.run_id), notice=self.say)
            if failed:
                self.say(f"those agents stop at their own deadline ({self._until_deadline()} "
                         "UTC)")
            if len(failed) < len(can):
                self.say(f"asked {len(can) - len(failed)} agent(s) to stop (pods/exec)")
        if not self.started_streaming:
            return
        asked = len(can) - len(failed)
        to_deadline = self.agents_started + self.req.duration - time.time()
        if asked:
            wait = STOP_GRACE  # the stopped agents write their final records (bye)
        elif to_deadline < STOP_GRACE:
            wait = max(0.0, to_deadline) + 3.0  # their own deadline is near: see it through
        else:
            return
        late = self._drain(deadline=time.monotonic() + wait)
        if late:
            self.say(f"not waiting for the final records of {', '.join(late)}")

    def _stop_as_they_start(self, waiting: list[PodRun], pre: Preflight) -> None:
        """The project image's agent captures as soon as its container starts (it needs no
        program): wait for those still starting and stop each as it comes up, for as long
        as --timeout allowed them to start. Ctrl-C again stops waiting."""
        can = [r for r in waiting if pre.plan(r.pod.namespace).can_exec]
        later = (f"its agent captures until --duration ({_num(self.req.duration)}s) after "
                 "it starts")
        for r in waiting:
            if r not in can:
                self.say(f"not started yet: {r.pod.key}, and no pods/exec permission to stop "
                         f"it: if it starts, {later}")
        if not can:
            return
        limit = min(self.req.wait_timeout, 60.0)
        self.say("not started yet: " + ", ".join(r.pod.key for r in can)
                 + f"; waiting up to {limit:.0f}s to stop each as it starts (Ctrl-C again to "
                 f"stop waiting: then, if it starts, {later})")
        deadline = time.monotonic() + limit
        started: list[PodRun] = []
        for r in can:
            try:
                r.state = wait_running(self.kube, r.pod, r.container, deadline)
            except DnstraceError as exc:
                self.say(f"{r.pod.key}: {exc.message}; if it starts later, {later}")
                continue
            if r.state.phase == "running":
                started.append(r)
        if started:
            failed = request_stop(self.kube, [r.pod for r in started], started[0].container,
                                  stop_file_path(self.run_id), notice=self.say)
            if len(failed) < len(started):
                self.say(f"stopped {len(started) - len(failed)} agent(s) as they started "
                         "(pods/exec)")

    def _current_state(self, run: PodRun) -> ContainerState | None:
        if self.kube is None:  # never connected (a run fed from elsewhere): nothing to ask
            return None
        try:
            return container_state(self.kube.get("pods", run.pod.name, run.pod.namespace),
                                   run.container)
        except DnstraceError:
            return None

    def _outcome(self) -> ExitCode:
        runs = list(self.runs.values())
        for run in runs:
            if run.stats.get("seen") is not None:
                self.pipeline.notice(
                    f"{run.pod.key}: the agent saw {run.stats.get('seen')} DNS packet(s), "
                    f"{run.stats.get('matched')} matched the filters"
                    + (f"; it ended: {run.bye.get('reason')}" if run.bye else ""))
            if run.stats.get("drops"):
                self.pipeline.notice(f"{run.pod.key}: the kernel dropped {run.stats['drops']} "
                                     "packet(s) before the agent read them")
            for notice in shed_notices(run.pod.key, run.stats):
                self.pipeline.notice(notice)
        errors = [(r, m) for r in runs for m in r.errors if m]
        events = sum(r.events for r in runs)
        lost = sum(r.lost for r in runs)
        silent = [r for r in runs if not r.hello and r.ended]
        if silent and not events and not errors:
            # Before the summary: "No DNS queries matched" would be a lie.
            raise self._silent_agent(silent[0])
        gaps = self.following.gaps() if self.following is not None else []
        if self.following is not None and self.following.report():
            self.pipeline.coverage = self.following.report()
            self.pipeline.meta["coverage"] = self.following.coverage.json(time.time())
        code = self.pipeline.finish()
        if errors and not events:
            run, message = errors[0]
            raise AgentFailed(f"the capture agent in {run.pod.key} failed: {message}",
                              agent_hint(message))
        if lost:
            self.pipeline.notice(f"warning: {lost} record(s) were lost in total; the results "
                                 "above are incomplete")
            return ExitCode.STREAM_LOST
        if gaps:
            self.pipeline.notice(f"warning: {', '.join(gaps)} went away and no replacement was "
                                 "traced: the trace does not cover the whole run")
            return ExitCode.COVERAGE_GAP
        return code


    def _silent_agent(self, run: PodRun) -> DnstraceError:
        """The container ended without one record: a clean "nothing matched" would be a lie."""
        from kubectl_dnstrace.agent_program import ALARM_EXIT, PROGRAM_WAIT
        from kubectl_dnstrace.errors import ContainerFailed

        state = self._current_state(run)
        if state is not None and state.exit_code == ALARM_EXIT:
            return ContainerFailed(
                f"the capture container {run.container} in {run.pod.key} did not get its agent "
                f"program within {PROGRAM_WAIT}s of starting, and ended without capturing",
                "the API server was slow to accept pods/attach; run again",
            )
        if self.kube is None:
            return ContainerFailed(
                f"the capture container {run.container} in {run.pod.key} ended without one "
                "valid record", "run again; report it if it persists")
        return early_exit_error(self.kube, run.pod, run.container,
                                state or ContainerState("terminated"), _agent_error_message)


def _why_interrupted(exc: BaseException) -> str:
    if isinstance(exc, Terminated):
        return f"{exc.args[0] if exc.args else 'a signal'} received"
    return "Interrupted"


def shed_notices(pod_key: str, stats: dict) -> list[str]:
    """What an agent gave up to stay within its memory and CPU bounds (docs/protocol.md,
    ``stats``): counted there, so said here, never lost silently."""
    out = []
    if stats.get("shed_packets"):
        out.append(f"{pod_key}: the agent could not keep up and gave {stats['shed_packets']} "
                   "packet(s) back to the kernel unread (to stay within its memory bound)")
    if stats.get("shed_records"):
        out.append(f"{pod_key}: the agent fell behind and counted {stats['shed_records']} "
                   "message(s) in per-second aggregates instead of single lines")
    if stats.get("ungrouped"):
        out.append(f"{pod_key}: {stats['ungrouped']} message(s) are in the aggregate totals only "
                   "(too many distinct names in one second to keep each); narrow with --domain")
    return out


def _agent_error_message(text: str) -> str | None:
    """The message of the first ``error`` record in a log (timestamps or not)."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        candidate = rest if head.endswith("Z") and head[:4].isdigit() else line
        try:
            rec = protocol.decode(candidate)
        except protocol.ProtocolError:
            continue
        if rec.get("type") == "error":
            return rec.get("message") or "unknown error"
    return None


def run_trace(req: TraceRequest, out: TextIO | None = None, err: TextIO | None = None) -> ExitCode:
    """Run one trace; returns the exit code (refusals raise DnstraceError for cli.main).

    Every flag value is checked here, before the first API request (``--dry-run`` too).
    """
    from kubectl_dnstrace.options import check_trace_request

    check_trace_request(req)
    if req.via == "log" or req.restore:
        from kubectl_dnstrace.logtrace import run_log_trace

        return run_log_trace(req, out, err)
    return TraceRun(req, out, err).run()
