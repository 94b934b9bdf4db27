"""``kubectl dnstrace analyze FILE...``: capture files into the same back half as a trace.

The manual route most responders try first is a tcpdump on the CoreDNS node. This turns
that file into the same answer a live trace gives. The file is streamed record by record
(memory stays flat in its size) through exactly the code the agent runs live —
``FrameDecoder`` (Ethernet, Linux cooked SLL/SLL2, raw IP, DNS over TCP), ``Deduper`` (a
node capture sees a packet on the veth and the bridge, before and after DNAT),
``EventBuilder`` (filters, query/response matching, latency) — then ``DnsEvent.from_record``
and the ``Pipeline``.

Attribution: against the current cluster by default; ``--offline`` never contacts one
(IPs only), and ``--pods FILE`` attributes from a saved ``kubectl get pods -A -o json``
(a List; nodes, services, ReplicaSets and Jobs in the same List are used too).

``-`` is standard input: a capture piped in is read as it arrives, each record handed on at
once and each output line flushed, so ``tcpdump -U -w - | kubectl dnstrace analyze -``
attributes a capture while it runs.

Several files are several captures of one incident (a CoreDNS pod's and a node's, two DNS
replicas): their events are merged in capture-time order, as a live trace sees its
captures' streams together, so a query seen by two captures counts once and a forward in
one file is linked to its cause in another, whatever order the files are named in.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import sys
import time
from collections.abc import Generator, Iterable, Iterator
from itertools import chain
from operator import attrgetter
from typing import Any, TextIO

from kubectl_dnstrace import linklayers
from kubectl_dnstrace.agent.filters import DnsFilter
from kubectl_dnstrace.attribution import Attributor, scope_label, scope_notice
from kubectl_dnstrace.errors import BadInput, ClusterUnreachable, ExitCode, UsageError
from kubectl_dnstrace.fileevents import FileEvents
from kubectl_dnstrace.kube.inventory import Inventory, ObjectMisfit
from kubectl_dnstrace.model import AnalyzeRequest, DnsEvent
from kubectl_dnstrace.pcapio import STDIN, read_records
from kubectl_dnstrace.pipeline import Pipeline
from kubectl_dnstrace.progress import Progress


def run_analyze(request: AnalyzeRequest, out: TextIO | None = None,
                err: TextIO | None = None) -> ExitCode:
    dns_filter = _filter(request)
    if request.files.count(STDIN) > 1:
        raise UsageError("standard input (-) is named twice", "name - once")
    for path in request.files:
        if path == STDIN:
            if sys.stdin is None or sys.stdin.isatty():
                raise UsageError(
                    "- reads a capture from standard input, and nothing is piped in",
                    "pipe one in: tcpdump -U -w - port 53 | kubectl dnstrace analyze -")
            continue  # read once, as it comes: its first record cannot be read ahead
        if not os.path.isfile(path):
            why = "it is a directory" if os.path.isdir(path) else "no such file"
            raise BadInput(f"cannot read {path}: {why}", "give the path of a pcap or pcapng file")
        # A file that is not a capture is the user's mistake to hear about first, before any
        # complaint about the cluster: reading its first record says so (BadInput).
        next(iter(read_records(path)), None)
    inventory = _inventory(request)
    meta: dict[str, Any] = {
        "command": "analyze",
        "files": [],
        "filters": {"domains": list(request.filters.domains),
                    "qtypes": list(request.filters.qtypes),
                    "rcodes": list(request.filters.rcodes)},
        "attribution": ("pods file " + request.pods_file if request.pods_file
                        else "none (offline)" if request.offline
                        else scope_label(inventory)),
    }
    pipeline = Pipeline(request.output, out, err, attributor=Attributor(inventory),
                        meta=meta, streaming=STDIN in request.files, in_order=True)
    if inventory.scope:
        pipeline.notice(scope_notice(inventory))
    want_raw = bool(request.output.pcap_path)
    unread: list[BadInput] = []
    for stats in analyze_files(request.files, dns_filter, pipeline, want_raw):
        path = stats["path"] = display_name(stats.get("path") or "")
        pipeline.meta["files"].append(stats)
        pipeline.notice(file_summary(path, stats))
        problem = file_problem(path, stats)
        if problem is not None:
            unread.append(problem)
    code = pipeline.finish()
    if unread:
        # What was read is reported above; the exit code still says a file was not.
        raise unread[0] if len(unread) == 1 else BadInput(
            "; ".join(p.message for p in unread), unread[0].hint)
    return code


def file_summary(path: str, stats: dict[str, Any]) -> str:
    """One file's counters, as the notice after it is read."""
    text = (f"{path}: {stats['packets']} packets, {stats['dns_messages']} DNS messages, "
            f"{stats['matched']} matched")
    if stats.get("truncated"):
        text += (f", {stats['truncated']} cut short by the capture's snap length (reported "
                 "as far as they go)")
    if stats.get("cut"):
        text += f", {stats['cut']} cut short inside their question (skipped)"
    if stats["malformed"]:
        text += f", {stats['malformed']} malformed (skipped)"
    if stats["duplicates"]:
        text += f", {stats['duplicates']} duplicates"
    if stats["unsupported"]:
        kinds = sorted((stats.get("unsupported_types") or {}).items(), key=lambda kv: -kv[1])
        text += (f", {stats['unsupported']} frames of link types analyze does not read "
                 "(skipped: " + ", ".join(f"{n} {linklayers.name(int(lt))}"
                                          for lt, n in kinds) + ")")
    if stats.get("no_packet"):
        text += f", {stats['no_packet']} NFLOG or PKTAP frames without a packet (skipped)"
    if stats["bad_times"]:
        text += f", {stats['bad_times']} with a timestamp past the year 10000 (skipped)"
    if stats.get("damaged_at") is not None:
        text += f"; damaged at byte {stats['damaged_at']}: nothing after it was read"
    return text


