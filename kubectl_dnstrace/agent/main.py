"""The agent's command line and lifecycle: options, the capture loop, stats, and a clean
end on its deadline, SIGTERM/SIGINT or a stop file. Stdlib only, python3 >= 3.8.

Why the lifecycle is strict: an ephemeral container cannot be stopped or removed through
the Kubernetes API, so the agent must end by itself. ``--duration`` is a hard deadline
(and an alarm a few seconds later kills the process even if a write to stdout hangs);
the kubectl side asks for an early end by creating the stop file through exec.

Everything on stdout is protocol (docs/protocol.md), and nothing is written to stderr:
the pod log interleaves both streams, so a stray line would corrupt the record stream.
Failures are an ``error`` record in plain words, then ``bye`` with reason ``error`` and
a non-zero exit — never a traceback.
"""

import argparse
import base64
import contextlib
import os
import select
import signal
import socket
import struct
import sys
import time
import zlib

import kubectl_dnstrace
from kubectl_dnstrace import dnswire, protocol
from kubectl_dnstrace.agent.capture import PKT_HDR, Capture, CaptureError
from kubectl_dnstrace.agent.dedupe import Deduper
from kubectl_dnstrace.agent.encrypted import encrypted_watcher, parse_addresses
from kubectl_dnstrace.agent.events import EventBuilder
from kubectl_dnstrace.agent.filters import DnsFilter
from kubectl_dnstrace.agent.frames import LINKTYPE_RAW, DnsSegment, FrameDecoder
from kubectl_dnstrace.agent.output import Output
from kubectl_dnstrace.agent.volume import Shedder, VolumeGate

_PORTS = struct.Struct("!HH")
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_QUESTION_HEADER = b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"

RING_MB_MAX = 32  # the ring is resident memory of the pod traced (budget: docs/performance.md)
PENDING_MAX = 20000  # queries awaiting their response, per generation (events.py)
DEDUPE_MAX = 32768  # messages remembered for duplicate suppression, per generation
TCP_BUDGET = 4 * 1024 * 1024  # bytes of DNS-over-TCP held for reassembly, all flows
TEXT_CACHE_MAX = 10000  # names and addresses kept as text (an interval has at most MAX_KEYS)
BLOCKS_PER_TURN = 1  # ring blocks read between two looks at the clock, signals, stop file
FINAL_READ_SECONDS = 0.3  # at the end, what the ring holds is read for this long at most

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CAPTURE = 3


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser():
    p = _Parser(prog="python3 -m kubectl_dnstrace.agent", add_help=True,
                description="Capture port-53 traffic in this network namespace; NDJSON on stdout.")
    p.add_argument("--duration", type=float, default=300.0,
                   help="hard deadline in seconds (default 300)")
    p.add_argument("--domain", action="append", default=[],
                   help="report only this name and its subdomains (repeatable)")
    p.add_argument("--domain-file", action="append", default=[],
                   help="file of names, one per line, '#' comments")
    p.add_argument("--domains-z", action="append", default=[],
                   help="names as base64 of zlib-compressed newline-separated text "
                        "(for thousands of names in container args)")
    p.add_argument("--qtype", action="append", default=[], help="query type (repeatable)")
    p.add_argument("--rcode", action="append", default=[], help="response code (repeatable)")
    p.add_argument("--interface", help="capture on this interface only (default: all, "
                   "including interfaces that appear later)")
    p.add_argument("--pcap", action="store_true",
                   help="add each record's raw IP packet (base64) for pcap output")
    p.add_argument("--stop-file", help="end cleanly when this path exists")
    p.add_argument("--stats-interval", type=float, default=5.0,
                   help="seconds between stats records (default 5)")
    p.add_argument("--max-rate", type=int, default=2000,
                   help="records per second before switching to per-second aggregates "
                        "(default 2000; 0 never aggregates)")
    p.add_argument("--encrypted-dns", action="store_true",
                   help="also report TCP SYNs to port 853 (DoT) and to public DoH resolvers on "
                        "443 (encrypted-dns records)")
    p.add_argument("--doh-resolver", action="append", default=None,
                   help="with --encrypted-dns: a DoH/DoT resolver address (repeatable; "
                        "replaces the built-in list)")
    p.add_argument("--ring-mb", type=int, default=8,
                   help="capture ring size in MiB (default 8; see docs/performance.md)")
    p.add_argument("--no-ring", action="store_true", help="read with recvfrom, no ring")
    return p


