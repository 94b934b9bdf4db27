"""A capture file as event records: the agent's decoder run over a pcap, in a child
process when that is faster.

``analyze`` is two stages in a row. Decoding — records out of the file, frames, duplicate
suppression, question/response matching, exactly the code the agent runs live — and the
back half (attribution, linking, rendering). Each costs about half of the time per packet,
and each must see the packets in order, so on a machine with a second CPU the decoding runs
in a forked child that hands batches of records to the parent over a pipe (``marshal``:
well under a microsecond a record, both ends together) while the parent runs the back half:
the stages overlap instead of adding up. Nothing changes in what is computed: the same
records, in the same order, reach the same pipeline.

The child is used only on Linux (fork without exec is unsafe on macOS once system
frameworks are loaded), only when this process runs a single thread (a forked copy of a
lock held by another thread would never be released), and only for files big enough to
pay for the fork. Everywhere else the same generator runs in this process.

Over the pipe go ``marshal``'d messages: a list is a batch of records, an int the
decoder's position in the file before it (for the progress line; a batch, even an empty
one, goes at least every PROGRESS_PACKETS packets), a dict the final counters, a tuple an
error to raise.

A record is the tuple of ``EventBuilder.fields`` — ``(ts, qr, proto, src, sport, dst,
dport, id, qname, qtype, rcode, answers, latency_ms, tc, truncated)`` — with the IP packet
appended when evidence output wants it.

Frames of the link types that wrap another (NFLOG, PKTAP: ``linklayers``) are unwrapped
before the decoder sees them; frames of link types nothing here reads are counted by link
type, for the summary to name.
"""

from __future__ import annotations

import contextlib
import fcntl
import marshal
import os
import signal
import struct
import sys
import threading
from collections.abc import Iterator
from itertools import chain
from typing import Any

from kubectl_dnstrace import dnswire, errors, gcpolicy, linklayers
from kubectl_dnstrace.agent.dedupe import Deduper
from kubectl_dnstrace.agent.events import EventBuilder
from kubectl_dnstrace.agent.filters import DnsFilter
from kubectl_dnstrace.agent.frames import FrameDecoder
from kubectl_dnstrace.errors import DnstraceError
from kubectl_dnstrace.pcapio import STDIN, ReadPosition, read_records

BATCH = 512  # records per hand-over: a few milliseconds of work, a few tens of KiB
PROGRESS_PACKETS = 1 << 16  # a batch goes (even a short or empty one) at least this often
CHILD_MIN_BYTES = 4 << 20  # below this (about 40,000 packets) the fork does not pay
PIPE_BYTES = 1 << 20
_LENGTH = struct.Struct("<I")


class FileEventBuilder(EventBuilder):
    """The agent's ``EventBuilder`` for packets a capture file's snap length (``tcpdump
    -s``, ``editcap -s``) may have cut: a response whose header and question were kept is
    reported as far as it goes (``truncated`` in its record); a message cut before that is
    counted as ``cut``, not as malformed. Whether a packet was cut, its IP header tells
    (``captured_short``). The agent takes whole packets and has no use for this (and the
    code shipped into pods stays small)."""

    def __init__(self, dns_filter: DnsFilter, **kw: Any) -> None:
        super().__init__(dns_filter, **kw)
        self.cut = 0  # cut inside their header or question: skipped
        self.truncated = 0  # responses cut after their question: reported

    def _unparsed(self, seg: Any) -> None:
        if captured_short(seg):
            self.cut += 1
        else:
            self.malformed += 1

    def _cut_response(self, seg: Any) -> dnswire.Message | None:
        if not captured_short(seg):
            return None
        try:
            msg = dnswire.parse_message(seg.payload, authority=False, partial=True)
        except dnswire.DnsParseError:
            return None
        self.truncated += 1
        return msg


def captured_short(seg: Any) -> bool:
    """True when ``seg`` is a UDP message the capture holds less of than was sent: its IP
    header counts more octets than the captured packet has. Asked only of messages that
    do not parse: nothing on the way of the rest."""
    pkt = seg.packet
    if seg.proto != "udp" or not pkt or len(pkt) < 20:
        return False
    version = pkt[0] >> 4
    if version == 4:
        return ((pkt[2] << 8) | pkt[3]) > len(pkt)
    if version == 6 and len(pkt) >= 40:
        plen = (pkt[4] << 8) | pkt[5]
        return plen != 0 and 40 + plen > len(pkt)
    return False