def file_problem(path: str, stats: dict[str, Any]) -> BadInput | None:
    """The error a file's reading ends the run with (exit 10) once what was read is
    reported: damage part-way, or no frame of a link type that carries IP."""
    if stats.get("damaged_at") is not None:
        return BadInput(
            f"{path} is damaged at byte {stats['damaged_at']}: {stats['damage']}",
            "the packets before the damage were read and are reported above; nothing "
            "after it was (tcpdump and tshark stop there too)")
    empty = stats.get("no_packet", 0)
    read = stats["packets"] - stats["bad_times"] - stats["unsupported"] - empty
    if (stats["unsupported"] or empty) and read <= 0:
        why = []
        if stats["unsupported"]:
            kinds = ", ".join(linklayers.name(int(lt)) for lt in stats["unsupported_types"])
            why.append(f"{stats['unsupported']} are of link type {kinds}, which analyze does "
                       "not read")
        if empty:
            why.append(f"{empty} are NFLOG or PKTAP records without a packet")
        return BadInput(
            f"{path}: no frame could be read as IP: " + "; ".join(why),
            "analyze reads Ethernet, Linux cooked (SLL, SLL2: tcpdump -i any), raw IP, BSD "
            "loopback, NFLOG and PKTAP captures; an NFLOG rule with --nflog-size 0 logs no "
            "packet")
    return None


FILE_CHILDREN = 4  # files decoded in child processes at once; any further ones in this one
MERGED_BATCH = 512  # events handed to the pipeline at a time when files are merged


def analyze_files(paths: list[str], dns_filter: DnsFilter, pipeline: Pipeline,
                  want_raw: bool = False) -> list[dict[str, Any]]:
    """Stream the files into ``pipeline``, several merged in capture-time order (see the
    module's docstring); returns each file's counters, in the order given."""
    sources = [FileEvents(path, dns_filter, with_packets=want_raw, may_fork=i < FILE_CHILDREN)
               for i, path in enumerate(paths)]
    streams = [_events(source, want_raw) for source in sources]
    feed = pipeline.feed_batch
    status = ReadStatus(pipeline, sources)
    try:
        if len(streams) == 1:
            for events in streams[0]:
                feed(events)
                status.update()
        else:
            # A capture is written in time order (one that is not still comes out whole, in
            # its own order); for equal times heapq.merge keeps the order the files were
            # named in.
            merged = heapq.merge(*(chain.from_iterable(s) for s in streams),
                                 key=attrgetter("ts"))
            batch: list[DnsEvent] = []
            for event in merged:
                batch.append(event)
                if len(batch) >= MERGED_BATCH:
                    feed(batch)
                    batch = []
                    status.update()
            if batch:
                feed(batch)
    finally:
        status.clear()
    return [source.stats for source in sources]