def parse_args(argv):
    opts = build_parser().parse_args(argv)
    if not opts.duration > 0:
        raise UsageError("--duration must be more than 0 seconds")
    if not opts.stats_interval > 0:
        raise UsageError("--stats-interval must be more than 0 seconds")
    if opts.max_rate < 0:
        raise UsageError("--max-rate must be 0 or more")
    if opts.doh_resolver and not opts.encrypted_dns:
        raise UsageError("--doh-resolver needs --encrypted-dns")
    try:
        parse_addresses(opts.doh_resolver or ())
    except ValueError as exc:
        raise UsageError("--doh-resolver: %s" % exc) from None
    if not 1 <= opts.ring_mb <= RING_MB_MAX:
        raise UsageError("--ring-mb must be 1 to %d" % RING_MB_MAX)
    return opts


def read_domains(opts):
    """All names from --domain, --domain-file and --domains-z."""
    names = list(opts.domain)
    for path in opts.domain_file:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError("cannot read the domain file %s: %s" % (path, exc)) from None
        names.extend(_name_lines(text))
    for blob in opts.domains_z:
        try:
            text = zlib.decompress(base64.b64decode(blob)).decode("utf-8")
        except (ValueError, zlib.error, UnicodeDecodeError):
            raise UsageError("--domains-z is not base64 of zlib-compressed text") from None
        names.extend(_name_lines(text))
    return names


def _name_lines(text):
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            yield line


def encode_domains(names):
    """The --domains-z value for ``names`` (the kubectl side uses this to build args)."""
    return base64.b64encode(zlib.compress("\n".join(names).encode("utf-8"), 9)).decode("ascii")


