"""``kubectl dnstrace coredns --via log``: CoreDNS's own ``log`` plugin instead of a capture.

No container is added anywhere, so it works where a capture cannot (Pod Security
``restricted``, no NET_RAW, no ephemeral-container rights): it needs to update the Corefile
ConfigMap and to read the CoreDNS pods' logs. The order, and the promise kept at each step:

1. resolve the CoreDNS pods and their Corefile ConfigMap; put back what an interrupted run
   left there (its deadline passed); check RBAC — all before any change;
2. add ``log [DOMAIN...]`` with the run's record (``kube.corednsconfig``), refusing a
   Corefile without ``reload`` or one that cannot be parsed;
3. follow each pod's log from the moment of the edit and show, per pod, what CoreDNS says
   about reloading: the kubelet refreshes the mounted file within about a minute and
   ``reload`` checks it every 30 s, so this takes one to two minutes; a reload CoreDNS
   refuses is put back at once;
4. once every pod logs, count ``--duration`` and feed the parsed lines (``corednslog``) to
   the same pipeline a capture feeds;
5. put the Corefile back — on the deadline, Ctrl-C, SIGTERM/SIGHUP, or an error.

``--since 1h`` reads what CoreDNS already logged (when ``log`` is on) and changes nothing;
``--restore`` only puts back what a killed run left.
"""

from __future__ import annotations

import queue
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from kubectl_dnstrace import corednslog, corefile
from kubectl_dnstrace.attribution import Attributor
from kubectl_dnstrace.errors import (
    CorefileRefused,
    DnstraceError,
    ExitCode,
    Forbidden,
    NotFound,
    UsageError,
)
from kubectl_dnstrace.kube import corednsconfig as cfg
from kubectl_dnstrace.kube.client import Kube, iter_line_reads
from kubectl_dnstrace.kube.logstream import since_time
from kubectl_dnstrace.kube.targets import resolve_targets
from kubectl_dnstrace.lifecycle import stop_signals
from kubectl_dnstrace.model import Client, DnsEvent, PodRef, TraceRequest
from kubectl_dnstrace.progress import Progress

RELOAD_TIMEOUT = 180.0  # measured: 46-89 s from the edit to every pod serving it
READ_TIMEOUT = 60.0  # a quiet CoreDNS writes nothing for a long time: a read may wait
RESTORE_GRACE = 60.0  # in the recorded deadline, beyond the run's end: then it is a leftover


@dataclass(slots=True)
class Item:
    pod: PodRef
    kind: str  # "line" (a reload line), "events", "end", "fail"
    line: corednslog.LogLine | None = None
    events: list[DnsEvent] = field(default_factory=list)
    error: DnstraceError | None = None