def display_name(path: str) -> str:
    """How a file is named in events (``observed_at``) and notices: standard input as
    "stdin"."""
    return "stdin" if path == STDIN else path


class ReadStatus:
    """How far the files are read, as one self-overwriting line on stderr — on a terminal,
    after the first second, and only while nothing else is being drawn there: not under live
    lines or ndjson streaming to the same terminal, which show progress by themselves."""

    FIRST = 1.0  # seconds before the line shows: a small file stays quiet
    EVERY = 0.5  # seconds between redraws

    def __init__(self, pipeline: Pipeline, sources: list[FileEvents]) -> None:
        def tty(stream: Any) -> bool:
            isatty = getattr(stream, "isatty", None)
            return bool(isatty and isatty())

        quiet_out = pipeline.output.format == "json" or (
            pipeline.output.format in ("table", "wide") and not pipeline.live)
        self.on = tty(pipeline.err) and (quiet_out or not tty(pipeline.out))
        self.progress = Progress(pipeline.err, interactive=True) if self.on else None
        self.pipeline = pipeline
        self.sources = sources
        # Standard input has no size to measure against: no percent then.
        self.total = 0 if any(s.path == STDIN for s in sources) else (
            sum(_size(s.path) for s in sources) or 1)
        self.start = time.monotonic()
        self._next = self.start + self.FIRST

    def update(self) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.EVERY
        elapsed = now - self.start
        text = (f"reading {len(self.sources)} files" if len(self.sources) > 1
                else f"reading {display_name(self.sources[0].path)}")
        if not self.total:
            text += f": {self.pipeline.count:,} DNS messages in {elapsed:.0f}s"
        else:
            done = min(sum(s.position.offset for s in self.sources), self.total)
            text += f": {100 * done / self.total:.0f}%, {self.pipeline.count:,} DNS messages"
            if done:
                text += f", about {elapsed * (self.total - done) / done:.0f}s left"
        self.progress.status(text)

    def clear(self) -> None:
        if self.progress is not None:
            self.progress.clear_status()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _events(source: FileEvents, want_raw: bool) -> Iterator[list[DnsEvent]]:
    """One file's records as ``DnsEvent`` lists, seen at the file's path."""
    path = display_name(source.path)
    event = DnsEvent
    for batch in source.batches():
        if want_raw:
            events = [event(*f[:10], "", f[10], f[11] or [], f[12], 0, path, f[15], 101, f[14])
                      for f in batch]
        else:  # unpacked into names: half the cost of indexing the tuple 13 times
            events = [event(ts, qr, proto, src, sport, dst, dport, ident, qname, qtype, "",
                            rcode, answers or [], latency, 0, path, None, 101, truncated)
                      for ts, qr, proto, src, sport, dst, dport, ident, qname, qtype, rcode,
                      answers, latency, _tc, truncated in batch]
        yield events


def _filter(request: AnalyzeRequest) -> DnsFilter:
    f = request.filters
    try:
        return DnsFilter(f.domains, f.qtypes, f.rcodes)
    except ValueError as exc:
        raise UsageError(str(exc), "use names like A, AAAA, TXT and NXDOMAIN, SERVFAIL") from None


def _inventory(request: AnalyzeRequest) -> Inventory:
    if request.pods_file:
        return inventory_from_file(request.pods_file)
    if request.offline:
        return Inventory()
    from kubectl_dnstrace.kube.client import Kube

    try:
        kube = Kube.connect(request.cluster)
    except ClusterUnreachable as exc:
        hint = (exc.hint + "\n" if exc.hint else "") + (
            "or attribute without a cluster: --offline (addresses only), or --offline --pods "
            "FILE with a saved `kubectl get pods -A -o json`")
        raise ClusterUnreachable(exc.message, hint) from None
    try:
        # Under a namespace-only grant, the pods of -n (or the context's namespace).
        home = request.cluster.namespace or kube.namespace or "default"
        return Inventory.from_cluster(kube, namespaces=[home])
    finally:
        kube.close()