def peak_rss_kb():
    """The process's peak resident set in KiB (VmHWM), the capture ring included, or None.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that over ``exec`` from the process
    that started us (a container runtime's init, a test runner forked), so it can report
    someone else's size."""
    try:
        with open("/proc/self/status") as fh:
            return int(fh.read().split("VmHWM:")[1].split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Agent(object):
    def __init__(self, opts, out, dns_filter):
        self.opts = opts
        self.out = out
        self.filter = dns_filter
        self.encrypted = encrypted_watcher(opts)
        self.capture = Capture(interface=opts.interface, ring_mb=opts.ring_mb,
                               use_ring=not opts.no_ring,
                               program=self.encrypted and self.encrypted.program)
        # Tables sized for the agent's memory budget (docs/performance.md, "Flood"); the
        # kubectl side's readers of capture files keep the larger defaults.
        self.decoder = FrameDecoder(tcp_budget=TCP_BUDGET)
        self.deduper = Deduper(max_entries=DEDUPE_MAX)
        self.builder = EventBuilder(dns_filter, with_raw=opts.pcap, pending_max=PENDING_MAX)
        self.volume = VolumeGate(opts.max_rate)
        self.shedder = Shedder(self.capture, self.volume)
        self.seen = 0
        self.stop_reason = None
        self._only_ifindex = 0  # the one interface seen so far (0: none yet, -1: several)
        self._wire_names = {}
        self._addr_texts = {}

    # -- per packet ---------------------------------------------------------------------
    def handle(self, packet, ts, ifkey, pkttype):
        """The general path: any packet (TCP, IP options, fragments, the recvfrom
        fallback) through FrameDecoder and Deduper."""
        if pkttype == 4 and (ifkey == 1 or ifkey == "lo"):
            return  # loopback shows every packet twice (outgoing, then incoming)
        segs = self.decoder.decode_ip(packet, ts)
        if not segs and self.encrypted is not None:
            rec = self.encrypted.inspect(packet, ts, self.capture.iface_name(ifkey))
            if rec is not None:
                self.out.add(rec)
        for seg in segs:
            if not self.deduper.seen(seg):
                self.report(seg, ifkey)

    def report(self, seg, ifkey):
        """A new message: a record, or a tally while aggregating."""
        volume = self.volume
        if volume.aggregating:
            key = self.builder.tally(seg)
            if key is not None:
                volume.tally(key)
            return
        rec = self.builder.build(seg, self.capture.iface_name(ifkey))
        if rec is None:
            return
        if volume.allow_record(seg.ts):
            self.out.add(rec)
        else:
            client = rec["dst"] if rec["qr"] == "response" else rec["src"]
            volume.tally((client, rec["qname"].lower(), rec["qtype"], rec.get("rcode")))

    def count_handle(self, packet, ts, ifkey, pkttype):
        self.seen += 1
        self.handle(packet, ts, ifkey, pkttype)

    def run_block(self, ring, pos, num):
        """The hot loop over one ring block (most packets are plain UDP over IPv4/IPv6).

        Per packet it reads the few header bytes it needs straight from the packet,
        suppresses duplicates on raw bytes, and rejects non-matching questions by their
        wire-form name (a label-boundary suffix check on the lower-cased bytes) before
        anything is decoded into text. Only messages that may be reported go on to
        ``report`` (dnswire parsing, the record). While aggregating without an rcode
        filter, messages are tallied by raw key and turned into text once per second.
        Everything else takes ``handle``, the general path.
        """
        unpack_pkt = PKT_HDR.unpack_from
        unpack_ports = _PORTS.unpack_from
        seen_key = self.deduper.seen_key
        handle = self.handle
        report = self.report
        volume = self.volume
        flt = self.filter
        wire_domains = flt.wire_domains if flt.domains else None
        text_only = flt.domains and wire_domains is None
        qtypes = flt.qtypes
        raw_tally_ok = not flt.rcodes and not text_only
        tallies = volume.raw
        max_keys = volume.max_keys
        ungrouped = 0
        ntop = socket.inet_ntop
        matched = 0
        # Duplicates need two interfaces (loopback's second copy is dropped below): until a
        # second one carries DNS, as in a pod's namespace, the duplicate table is skipped.
        only_if = self._only_ifindex
        for _ in range(num):
            nxt, sec, nsec, snap, mac, ifindex, pkttype = unpack_pkt(ring, pos)
            start = pos + mac
            pkt = ring[start:start + snap]
            pos += nxt
            ts = sec + nsec * 1e-9
            if ifindex != only_if:
                if ifindex == 1:
                    if pkttype == 4:
                        continue  # loopback: each packet is seen outgoing and incoming
                elif only_if == 0:
                    only_if = self._only_ifindex = ifindex
                elif only_if > 0:
                    only_if = self._only_ifindex = -1
            v = pkt[0]
            try:
                if v == 0x45:
                    if pkt[9] != 17 or pkt[6] & 0x3F or pkt[7]:
                        handle(pkt, ts, ifindex, pkttype)
                        continue
                    a, alen, u, end, fam = 12, 4, 20, (pkt[2] << 8) | pkt[3], _AF_INET
                elif v >> 4 == 6 and pkt[6] == 17:
                    a, alen, u, end, fam = 8, 16, 40, 40 + ((pkt[4] << 8) | pkt[5]), _AF_INET6
                else:
                    handle(pkt, ts, ifindex, pkttype)
                    continue
                sport, dport = unpack_ports(pkt, u)
                p = pkt[u + 8:end]
                if len(p) < 17:
                    continue
                is_response = p[2] & 0x80
                if is_response:
                    client = pkt[a + alen:a + alen + alen]
                    if only_if < 0 and seen_key(hash((client, dport, p)), ts):
                        continue
                else:
                    client = pkt[a:a + alen]
                    if only_if < 0 and seen_key(hash((client, sport, p)), ts):
                        continue
                i = 12
                n = p[12]
                while n:
                    if n > 63:
                        break
                    i += n + 1
                    n = p[i]
                if n or p[5] != 1 or p[4]:
                    # Compressed/odd question or not exactly one: let dnswire decide.
                    report(DnsSegment(ts, "udp", ntop(fam, pkt[a:a + alen]), sport,
                                      ntop(fam, pkt[a + alen:a + alen + alen]), dport, p, pkt),
                           ifindex)
                    continue
                qtype = (p[i + 1] << 8) | p[i + 2]
                name = None
                if wire_domains is not None:
                    name = p[12:i + 1].lower()
                    j = 0
                    n = name[0]
                    while name[j:] not in wire_domains:
                        if not n:
                            break
                        j += n + 1
                        n = name[j]
                    if not n and name[j:] not in wire_domains:
                        continue
                if qtypes and qtype not in qtypes:
                    continue
                if volume.aggregating and raw_tally_ok:
                    if name is None:
                        name = p[12:i + 1].lower()
                    tkey = (client, name, qtype, (p[3] & 0x0F) if is_response else -1)
                    c = tallies.get(tkey)
                    if c is not None:
                        tallies[tkey] = c + 1
                    elif len(tallies) < max_keys:
                        tallies[tkey] = 1
                    else:
                        ungrouped += 1  # the interval's table is full: counted, not kept
                    matched += 1
                    continue
            except (IndexError, struct.error):
                continue  # truncated headers: not a DNS message
            report(DnsSegment(ts, "udp", ntop(fam, pkt[a:a + alen]), sport,
                              ntop(fam, pkt[a + alen:a + alen + alen]), dport, p, pkt), ifindex)
        self.seen += num
        self.builder.matched += matched
        volume.ungrouped += ungrouped

    def text_key(self, key):
        """A raw tally key (address bytes, lower-case wire name, type, rcode or -1) as the
        text key of an ``agg`` group. The name goes through dnswire like any other name;
        names and addresses repeat from second to second, so both are cached (bounded)."""
        client, wire, qtype, rcode = key
        names = self._wire_names
        qname = names.get(wire)
        if qname is None:
            try:
                qname = dnswire.parse_question(_QUESTION_HEADER + wire + b"\x00\x01\x00\x01")[2]
            except dnswire.DnsParseError:
                qname = "?"
            if len(names) >= TEXT_CACHE_MAX:
                names.clear()
            names[wire] = qname
        addrs = self._addr_texts
        addr = addrs.get(client)
        if addr is None:
            addr = socket.inet_ntop(_AF_INET if len(client) == 4 else _AF_INET6, client)
            if len(addrs) >= TEXT_CACHE_MAX:
                addrs.clear()
            addrs[client] = addr
        return (addr, qname, self.builder.type_name(qtype),
                None if rcode < 0 else self.builder.rcode_name(rcode))

    # -- lifecycle ----------------------------------------------------------------------
    def hello(self, interfaces):
        extra = {
            "capture": self.capture.mode,
            "duration": self.opts.duration,
            "max_rate": self.opts.max_rate,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "python": "%d.%d.%d" % sys.version_info[:3],
        }
        if self.opts.pcap:
            extra["linktype"] = LINKTYPE_RAW
        return protocol.hello(0, kubectl_dnstrace.__version__, interfaces,
                              self.filter.describe(), **extra)

    def stats_record(self):
        _packets, drops = self.capture.stats()
        return protocol.stats(
            0, self.seen, self.builder.matched, self.out.emitted, drops,
            duplicates=self.deduper.duplicates, malformed=self.builder.malformed,
            mode="aggregate" if self.volume.aggregating else "records",
            tcp_flows=len(self.decoder.flows),
            shed_records=self.volume.shed_records,
            shed_packets=self.shedder.shed_packets,
            ungrouped=self.volume.ungrouped_total + self.volume.ungrouped,
            peak_rss_kb=peak_rss_kb(),
        )

    def _on_signal(self, signum, frame):
        if self.stop_reason is None:
            self.stop_reason = "signal"

    def run(self):
        opts = self.opts
        out = self.out
        start = time.monotonic()
        deadline = start + opts.duration
        # Backstop: even a write blocked on a full stdout cannot outlive the deadline.
        signal.alarm(min(int(opts.duration) + 10, 0x7FFFFFFF))
        try:
            self.capture.open()
        except CaptureError as exc:
            out.emit(self.hello([]))
            out.emit(protocol.error(0, str(exc)))
            out.emit(protocol.bye(0, "error"))
            return EXIT_CAPTURE
        interfaces = [opts.interface] if opts.interface else \
            [name for _i, name in socket.if_nameindex()]
        out.emit(self.hello(interfaces))
        if opts.interface is None and len([i for i in interfaces if i != "lo"]) > 1:
            self._only_ifindex = -1  # a bridge, several veths: duplicates from the start

        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        poller = select.poll()
        poller.register(self.capture.fileno(), select.POLLIN | select.POLLERR)
        poller.register(wake_r, select.POLLIN)
        capture = self.capture
        count_handle = self.count_handle
        run_block = self.run_block

        def read():
            return capture.read(count_handle, run_block, BLOCKS_PER_TURN)

        volume = self.volume
        shedder = self.shedder
        next_stats = start + opts.stats_interval
        stop_file = opts.stop_file
        next_stop_check = start
        reason = "deadline"
        mode_aggregating = False
        try:
            while True:
                # One turn: at most one ring block, then the clock, signals and stop file,
                # so they take effect at any packet rate (docs/performance.md, "Flood").
                got = read()
                out.flush()
                now = time.monotonic()
                if self.stop_reason is not None:
                    reason = self.stop_reason
                    break
                if now >= deadline:
                    break
                if stop_file and now >= next_stop_check:
                    next_stop_check = now + 0.2
                    if os.path.exists(stop_file):
                        reason = "stop-file"
                        break
                if got:
                    shedder.check(time.time())
                if volume.aggregating and volume.due(time.time()):
                    rec = volume.take(time.time(), self.text_key, shedder.caught_up)
                    if rec is not None:
                        out.add(rec)
                if volume.aggregating != mode_aggregating:
                    # Say so at once: a stats record with the new mode.
                    mode_aggregating = volume.aggregating
                    next_stats = now
                if now >= next_stats:
                    next_stats = now + opts.stats_interval
                    self.capture.forget_names()
                    if self._only_ifindex >= 0 and opts.interface is None and \
                            len(socket.if_nameindex()) > 2:
                        self._only_ifindex = -1  # a second interface appeared: dedupe from now
                    out.add(self.stats_record())
                    out.flush()
                if got:
                    continue  # the next block may be ready: no need to ask the kernel
                timeout = min(deadline, next_stats) - now
                if stop_file:
                    timeout = min(timeout, 0.2)
                if volume.aggregating:
                    timeout = min(timeout, 0.25)
                poller.poll(max(0, int(timeout * 1000)) + 1)
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    os.read(wake_r, 512)
            # What the kernel already holds is part of the capture, as far as a short
            # while allows; the rest is counted as shed, never left to delay the end.
            end_read = time.monotonic() + FINAL_READ_SECONDS
            for _ in range(max(1, capture.ring_blocks)):
                if not read() or time.monotonic() >= end_read:
                    break
                out.flush()
            shedder.leave()
            if volume.aggregating:
                rec = volume.take(time.time(), self.text_key)
                if rec is not None:
                    out.add(rec)
            out.add(self.stats_record())
            out.add(protocol.bye(0, reason, elapsed=round(time.monotonic() - start, 3)))
            out.flush()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            self.capture.close()
        return EXIT_OK


def main(argv=None):
    out = Output(1)
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
        dns_filter = DnsFilter(read_domains(opts), opts.qtype, opts.rcode)
    except SystemExit as exc:  # --help
        return exc.code or 0
    except (UsageError, ValueError) as exc:
        out.emit(protocol.hello(0, kubectl_dnstrace.__version__, [], {}))
        out.emit(protocol.error(0, "bad agent arguments: %s" % exc))
        out.emit(protocol.bye(0, "error"))
        return EXIT_USAGE
    agent = Agent(opts, out, dns_filter)
    try:
        return agent.run()
    except Exception as exc:  # an agent bug must still end the stream properly
        out.emit(protocol.error(0, "capture agent failed: %s: %s" % (type(exc).__name__, exc)))
        with contextlib.suppress(Exception):  # what it counted, drops and sheds, if it can
            out.emit(agent.stats_record())
        out.emit(protocol.bye(0, "error"))
        return EXIT_FAILED
