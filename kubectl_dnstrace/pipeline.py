"""The back half shared by live traces and ``analyze``: events in, rendered answers out.

``trace`` and ``analyze`` are only sources: each feeds ``DnsEvent`` objects into a
``Pipeline`` and calls ``finish`` at the end. The stages, in order, each a small object
that knows nothing of the others:

    attribute (Attributor) -> link (Linker) -> aggregate (Aggregator) -> render / pcap

Data goes to ``out`` (stdout), progress and notices to ``err`` (stderr). ``finish``
returns MATCHED when something matched and NO_MATCH when nothing did, like grep.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import deque
from typing import Any, TextIO

from kubectl_dnstrace import columns, gcpolicy, render
from kubectl_dnstrace.aggregate import Aggregator
from kubectl_dnstrace.attribution import Attributed, Attributor
from kubectl_dnstrace.bypass import BypassReport, ResolverClassifier
from kubectl_dnstrace.bypass import summary_json as bypass_json
from kubectl_dnstrace.bypass import summary_text as bypass_text
from kubectl_dnstrace.errors import ExitCode
from kubectl_dnstrace.linking import Linker, describe_client
from kubectl_dnstrace.model import Client, DnsEvent, OutputOptions
from kubectl_dnstrace.pairing import Pairing

LIVE_WAIT = 3.0  # seconds (event time) a query waits for its answer before its line prints
LIVE_REORDER = 1.0  # seconds a live line waits for earlier ones from slower log streams
WATCH_WAIT = 2.0  # seconds (wall) an event from an unheld pod address waits for the pod watch
UNHELD_MEMO = 10.0  # seconds (wall) an address that waited in vain is not waited for again
LINK_WAIT = 3.0  # seconds (wall) a forward's -o ndjson line waits for a cause from a slower stream
RESOLVER_ROLES = ("coredns", "node-local-dns")
# Reasons of a pod address that no pod holds yet (attribution.py): the ones worth waiting on.
# "not a pod, node or Service address ..." is not among them: with every namespace and node
# listed, it is outside any pod network.
_MAYBE_NEW_POD = ("address in ", "no known pod", "no pod of ")


class Pipeline:
    """Consumes events one by one; ``finish`` returns MATCHED or NO_MATCH like grep.

    ``meta`` is the run's metadata for ``-o json`` (command, duration, ...). Its
    ``targets`` entry becomes the document's ``targets``; ``roles`` ({"ns/pod": role}) or
    targets given as PodRef/dicts with a ``role`` tell which captures sit in a resolver
    ("coredns", "node-local-dns"). ``streaming`` flushes every line (a live trace);
    reading a file leaves buffering to the OS. ``in_order``: the events come in capture
    time order across all their sources (``analyze``, standard input included), so a
    forward's cause, if any, came before it and no line waits for a late one.
    """

    def __init__(self, output: OutputOptions, out: TextIO | None = None,
                 err: TextIO | None = None, *, attributor: Attributor | None = None,
                 meta: dict[str, Any] | None = None, streaming: bool = True,
                 in_order: bool = False) -> None:
        self.output = output
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.streaming = streaming
        self.in_order = in_order
        self.attributor = attributor or Attributor()
        meta = dict(meta or {})
        self.targets = [_target_dict(t) for t in meta.pop("targets", None) or []]
        self.meta = meta
        self.count = 0
        self.notices: list[str] = []
        fmt = output.format
        self.wide = fmt == "wide"
        self.live = fmt in ("table", "wide") and output.live
        self.aggregator = Aggregator() if fmt in ("table", "wide", "json") else None
        self.events = render.EventSpool() if fmt == "json" else None
        self._pairing: Pairing[Attributed] = Pairing(
            _event_of, LIVE_WAIT, hold=LIVE_REORDER if streaming else 0.0)
        self.width = output.width or columns.terminal_width(self.out)
        self._layout = render.LiveLayout(self.wide, self.width)
        self._waiting: deque[tuple[float, DnsEvent]] = deque()
        self._unheld: dict[str, float] = {}  # address -> until when it is not waited for
        self._held: deque[tuple[float, Attributed]] = deque()  # forwards awaiting a cause
        self._late_seen = 0  # the linker's late_causes when the held lines were last looked at
        self._header_done = False
        self._nodelocal_said = False
        self.coverage: list[str] = []  # the pods a followed workload had, when they changed
        self.linker = self._linker()
        # Which resolver each query asked, and what went around cluster DNS (bypass.py).
        self.resolvers = ResolverClassifier(self.attributor,
                                            self.meta.get("dns_namespace") or "kube-system")
        self.classify = self.resolvers.classify
        self._resolver_out = fmt in ("json", "ndjson")
        self.bypass = BypassReport()
        self.bypass.uncovered = list(self.meta.pop("uncovered", None) or [])
        self._encrypted_events: list[dict] = []
        self._services = self.attributor.inventory.services  # cluster ip -> (ns, name)
        self._ndjson = render.NdjsonWriter()
        self._lines: list[str] = []  # -o ndjson lines of the events fed so far, not yet written
        # Where an attributed event goes after aggregation and pcap: chosen once, not per event
        # (None: -o table without live lines, where the aggregator has it).
        self._show = (self._show_ndjson if fmt == "ndjson" else
                      self.events.add if self.events is not None else
                      self._live if self.live else None)
        # The inventory (10,000 pods are some hundred thousand objects) and everything else
        # built before the stream lives as long as the run: see gcpolicy.
        gcpolicy.for_streams()
        self.pcap = None
        if output.pcap_path:
            from kubectl_dnstrace.pcapio import EvidenceWriter

            self.pcap = EvidenceWriter(output.pcap_path)

    def _linker(self) -> Linker:
        inv = self.attributor.inventory
        pods = {p.key for role in RESOLVER_ROLES for p in inv.dns_pods(role)}
        nodelocal = inv.dns_pods("node-local-dns")
        nodes = {p.node for p in nodelocal if p.node}
        captures = set()
        roles = dict(self.meta.get("roles") or {})
        for t in self.targets:
            if isinstance(t, dict) and t.get("role"):
                roles[f"{t.get('namespace')}/{t.get('name')}"] = t["role"]
        # A capture in a CoreDNS pod's own namespace sees only what reaches CoreDNS or
        # leaves it: a query there went to cluster DNS (bypass.py), whatever its address.
        self._at_cluster_dns = {key for key, role in roles.items() if role == "coredns"}
        for key, role in roles.items():
            if role in RESOLVER_ROLES:
                pods.add(key)
                captures.add(key)
                if role == "node-local-dns":
                    info = inv.pod_by_key(key)
                    if info is not None and info.node:
                        nodes.add(info.node)
        # Said where it applies: a trace at the cluster DNS, or a file of unknown origin;
        # a trace of application pods sees their own addresses whatever the DNS does.
        pods_only = any(isinstance(t, dict) and t.get("role") for t in self.targets) and all(
            t.get("role") == "pod" for t in self.targets if isinstance(t, dict))
        if nodes and not pods_only:
            self._say_nodelocal(len(nodes))
        return Linker(pods, nodes, captures, server_of=self.attributor.attribute)

    def _say_nodelocal(self, nodes: int) -> None:
        if not self._nodelocal_said:
            self._nodelocal_said = True
            self.notice(
                f"NodeLocal DNSCache is on ({nodes} node{'s' if nodes != 1 else ''}): CoreDNS "
                "sees node addresses, not pods; clients are named from the node-local-dns "
                "captures, which see the pods' own addresses")

    # ---- the stages ------------------------------------------------------------------------

    def feed(self, event: DnsEvent) -> None:
        self.count += 1
        if self._waiting:
            self._release(everything=False)
        client = self._client(event)
        if self._waiting or (self._may_be_new_pod(client)
                             and not self._known_unheld(client.ip, time.monotonic())):
            # Keep event order: once one waits, the ones behind it wait too.
            self._waiting.append((time.monotonic() + WATCH_WAIT, event))
        else:
            self._process(event, client)
        self._write_ndjson()

    def feed_batch(self, events: list[DnsEvent]) -> None:
        """``feed`` for each event, for a file's events in capture order: while no pod
        watch runs (a file is attributed against a snapshot), no event can wait for one,
        and the per-event check for that is left out."""
        if self._waiting or self.attributor.inventory.watching:
            for event in events:
                self.feed(event)
            return
        self.count += len(events)
        attribute, process = self.attributor.attribute, self._process
        for ev in events:
            process(ev, attribute(ev.src if ev.qr == "query" else ev.dst, ev.ts))
        self._write_ndjson()

    def _client(self, event: DnsEvent) -> Client:
        return self.attributor.attribute(event.src if event.qr == "query" else event.dst,
                                         event.ts)

    def _may_be_new_pod(self, client: Client) -> bool:
        """A pod address nobody holds, while the pod watch runs: the pod may be so new that
        its watch event (with its IP) is still on the way, while its first query already
        arrived over the log stream — a CronJob pod asks at once. Wait for the watch."""
        return (self.attributor.inventory.watching and client.kind in ("node", "unknown")
                and client.reason.startswith(_MAYBE_NEW_POD))

    def _known_unheld(self, ip: str, now: float) -> bool:
        """Did ``ip`` already wait WATCH_WAIT in vain, and has it kept coming since?

        A CNI gateway (what CoreDNS sees behind NodeLocal DNSCache), or under a
        namespace-only grant a pod of another namespace, never shows up in the watch: its
        events would each wait, and every line behind them with them. One wait per address
        is enough; the memo lasts while the address keeps asking (a pod that later gets
        such an address is named as soon as the watch brings it).
        """
        until = self._unheld.get(ip)
        if until is None or now >= until:
            return False
        self._unheld[ip] = now + UNHELD_MEMO
        return True

    def _release(self, everything: bool) -> None:
        now = time.monotonic()
        while self._waiting:
            deadline, event = self._waiting[0]
            client = self._client(event)
            if (not everything and self._may_be_new_pod(client)
                    and not self._known_unheld(client.ip, now)):
                if now < deadline:
                    return
                if len(self._unheld) >= 100_000:
                    self._unheld.clear()
                self._unheld[client.ip] = now + UNHELD_MEMO  # waited in vain
            self._waiting.popleft()
            self._process(event, client)

    def _process(self, event: DnsEvent, client: Client) -> None:
        # Every query gets its resolver (the bypass tally, live lines); a response only
        # where events are written out with it (-o json/ndjson).
        if event.qr == "query" or self._resolver_out:
            res = event.resolver = self.classify(event, client,
                                                 event.observed_at in self._at_cluster_dns)
            if res["bypass"]:
                self.bypass.add_query(event, client, res)
        ann = self.linker.observe(event, client)
        a = Attributed(event, client, ann.link, ann.served)
        if self._services:
            a.services = self._services_of(event)
        if self.aggregator is not None:
            self.aggregator.add(a)
        if self.pcap is not None:
            self.pcap.write(event.raw, event.ts, _comment(a), event.observed_at)
        if self._show is not None:
            self._show(a)

    def _services_of(self, ev: DnsEvent) -> dict[str, str] | None:
        """The event's server and answer addresses that are Services (or None)."""
        services = self._services
        found = None
        for ip in (ev.dst if ev.qr == "query" else ev.src, *ev.answers):
            svc = services.get(ip)
            if svc is not None:
                if found is None:
                    found = {}
                found[ip] = f"{svc[0]}/{svc[1]}"
        return found

    def _show_ndjson(self, a: Attributed) -> None:
        """The event's line goes to ``_lines``, written by ``_write_ndjson`` once the events
        fed together are through: one write per file batch, one per event when live."""
        if a.link is not None and not a.link.causes and self.streaming and not self.in_order:
            # Live, its cause may still be on its way in another capture's log stream (the
            # linker adds late causes to the link): the line waits a little for it. A file
            # (or standard input) is read in capture order, causes first: nothing to wait
            # for, and a line held would come out after later ones.
            self._held.append((time.monotonic() + LINK_WAIT, a))
        else:
            self._lines.append(self._ndjson.line(a))
        if self._held:
            self._release_held(a.event.ts, everything=False)

    def _write_ndjson(self) -> None:
        if self._lines:
            self.out.write("".join(self._lines))
            self._lines.clear()
            if self.streaming:
                self.out.flush()

    def _release_held(self, now_ts: float, everything: bool) -> None:
        """Let go (into ``_lines``) the held forwards that found their cause (looked for
        only when the linker added a late one), then, from the oldest, those that waited
        LINK_WAIT or are older (in event time) than the linker's window: no cause can come
        for those. Cheap per event even with thousands held: no scan unless something
        changed."""
        held = self._held
        lines = self._lines
        if everything or self.linker.late_causes != self._late_seen:
            self._late_seen = self.linker.late_causes
            keep: deque[tuple[float, Attributed]] = deque()
            for item in held:
                if everything or item[1].link.causes:
                    lines.append(self._ndjson.line(item[1]))
                else:
                    keep.append(item)
            held = self._held = keep
        wall = time.monotonic()
        window = self.linker.window
        while held and (held[0][0] <= wall or now_ts - held[0][1].event.ts > window):
            lines.append(self._ndjson.line(held.popleft()[1]))

    def tick(self) -> None:
        """Nothing arrived for a while: let waiting events and held lines go when due."""
        if self.live and len(self._pairing):
            self._write_pairs(self._pairing.expire())
        if self._waiting:
            self._release(everything=False)
        if self._held:
            self._release_held(float("-inf"), everything=False)
        self._write_ndjson()

    def feed_aggregate(self, record: dict, observed_at: str = "") -> None:
        """An agent's ``agg`` record (per-second counts above its record rate): attributed
        and counted like events; ``-o ndjson`` gets one line per group. The record is as
        ``protocol`` checked it: each group's fields are there, with their types."""
        ts = record["ts"]
        for group in record["groups"]:
            if not group["client"]:
                continue
            count = group["count"]
            self.count += count
            client = self.attributor.attribute(group["client"], ts)
            qname, qtype, rcode = group["qname"], group["qtype"], group["rcode"]
            if self.aggregator is not None:
                self.aggregator.add_group(client, group["client"], qname, qtype, rcode, count,
                                          ts, observed_at)
            if self.output.format == "ndjson":
                line = {"type": "agg", "ts": ts, "interval": record.get("interval"),
                        "client_ip": group["client"], "qname": qname, "qtype": qtype,
                        "rcode": rcode, "count": count, "observed_at": observed_at,
                        "client": render.client_json(client)}
                self.out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False)
                               + "\n")
        if self.streaming:
            self.out.flush()

    def feed_encrypted(self, record: dict, observed_at: str = "") -> None:
        """An agent's ``encrypted-dns`` record: a connection attempt to a DoT/DoH resolver,
        seen from its SYN. Counted for the summary, shown as a line, kept for -o json."""
        self.count += 1
        client = self.attributor.attribute(record["client"], record["ts"])
        self.bypass.add_encrypted(record, client, observed_at)
        fmt = self.output.format
        if fmt == "ndjson":
            self.out.write(json.dumps(render.encrypted_json(record, client, observed_at),
                                      separators=(",", ":"), ensure_ascii=False) + "\n")
        elif fmt == "json":
            if len(self._encrypted_events) < 100_000:
                self._encrypted_events.append(render.encrypted_json(record, client,
                                                                    observed_at))
        elif self.live:
            self._write_text(self._layout.rows(
                [render.encrypted_cells(record, client, observed_at, self.wide)]))
        if self.streaming:
            self.out.flush()

    def _live(self, a: Attributed) -> None:
        self._write_pairs(self._pairing.add(a))

    def _write_pairs(self, pairs: list) -> None:
        self._write_text(self._layout.lines(pairs))

    def _write_text(self, text: str) -> None:
        if not text:
            return
        self._header_done = True
        self.out.write(text)
        if self.streaming:
            self.out.flush()

    def _server(self, ip: str) -> Client:
        return self.attributor.attribute(ip, time.time())

    def notice(self, text: str) -> None:
        """A progress line or warning for the human: always stderr, never mixed with data."""
        text = text.rstrip("\n")
        self.notices.append(text)
        self.err.write(text + "\n")
        self.err.flush()

    # ---- the end ---------------------------------------------------------------------------

    def finish(self) -> ExitCode:
        self._release(everything=True)
        if self._held:
            self._release_held(float("-inf"), everything=True)
        self._write_ndjson()
        if self.live:
            self._write_pairs(self._pairing.flush())
        if self.pcap is not None:
            digest = self.pcap.close()
            kind = "pcapng" if self.pcap.pcapng else "pcap"
            self.notice(f"wrote {self.pcap.count} packets to {self.pcap.path} ({kind}, mode 0600); "
                        f"sha256 {digest}")
            if self.pcap.skipped:
                self.notice(f"{self.pcap.skipped} events came without their packet and are "
                            "not in the file")
        fmt = self.output.format
        links = self.linker.links
        if fmt == "json":
            assert self.aggregator is not None and self.events is not None
            try:
                extra = bypass_json(self.bypass, render.client_json)
                extra["encrypted_dns_events"] = self._encrypted_events
                render.write_json_document(self.out, self.meta, self.targets,
                                           self.aggregator.clients(), links, self.events,
                                           self.notices, extra)
            finally:
                self.events.close()
        elif fmt in ("table", "wide"):
            assert self.aggregator is not None
            clients = self.aggregator.clients()
            if clients:
                if self._header_done:
                    self.out.write("\n")
                when = render.report_clock(clients, links)
                width = None if self.wide else self.width
                self.out.write(render.summary_table(clients, self.wide, when, width,
                                                    self._services))
                notes = render.explanations(clients, width)
                ups = render.links_text(links, when, width)
                pods = render.coverage_text(self.coverage, width)
                for block in (notes, ups, pods):
                    if block:
                        self.out.write("\n" + block)
            elif self.bypass.empty:
                self.notice("No DNS queries matched.")
            if not self.bypass.empty:
                self.out.write("\n" + bypass_text(self.bypass, self._server))
        self.out.flush()
        return ExitCode.MATCHED if self.count else ExitCode.NO_MATCH


def _event_of(a: Attributed) -> DnsEvent:
    return a.event


def _comment(a: Attributed) -> str:
    ev = a.event
    text = f"{describe_client(a.client)} {ev.qr} {ev.qname} {ev.qtype}"
    if ev.rcode:
        text += f" {ev.rcode}"
    return text


def _target_dict(t: Any) -> Any:
    """Targets as given (``"coredns"``, ``"pod/web"``) or capture pods (PodRef / dict)."""
    if dataclasses.is_dataclass(t) and not isinstance(t, type):
        return {k: v for k, v in dataclasses.asdict(t).items()
                if k in ("namespace", "name", "node", "role", "host_network")}
    return dict(t) if isinstance(t, dict) else t