def inventory_from_file(path: str) -> Inventory:
    """An inventory from ``kubectl get pods -A -o json`` (or a List of pods, nodes,
    services, ReplicaSets and Jobs: ``kubectl get pods,nodes,svc,rs,jobs -A -o json``).

    A JSON List is read one item at a time (``_json_items``): 10,000 real pods are some
    50–100 MB of JSON and ten times that as Python objects, while the inventory keeps a few
    MB. Anything else (YAML, one object, a JSON error) is parsed whole."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise UsageError(f"--pods: cannot read {path}: {exc.strerror}",
                         "save it with: kubectl get pods -A -o json > pods.json") from None
    except UnicodeDecodeError:
        raise UsageError(f"--pods: {path} is not text",
                         "save it with: kubectl get pods -A -o json > pods.json") from None
    since = os.path.getmtime(path)
    try:
        return _from_items(path, _json_items(text), since)
    except ValueError:
        pass  # not a JSON object: YAML, or a fault to name below
    try:
        doc = json.loads(text)
    except ValueError:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            doc = None
    if not isinstance(doc, dict):
        raise UsageError(f"--pods: {path} is not a JSON or YAML Kubernetes object",
                         "save it with: kubectl get pods -A -o json > pods.json")
    items = doc.get("items") if "items" in doc else [doc]
    return _from_items(path, items if isinstance(items, list) else [], since)


def _from_items(path: str, items: Iterable[Any], since: float) -> Inventory:
    try:
        return Inventory.from_items(items, since)
    except ObjectMisfit as exc:
        raise UsageError(f"--pods: {path}: {exc}",
                         "save it again with: kubectl get pods -A -o json > pods.json"
                         ) from None


_SPACE = re.compile(r"[ \t\n\r]*")
_scan = json.JSONDecoder().raw_decode


def _json_items(text: str) -> Iterator[Any]:
    """The items of the JSON object in ``text`` (its ``items`` array, one parsed at a time),
    or the object itself when it has no ``items``. Raises ValueError, possibly after some
    items, when ``text`` is not one JSON object: the caller starts over with a whole parse."""
    members: dict[str, Any] = {}
    found = False
    i = _expect(text, 0, "{")
    if text[_skip(text, i):_skip(text, i) + 1] == "}":
        i = _skip(text, i) + 1
    else:
        while True:
            key, i = _scan(text, _skip(text, i))
            if not isinstance(key, str):
                raise ValueError("a member name is not a string")
            i = _skip(text, _expect(text, i, ":"))
            if key == "items" and text[i:i + 1] == "[":
                found = True
                i = yield from _array(text, i + 1)
            else:
                members[key], i = _scan(text, i)
            i = _skip(text, i)
            if text[i:i + 1] == "}":
                i += 1
                break
            i = _expect(text, i, ",")
    if _skip(text, i) != len(text):
        raise ValueError("extra data after the object")
    if not found and "items" not in members:
        yield members


def _array(text: str, i: int) -> Generator[Any, None, int]:
    """The values of the JSON array whose ``[`` ends just before ``i``, one at a time;
    returns where the array ends."""
    i = _skip(text, i)
    if text[i:i + 1] == "]":
        return i + 1
    while True:
        value, i = _scan(text, _skip(text, i))
        yield value
        i = _skip(text, i)
        if text[i:i + 1] == "]":
            return i + 1
        i = _expect(text, i, ",")


def _skip(text: str, i: int) -> int:
    return _SPACE.match(text, i).end()


def _expect(text: str, i: int, char: str) -> int:
    """Past ``char`` after whitespace at ``i``; ValueError when it is not there."""
    i = _skip(text, i)
    if text[i:i + 1] != char:
        raise ValueError(f"expected {char!r} at {i}")
    return i + 1