class PodLog(threading.Thread):
    """Follows (or reads once) one CoreDNS pod's log, parsed, into the run's queue.

    A broken stream is reopened from the last second seen (``sinceTime``); the kubelet's
    fixed-width nanosecond timestamps then tell the lines already read, which are dropped.
    """

    def __init__(self, kube: Kube, pod: PodRef, container: str, server_ip: str, fmt: str,
                 out: queue.Queue, *, since: str | None = None,
                 since_seconds: int | None = None, follow: bool = True) -> None:
        super().__init__(name=f"corednslog-{pod.key}", daemon=True)
        self.kube = kube.clone()
        self.pod = pod
        self.container = container
        self.server_ip = server_ip
        self.parser = corednslog.LogParser(fmt)
        self.out = out
        self.since = since
        self.since_seconds = since_seconds
        self.follow = follow
        self.last_ts = ""
        self.first_ts = ""
        self.closing = threading.Event()
        self.lines = 0
        self._at_last: set[str] = set()  # the lines read with the timestamp ``last_ts``

    def close(self) -> None:
        self.closing.set()
        self.kube.interrupt()

    def run(self) -> None:
        try:
            breaks = 0
            while not self.closing.is_set():
                began, lines = time.monotonic(), self.lines
                try:
                    self._read()
                except (Forbidden, NotFound):
                    raise
                except DnstraceError:
                    # A quiet CoreDNS writes nothing for minutes (the read times out): only
                    # streams that break at once, again and again, are a failure.
                    quick = time.monotonic() - began < 5.0 and self.lines == lines
                    breaks = breaks + 1 if quick else 0
                    if breaks > 8:
                        raise
                if not self.follow or self.closing.is_set():
                    break
                time.sleep(min(0.2 * breaks, 2.0))
            self.out.put(Item(self.pod, "end"))
        except DnstraceError as exc:
            if not self.closing.is_set():
                self.out.put(Item(self.pod, "fail", error=exc))
        finally:
            self.kube.close()

    def _read(self) -> None:
        since = since_time(self.last_ts) if self.last_ts else self.since
        resp = self.kube.read_log(
            self.pod.namespace, self.pod.name, self.container, follow=self.follow,
            timestamps=True, since_time=since,
            since_seconds=None if (self.last_ts or since) else self.since_seconds,
            read_timeout=READ_TIMEOUT if self.follow else None)
        try:
            for lines in iter_line_reads(resp):
                if self.closing.is_set():
                    return
                self._lines(lines)
        finally:
            resp.release_conn()
            resp.close()

    def _lines(self, lines: list[bytes]) -> None:
        batch: list[DnsEvent] = []
        for raw in lines:
            text = raw.decode("utf-8", "replace")
            ts = text.split(" ", 1)[0]
            if ts < self.last_ts:
                continue  # read before the stream was reopened
            if ts == self.last_ts:  # two lines may share a nanosecond: compare the text
                if text in self._at_last:
                    continue
            else:
                self._at_last.clear()
            self._at_last.add(text)
            self.last_ts = ts
            self.first_ts = self.first_ts or ts
            self.lines += 1
            line = self.parser.parse(text)
            if line.kind == "query":
                batch.extend(corednslog.events(line, self.server_ip, self.pod.key, self.lines))
            elif line.kind != "other":
                if batch:
                    self.out.put(Item(self.pod, "events", events=batch))
                    batch = []
                self.out.put(Item(self.pod, "line", line=line))
        if batch:
            self.out.put(Item(self.pod, "events", events=batch))


@dataclass(slots=True)
class PodState:
    pod: PodRef
    container: str
    ip: str
    phase: str = "waiting for the kubelet to refresh the mounted Corefile"
    live_at: float = 0.0
    sha: str = ""
    reader: PodLog | None = None
    ended: bool = False
    reloading: bool = False  # "[INFO] Reloading" seen since the edit
    seen: set[str] = field(default_factory=set)  # configuration hashes run before the edit


