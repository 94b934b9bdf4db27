"""``kubectl dnstrace TARGET...``: from targets to capture agents to events, and back to clean.

The order is the promise made to users running this in production during an incident:
1. connect and resolve every target (syntax errors before any API call);
2. pre-flight: RBAC, Pod Security, ephemeral-container support — before touching any pod;
3. add one capture container per pod (never two in one run), wait until each runs;
4. stream every agent's records home and feed them to the pipeline;
5. on the deadline, Ctrl-C or an error, ask the agents to stop (exec) or say they stop at
   their own deadline; then say which containers were added and that they stay in the spec.
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
    wait_running,
)
from kubectl_dnstrace.kube.logstream import AgentStream, StreamItem
from kubectl_dnstrace.kube.preflight import Preflight, run_preflight
from kubectl_dnstrace.kube.stop import (
    leftovers_message,
    request_stop,
    stop_file_path,
)
from kubectl_dnstrace.kube.targets import Resolution, parse_target, resolve_targets
from kubectl_dnstrace.model import DnsEvent, Filters, PodRef, TraceRequest
from kubectl_dnstrace.progress import Progress

STATS_INTERVAL = 5.0
STOP_GRACE = 10.0  # how long to wait for the agents' final records after asking them to stop
DEADLINE_GRACE = 20.0  # beyond --duration, before we stop waiting for an agent's bye
WAIT_CONCURRENCY = 32  # capture containers waited for at once (a watch each)
COMPACT_DOMAINS_OVER = 50  # more names than this travel compressed in the container args


# ---- building the agent's command ---------------------------------------------------------------

def agent_args(duration: float, filters: Filters, stop_file: str, pcap: bool,
               encrypted: bool = False, doh_resolvers: list[str] | None = None) -> list[str]:
    """The agent's arguments: ``--duration`` always (ephemeral containers cannot be killed)."""
    args = ["--duration", _num(duration), "--stop-file", stop_file,
            "--stats-interval", _num(STATS_INTERVAL)]
    if encrypted:  # node captures: DoT/DoH attempts too (agent/encrypted.py)
        args.append("--encrypted-dns")
        for addr in doh_resolvers or ():
            args += ["--doh-resolver", addr]
    if len(filters.domains) > COMPACT_DOMAINS_OVER:
        from kubectl_dnstrace.agent.main import encode_domains

        args += ["--domains-z", encode_domains(filters.domains)]
    else:
        for d in filters.domains:
            args += ["--domain", d]
    for q in filters.qtypes:
        args += ["--qtype", q]
    for r in filters.rcodes:
        args += ["--rcode", r]
    if pcap:
        args.append("--pcap")
    return args


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
    from kubectl_dnstrace.agent_program import DEFAULT_IMAGE, agent_command

    image = req.image or DEFAULT_IMAGE
    # Node captures also report DoT/DoH connection attempts (agent/encrypted.py).
    encrypted = any(parse_target(t).kind == "nodes" for t in req.targets)
    args = agent_args(req.duration, req.filters, stop_file_path(run_id),
                      pcap=bool(req.output.pcap_path), encrypted=encrypted,
                      doh_resolvers=req.doh_resolvers)
    return CaptureSpec(run_id=run_id, image=image,
                       command=agent_command(args, is_project_image(image)),
                       image_pull_policy=req.image_pull_policy, user=user)


# ---- the run ------------------------------------------------------------------------------------