class FileEvents:
    """``batches()`` yields lists of records of one file; ``stats`` holds its counters
    once the last batch was taken."""

    def __init__(self, path: str, dns_filter: DnsFilter, with_packets: bool = False,
                 may_fork: bool = True) -> None:
        self.path = path
        self.may_fork = may_fork
        self.filter = dns_filter
        self.with_packets = with_packets
        self.stats: dict[str, Any] = {}
        self.in_child = False
        self.position = ReadPosition()  # how far the decoding has read, for a progress line

    def batches(self) -> Iterator[list[tuple]]:
        if self.may_fork and use_child(self.path):
            self.in_child = True
            return self._from_child()
        return self._decode()

    # ---- the decoding stage -------------------------------------------------------------

    def _decode(self) -> Iterator[list[tuple]]:
        decoder = FrameDecoder()
        deduper = Deduper()
        builder = FileEventBuilder(self.filter, with_raw=False)
        decode, seen, fields = decoder.decode_link, deduper.seen, builder.fields
        records = read_records(self.path, self.position)
        first = next(records, None)  # the header is read: ``one_interface`` is known
        # A packet can be in the file twice only when several interfaces were captured (as
        # the agent dedupes only once a second interface carries DNS); on one interface, a
        # repeat with the same bytes is the client asking again, and it counts.
        dedupe = not self.position.one_interface
        with_packets = self.with_packets
        # A pipe may be a capture still running (tcpdump -U -w - | …): each record goes on
        # at once rather than waiting for 511 more.
        size = 1 if self.path == STDIN else BATCH
        packets = messages = 0
        skipped: dict[int, int] = {}  # link type -> frames of it not read (none of them IP)
        empty = 0  # NFLOG / PKTAP frames that hold no packet
        direct, unwrap, wrapping = linklayers.DIRECT, linklayers.unwrap, linklayers.WRAPPING
        batch: list[tuple] = []
        for linktype, frame, ts in chain((first,), records) if first is not None else ():
            packets += 1
            if not packets % PROGRESS_PACKETS:  # a filter may match nothing for a long while
                yield batch
                batch = []
            if linktype not in direct:
                inner = unwrap(linktype, frame)
                if inner is None:
                    if linktype in wrapping:
                        empty += 1
                    else:
                        skipped[linktype] = skipped.get(linktype, 0) + 1
                    continue
                linktype, frame = inner
            for seg in decode(linktype, frame, ts):
                messages += 1
                if dedupe and seen(seg):
                    continue
                f = fields(seg)
                if f is None:
                    continue
                batch.append((*f, seg.packet) if with_packets else f)
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch
        position = self.position
        self.stats = {"path": self.path, "packets": packets + position.bad_times,
                      "dns_messages": messages,
                      "matched": builder.matched, "malformed": builder.malformed,
                      "cut": builder.cut, "truncated": builder.truncated,
                      "duplicates": deduper.duplicates,
                      "unsupported": sum(skipped.values()), "unsupported_types": skipped,
                      "no_packet": empty,
                      "bad_times": position.bad_times,
                      "damaged_at": position.damaged_at, "damage": position.damage}

    # ---- the same, in a child process -----------------------------------------------------

    def _from_child(self) -> Iterator[list[tuple]]:
        rfd, wfd = os.pipe()
        # A roomy pipe lets either stage run ahead for a while instead of waking the
        # other every batch (the default 64 KiB holds about one batch).
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(rfd)
            self._child_main(wfd)
        os.close(wfd)
        done = False
        try:
            with os.fdopen(rfd, "rb", buffering=1 << 16) as pipe:
                while True:
                    head = pipe.read(4)
                    if len(head) < 4:
                        break
                    size = _LENGTH.unpack(head)[0]
                    body = pipe.read(size)
                    if len(body) < size:
                        break  # the child died mid-message
                    message = marshal.loads(body)
                    if type(message) is list:
                        yield message
                    elif type(message) is int:
                        self.position.offset = message
                    elif type(message) is dict:
                        self.stats = message
                        done = True
                        break
                    else:
                        done = True
                        kind, text, hint = message
                        raise getattr(errors, kind, DnstraceError)(text, hint)
        finally:
            if not done:
                _kill(pid)
            _reap(pid)
        if not done:
            raise DnstraceError(f"{self.path}: the decoding process ended before the file did",
                                "run again; if it recurs, report it with the file's first "
                                "packets (editcap -r FILE head.pcap 1-1000)")

    def _child_main(self, wfd: int) -> None:
        code = 0
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the pair quietly
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            # Not the parent's stdout: whoever reads the output sees its end when the
            # parent is done, whatever becomes of the child.
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.close(null)
            gcpolicy.for_streams()
            with os.fdopen(wfd, "wb", buffering=1 << 16) as out:
                try:
                    for batch in self._decode():
                        _send(out, self.position.offset)
                        _send(out, batch)
                    _send(out, self.stats)
                except DnstraceError as exc:
                    _send(out, (type(exc).__name__, exc.message, exc.hint))
        except BaseException:  # the parent reports the early end
            code = 1
        finally:
            os._exit(code)


def use_child(path: str) -> bool:
    """Decode ``path`` in a child process? (see the module's docstring for why these)."""
    if sys.platform != "linux" or threading.active_count() != 1 or path == STDIN:
        return False  # (the child's standard input is /dev/null: a pipe is read here)
    try:
        if len(os.sched_getaffinity(0)) < 2:
            return False
        return os.path.getsize(path) >= CHILD_MIN_BYTES
    except OSError:
        return False


def _send(out: Any, message: Any) -> None:
    data = marshal.dumps(message)
    out.write(_LENGTH.pack(len(data)))
    out.write(data)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