class LogTrace:
    """One ``--via log`` run (or ``--restore``, or ``--since``)."""

    def __init__(self, req: TraceRequest, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.req = req
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.progress = Progress(self.err)
        self.run_id = secrets.token_hex(3)
        self.kube: Kube | None = None
        self.items: queue.Queue[Item] = queue.Queue()
        self.pods: dict[str, PodState] = {}
        self.pipeline = None
        self.inventory = None
        self.src: cfg.CorefileSource | None = None
        self.changed = False
        self.restored = False
        self.reload_timeout = RELOAD_TIMEOUT
        self.edited_at = 0.0

    def say(self, text: str) -> None:
        self.progress.line(text)

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> ExitCode:
        req = self.req
        kube = self.kube = Kube.connect(req.cluster)
        res = resolve_targets(kube, ["coredns"], None, dns_namespace=req.dns_namespace,
                              dns_selector=req.dns_selector)
        pods = [p for p in res.pods if p.role == "coredns"]
        if len(pods) < len(res.pods):
            self.say("node-local-dns pods are not part of --via log (their Corefile is another "
                     "one); clients behind them show as node addresses")
        for key, why in res.skipped:
            self.say(f"skipping pod {key}: {why}")
        objs = [kube.get("pods", p.name, p.namespace) for p in pods]
        self.src = src = cfg.find_source(kube, req.dns_namespace, objs)
        for pod, obj in zip(pods, objs, strict=True):
            self.pods[pod.key] = PodState(pod, _dns_container(obj), _pod_ip(obj))
        if req.restore:
            return self._restore_only()
        cm, text = cfg.read(kube, src)
        self._put_back_leftover(cm)
        if req.since is not None:
            return self._since(text)
        cfg.check_access(kube, src)
        cfg.parse_or_refuse(src, text)
        if req.dry_run:  # as a real run would write it: after putting back any leftover
            return self._dry_run(corefile.remove_log_line(text))
        return self._live()

    def _restore_only(self) -> ExitCode:
        cm, _ = cfg.read(self.kube, self.src)
        record = cfg.record_of(cm)
        if record is not None and time.time() < record.deadline:
            self.say(f"run {record.run} (by {record.user or 'someone'}) was due to end by "
                     f"{cfg.iso(record.deadline)} UTC; if it is still running, CoreDNS stops "
                     "logging for it now")
        result = cfg.restore(self.kube, self.src)
        if result.nothing:
            self.say(f"{self.src.label}: no change of kubectl dnstrace to put back")
        else:
            self.say(self._restored_text(result))
        return ExitCode.MATCHED

    def _restored_text(self, result: cfg.Restored) -> str:
        if result.others_changed:
            return (f"{self.src.label}: removed the 'log' line of run {result.run}; someone else "
                    "changed the Corefile during the run, and their change stays (the Corefile is "
                    "not the one the run started from)")
        return (f"{self.src.label}: the Corefile is back as it was before run {result.run} "
                "(byte-identical)")

    def _put_back_leftover(self, cm: dict) -> None:
        record = cfg.record_of(cm)
        if record is None and not corefile.runs_in((cm.get("data") or {}).get(self.src.key, "")):
            return
        if record is not None and time.time() < record.deadline:
            if self.req.since is not None:
                return  # reading only: the other run's change is not in the way
            raise CorefileRefused(
                f"{self.src.label} carries the change of kubectl dnstrace run {record.run} (by "
                f"{record.user or 'someone'}, until {cfg.iso(record.deadline)} UTC)",
                "wait for that run to end; if it was killed, put the Corefile back now with "
                "kubectl dnstrace coredns --restore")
        if self.req.dry_run:
            self.say(f"an interrupted run left its change in {self.src.label}: a real run "
                     "would put it back first")
            return
        result = cfg.restore(self.kube, self.src)
        if not result.nothing:
            self.say("an interrupted run left its change: " + self._restored_text(result))

    def _dry_run(self, text: str) -> ExitCode:
        edit = corefile.add_log_line(text, self.run_id, self.req.filters.domains)
        if edit.needed:
            cfg.refuse_unsafe(self.src, text)
        self.out.write(edit.text)
        self.out.flush()
        self.say(f"dry run: the Corefile in {self.src.label} would get 'log' in "
                 f"{', '.join(edit.changed) or 'no block'}; nothing was changed")
        return ExitCode.MATCHED

    # ---- turning log on, waiting, streaming ----------------------------------------------------

    def _live(self) -> ExitCode:
        req = self.req
        reload_timeout = self.reload_timeout = max(req.wait_timeout, RELOAD_TIMEOUT)
        deadline = time.time() + reload_timeout + req.duration + RESTORE_GRACE
        interrupted = False
        self.pipeline = self._pipeline()
        with stop_signals():  # SIGTERM, SIGHUP: like Ctrl-C, the Corefile goes back
            try:
                edited_at = self.edited_at = time.time()
                self.changed = True  # from here on, an exit puts back whatever was written
                enabled = cfg.enable_log(self.kube, self.src, self.run_id,
                                         req.filters.domains, deadline, self.kube.whoami())
                self.changed = bool(enabled.changed)
                if enabled.written_at:  # the cluster's clock, like the log's timestamps
                    edited_at = self.edited_at = enabled.written_at
                fmt = self._format(enabled.text)
                if self.changed:
                    self.say(f"added 'log{''.join(' ' + d for d in req.filters.domains)}' to "
                             f"{', '.join(enabled.changed)} in {self.src.label} (run "
                             f"{self.run_id}); it is taken out again at the end")
                    # From the container's start: the configurations it ran before tell an
                    # older version's reload from ours (CoreDNS logs a hash of each).
                    self._start_readers(fmt)
                    self._wait_reloaded(time.monotonic() + reload_timeout)
                else:
                    self.say(f"{', '.join(enabled.already)} in {self.src.label} already logs "
                             "these queries: nothing to change")
                    self._start_readers(fmt, since=since_time(_rfc3339(edited_at)))
                    for st in self.pods.values():
                        st.live_at = time.time()
                until = time.time() + req.duration
                self.say(f"CoreDNS logs the queries in {len(self.pods)} pod(s); until "
                         f"{time.strftime('%H:%M:%S', time.gmtime(until))} UTC or Ctrl-C")
                self._drain(until)
            except KeyboardInterrupt:
                interrupted = True
                self.say("Interrupted: putting the Corefile back")
            finally:
                self._finish_cleanup()
        if interrupted and not any(st.live_at for st in self.pods.values()):
            return ExitCode.INTERRUPTED
        return self._outcome()

    def _format(self, text: str) -> str:
        """The format of the log line that serves the names (ours: the default)."""
        try:
            cf = corefile.parse(text)
        except corefile.CorefileError:
            return corednslog.DEFAULT_FORMAT
        for block in cf.blocks:
            for d in block.directives:
                if d.name == "log" and not any(a.startswith(corefile.RUN_ZONE_PREFIX)
                                               for a in d.args):
                    return corednslog.log_format(d.args)
        return corednslog.DEFAULT_FORMAT

    def _start_readers(self, fmt: str, since: str | None = None,
                       since_seconds: int | None = None, follow: bool = True) -> None:
        for st in self.pods.values():
            st.reader = PodLog(self.kube, st.pod, st.container, st.ip, fmt, self.items,
                               since=since, since_seconds=since_seconds, follow=follow)
            st.reader.start()

    def _wait_reloaded(self, until: float) -> None:
        for st in self.pods.values():
            self.progress.set(st.pod.key, st.phase)
        try:
            while not all(st.live_at for st in self.pods.values()):
                if time.monotonic() > until:
                    slow = [k for k, st in self.pods.items() if not st.live_at]
                    raise CorefileRefused(
                        f"CoreDNS did not load the edited Corefile within "
                        f"{self.reload_timeout:.0f} s in {', '.join(slow)}",
                        "the Corefile was put back. The kubelet refreshes mounted ConfigMaps "
                        "about once a minute; raise --timeout, or use the capture route")
                try:
                    item = self.items.get(timeout=0.5)
                except queue.Empty:
                    self.progress.spin()
                    continue
                self._handle(item)
        finally:
            self.progress.done()

    def _drain(self, until: float) -> None:
        while time.time() < until:
            if all(st.ended for st in self.pods.values()):
                break
            try:
                item = self.items.get(timeout=min(0.5, max(0.01, until - time.time())))
            except queue.Empty:
                self.pipeline.tick()
                continue
            self._handle(item)

    def _handle(self, item: Item) -> None:
        st = self.pods[item.pod.key]
        if item.kind == "events":
            feed, start = self.pipeline.feed, self.edited_at
            for ev in item.events:
                if ev.ts >= start and self._wanted(ev):
                    feed(ev)
        elif item.kind == "line":
            self._reload_line(st, item.line)
        elif item.kind == "end":
            st.ended = True
            if self.req.since is None:
                self.pipeline.notice(f"{st.pod.key}: its log stream ended (pod gone?)")
        elif item.kind == "fail":
            st.ended = True
            raise item.error

    def _reload_line(self, st: PodState, line: corednslog.LogLine) -> None:
        if self.req.since is not None:
            return
        if line.kind == "reload_failed":
            raise CorefileRefused(
                f"CoreDNS in {st.pod.key} refused the edited Corefile and keeps serving the "
                f"old one: {line.text}",
                "the Corefile was put back at once; use the capture route (--via capture)")
        if st.live_at:
            return
        if line.ts and line.ts < self.edited_at:
            if line.kind == "config":  # a configuration this pod ran before the edit
                st.seen.add(line.sha)
            return
        if line.kind == "reloading":
            st.phase = "reloading"
            st.reloading = True
        elif not st.reloading:
            return
        elif line.kind == "config":
            if line.sha in st.seen:
                # The kubelet handed it an older version first (an earlier edit, or the
                # put-back of an earlier run): not ours yet, wait for the next reload.
                st.phase = (f"reloaded configuration {line.sha[:12]}..., which it ran before "
                            "the edit: still waiting")
                st.reloading = False
            else:
                st.sha = line.sha
                st.phase = f"loaded configuration SHA512 {line.sha[:12]}..."
        elif line.kind == "reloaded" and st.sha:
            st.live_at = time.time()
            st.phase = "logging" + (f" (configuration {st.sha[:12]}...)" if st.sha else "")
        self.progress.set(st.pod.key, st.phase)

    def _wanted(self, ev: DnsEvent) -> bool:
        f = self.req.filters
        if f.domains and not self._names.match_name(ev.qname):
            return False
        if f.qtypes and ev.qtype not in f.qtypes:
            return False
        return not (f.rcodes and (ev.qr != "response" or ev.rcode not in f.rcodes))

    @property
    def _names(self):
        names = getattr(self, "_name_filter", None)
        if names is None:
            from kubectl_dnstrace.agent.filters import DnsFilter

            names = self._name_filter = DnsFilter(self.req.filters.domains)
        return names

    # ---- reading what is already logged --------------------------------------------------------

    def _since(self, text: str) -> ExitCode:
        cf = cfg.parse_or_refuse(self.src, text)
        logged = [b for b in corefile.client_blocks(cf) if b.has("log")]
        if not logged:
            raise CorefileRefused(
                f"the Corefile in {self.src.label} has no 'log' plugin: CoreDNS has logged no "
                "queries to read",
                "turn it on for a while instead: kubectl dnstrace coredns --via log "
                "[--domain NAME] --duration 10m")
        fmt = next((corednslog.log_format(d.args) for b in logged for d in b.directives
                    if d.name == "log"), corednslog.DEFAULT_FORMAT)
        self.pipeline = self._pipeline()
        self._start_readers(fmt, since_seconds=max(1, int(self.req.since)), follow=False)
        try:
            self._drain(float("inf"))
        finally:
            self._finish_cleanup()
        for st in self.pods.values():
            self.pipeline.notice(self._log_start(st))
        return self._outcome()

    def _log_start(self, st: PodState) -> str:
        reader = st.reader
        first = reader.first_ts if reader else ""
        try:
            obj = self.kube.get("pods", st.pod.name, st.pod.namespace)
        except DnstraceError:
            obj = {}
        cs = next((c for c in (obj.get("status") or {}).get("containerStatuses") or []
                   if c.get("name") == st.container), {})
        started = ((cs.get("state") or {}).get("running") or {}).get("startedAt", "")
        restarts = int(cs.get("restartCount") or 0)
        text = f"{st.pod.key}: {reader.lines if reader else 0} log line(s)"
        text += f", the first at {first[:19].replace('T', ' ')} UTC" if first else ""
        if started:
            text += f"; the container started at {started.replace('T', ' ').rstrip('Z')} UTC"
        if restarts:
            text += (f" after {restarts} restart(s): what it logged before that start is not "
                     "read (only the current container's log is)")
        return text

    # ---- the end ---------------------------------------------------------------------------

    def _finish_cleanup(self) -> None:
        try:
            if self.changed and not self.restored:
                self._restore_now()
        finally:
            for st in self.pods.values():
                if st.reader is not None:
                    st.reader.close()
            for st in self.pods.values():
                if st.reader is not None:
                    st.reader.join(2.0)
            if self.inventory is not None:
                self.inventory.stop()

    def _restore_now(self) -> None:
        failures = 0
        while True:
            try:
                result = cfg.restore(self.kube, self.src, self.run_id)
                break
            except KeyboardInterrupt:  # Ctrl-C again: the Corefile still goes back first
                self.say("putting the Corefile back first (one moment)")
            except DnstraceError as exc:
                failures += 1
                if failures == 3:
                    self.say(f"could not put the Corefile back: {exc.message}. Run `kubectl "
                             "dnstrace coredns --restore` now: the ConfigMap's annotation "
                             f"{cfg.ANNOTATION} holds the original")
                    return
                time.sleep(1.0)
        self.restored = True
        if not result.nothing:  # nothing of this run was written (a refusal before the write)
            self.say(self._restored_text(result))

    def _outcome(self) -> ExitCode:
        parsed = sum(st.reader.parser.counts["query"] for st in self.pods.values() if st.reader)
        other = sum(st.reader.parser.counts["other"] for st in self.pods.values() if st.reader)
        self.pipeline.notice(f"read {parsed} query line(s) from the CoreDNS logs"
                             + (f"; {other} other line(s) (start-up, errors, unknown formats) "
                                "were skipped" if other else ""))
        return self.pipeline.finish()

    def _pipeline(self):
        from kubectl_dnstrace.attribution import scope_label, scope_notice
        from kubectl_dnstrace.kube.inventory import Inventory
        from kubectl_dnstrace.pipeline import Pipeline

        attributor = None
        try:
            inv = self.inventory = Inventory.from_cluster(self.kube, namespaces=[
                self.req.dns_namespace, self.kube.namespace or "default"])
            inv.start_watch(self.kube)
            attributor = (PastAttributor if self.req.since is not None else Attributor)(inv)
            attribution = scope_label(inv)
            if inv.scope:
                self.say(f"{scope_notice(inv)}. `kubectl dnstrace rbac --cluster` grants what "
                         "attribution reads")
        except DnstraceError as exc:
            attribution = f"off: {exc.message}"
            self.say(f"client attribution is off: {exc.message}. Clients show as IP addresses")
        # Role "coredns-log", not "coredns": a log line shows no upstream query, so the
        # linker must not call an unlinked answer "served from cache".
        targets = [{"namespace": st.pod.namespace, "name": st.pod.name, "node": st.pod.node,
                    "role": "coredns-log"} for st in self.pods.values()]
        meta = {"run_id": self.run_id, "targets": targets,
                "requested": ["coredns"], "duration": self.req.duration,
                "attribution": attribution, "via": "log"}
        return Pipeline(self.req.output, self.out, self.err, attributor=attributor, meta=meta)


class PastAttributor(Attributor):
    """For ``--since``: lines older than the inventory. A pod address that no pod holds now
    was most likely a pod that is gone: the client is unknown, shown with its address,
    never guessed to be the node's CNI gateway (the live attribution's reading of a podCIDR
    address nobody holds)."""

    def attribute(self, ip: str, ts: float) -> Client:
        client = super().attribute(ip, ts)
        if (client.kind == "node" and client.reason.startswith("address in ")
                and ts < self.inventory.since):
            return Client(kind="unknown", ip=ip, node=client.node, reason=(
                f"no pod holds this address of {client.node}'s podCIDR now: the pod that "
                "asked is gone (or it was the node's CNI gateway)"))
        return client


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + ".000000000Z"


def _pod_ip(pod: dict) -> str:
    return (pod.get("status") or {}).get("podIP") or ""


def _dns_container(pod: dict) -> str:
    names = [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []]
    for name in names:
        if "coredns" in name or "dns" in name:
            return name
    return names[0] if names else "coredns"


def put_back_leftover(kube: Kube, dns_namespace: str, say) -> None:
    """For the capture route's ``coredns`` runs: put back a Corefile change that a killed
    ``--via log`` run left once its deadline passed. Best effort: without the rights to
    read or update the ConfigMap it says nothing and changes nothing."""
    src = cfg.CorefileSource(dns_namespace, cfg.FALLBACK_NAME)
    try:
        cm, _ = cfg.read(kube, src)
        record = cfg.record_of(cm)
        if record is None or time.time() < record.deadline:
            return
        result = cfg.restore(kube, src)
    except DnstraceError:
        return
    if not result.nothing:
        say(f"an interrupted --via log run (run {result.run}) left its change in {src.label}: "
            "put back" + (" (only its line: others changed the Corefile since)"
                          if result.others_changed else ", byte-identical"))


def run_log_trace(req: TraceRequest, out: TextIO | None = None,
                  err: TextIO | None = None) -> ExitCode:
    """``coredns --via log`` / ``--since`` / ``--restore``; refusals raise for cli.main."""
    bad = [t for t in req.targets if t.strip().lower() not in ("coredns", "dns")]
    if bad or req.selector or not req.targets:
        raise UsageError(
            f"--via log, --since and --restore apply to the cluster DNS only, not to "
            f"{', '.join(bad) or '-l ' + (req.selector or '')}",
            "kubectl dnstrace coredns --via log --domain NAME")
    if req.output.pcap_path:
        raise UsageError("--pcap needs packets, and --via log reads CoreDNS's log lines",
                         "drop --pcap, or use the capture route (--via capture)")
    if req.since is not None and req.restore:
        raise UsageError("--since reads logs; --restore puts a Corefile back: one at a time",
                         "run them separately")
    return LogTrace(req, out, err).run()