@dataclass(slots=True)
class PodRun:
    """One pod's capture: the container we added and what its stream reported."""

    pod: PodRef
    container: str
    patched_at: float = 0.0
    running_at: float = 0.0
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
        self.err = err or sys.stderr
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
        self._status_at = 0.0
        self.nodes = None  # a NodeTrace (kube/nodes.py) for node/NAME and nodes

    def say(self, text: str) -> None:
        self.progress.line(text)

    # The whole run ------------------------------------------------------------------------

    def run(self) -> ExitCode:
        req = self.req
        for text in req.targets:  # syntax errors before any API call
            parse_target(text)
        kube = self.kube = Kube.connect(req.cluster)
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
        pre = run_preflight(kube, resolution.pods)
        for note in pre.notes + [n for p in pre.namespaces.values() for n in p.notes]:
            self.say(note)
        spec = capture_spec(req, self.run_id, kube.whoami())
        if self.nodes is not None:
            self.nodes.preflight(spec, pre)
        if req.dry_run:
            return self._dry_run(spec, resolution.pods, pre)
        self.pipeline = self._pipeline(resolution)
        interrupted = False
        try:
            self._add_all(spec, resolution.pods, pre)
            self._wait_all()
            self._stream_all()
            late = self._drain(deadline=time.monotonic() + req.duration + DEADLINE_GRACE)
            if late:
                self.say(f"no final record from {', '.join(late)} {DEADLINE_GRACE:.0f}s after "
                         "the deadline: stopping")
        except KeyboardInterrupt:
            self.say("Interrupted: stopping the capture agents (Ctrl-C again to stop waiting)")
            interrupted = True
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
        finally:
            self._say_leftovers()

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
        container = add_capture_container(
            kube, spec, pod, pre.plan(pod.namespace).capabilities, notice=self.say)
        run.container = container["name"]
        run.patched_at = time.monotonic()
        self.runs[pod.key] = run
        for text in kube.take_warnings():
            self.say(f"warning from the API server ({pod.key}): {text}")
        self.progress.set(pod.key, "waiting (container added)")

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
                results.put((run, state, None))
            except DnstraceError as exc:
                results.put((run, None, exc))
            finally:
                k.close()

        gate = threading.BoundedSemaphore(WAIT_CONCURRENCY)

        def wait_gated(run: PodRun) -> None:
            with gate:  # many nodes: a bounded number of watches (and clients) at a time
                wait_one(run)

        for run in self.runs.values():
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
                    self.nodes.lost(run.pod, exc.message)
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
        """Feed the pipeline until every stream has ended; returns the pods still going."""
        while any(not r.ended for r in self.runs.values()):
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
        msg = leftovers_message([(r.pod, r.container) for r in self.runs.values()
                                 if r.pod.key not in created])
        if msg:
            self.say(msg)

    def _until_deadline(self) -> str:
        """When the agents' own deadline passes (they started at about the first Running)."""
        start = self.agents_started or time.time()
        return time.strftime("%H:%M:%S", time.gmtime(start + self.req.duration))

    def _stop_agents(self, live: list[PodRun], pre: Preflight, reason: str) -> None:
        # Only a running container can be exec'd into; one still waiting may start later and
        # then stops at its own deadline.
        for r in live:
            if r.state is None or r.state.phase != "running":
                r.state = self._current_state(r)
        waiting = [r for r in live if r.state is None or r.state.phase != "running"]
        if waiting:
            self.say("not started yet: " + ", ".join(r.pod.key for r in waiting)
                     + f"; if they start later their agents stop at the deadline "
                     f"(--duration {_num(self.req.duration)}s after they start)")
        live = [r for r in live if r not in waiting]
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
                self.say("those agents stop at their own deadline")
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

    def _current_state(self, run: PodRun) -> ContainerState | None:
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
        errors = [(r, m) for r in runs for m in r.errors if m]
        events = sum(r.events for r in runs)
        lost = sum(r.lost for r in runs)
        code = self.pipeline.finish()
        if errors and not events:
            run, message = errors[0]
            raise AgentFailed(f"the capture agent in {run.pod.key} failed: {message}",
                              agent_hint(message))
        if lost:
            self.pipeline.notice(f"warning: {lost} record(s) were lost in total; the results "
                                 "above are incomplete")
            return ExitCode.STREAM_LOST
        return code


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


PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def run_trace(req: TraceRequest, out: TextIO | None = None, err: TextIO | None = None) -> ExitCode:
    """Run one trace; returns the exit code (refusals raise DnstraceError for cli.main)."""
    if req.duration <= 0:
        raise UsageError("--duration must be positive", "for example --duration 30s")
    if req.image_pull_policy and req.image_pull_policy not in PULL_POLICIES:
        raise UsageError(f"unknown --image-pull-policy {req.image_pull_policy!r}",
                         f"use one of: {', '.join(PULL_POLICIES)}")
    return TraceRun(req, out, err).run()
