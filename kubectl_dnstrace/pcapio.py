"""Capture files in and out: raw records from pcap/pcapng, evidence files written 0600.

Reading uses scapy's raw readers (``RawPcapNgReader``, which falls back to classic pcap):
records come back as bytes with their link type and timestamp, and no per-packet
dissection happens (scapy's dissection costs about 240 µs a packet; a raw record about
2 µs). An uncompressed classic pcap file — what ``tcpdump -w`` writes, the common case —
is read by a few lines of stdlib instead: whole chunks of the file, records cut out with
``struct.unpack_from``, about 0.4 µs a record, with scapy's results (a record cut short at
the end of the file still yields the bytes it has). pcapng and gzip-compressed files go
through scapy. Frames are decoded by the agent's own ``FrameDecoder``: one decoder, one
place.

Writing: a ``.pcapng`` name gives pcapng with a per-packet comment naming the pod and one
interface per capture point; any other name gives classic pcap. Both carry raw IP
packets (LINKTYPE_RAW) exactly as captured. Captured DNS is sensitive, so the file is
created with mode 0600 before a byte is written, and its SHA-256 is reported for the chain
of custody.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import heapq
import io
import logging
import os
import struct
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from kubectl_dnstrace.agent.frames import LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW
from kubectl_dnstrace.errors import BadInput, UsageError
from kubectl_dnstrace.protocol import TS_MAX

READ_SIZE = 262144  # a whole record, even a GRO super-segment or a jumbo frame
# The longest record a classic pcap may hold: libpcap's and Wireshark's limit for the link
# types DNS travels on. A longer one is a damaged length field, not a packet.
MAX_CAPLEN = 262144
CHUNK = 1 << 20  # bytes read at a time by the classic pcap reader
# Classic pcap magic numbers: (byte order, nanosecond timestamps).
_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", False), b"\xa1\xb2\xc3\xd4": (">", False),
               b"\x4d\x3c\xb2\xa1": ("<", True), b"\xa1\xb2\x3c\x4d": (">", True)}


class _Packet(bytes):
    """Raw bytes with the attributes scapy's writers read for pcapng options."""

    comments: list[bytes] | None = None
    sniffed_on: str | None = None


STDIN = "-"  # the path that reads a capture piped in: tcpdump -w - | kubectl dnstrace analyze -


class ReadPosition:
    """What a reader knows of its file as it goes: how far into it (bytes on disk,
    compressed or not; for a progress line; updated per chunk read for classic pcap, every
    POSITION_EVERY records otherwise) and, once the header is read (before the first
    record), whether it holds one interface (see ``_one_interface``); and how many records
    it skipped for a time no clock can show (``bad_times``: pcapng, whose 64-bit timestamps
    in a unit the file chooses can reach past the year 10000)."""

    __slots__ = ("bad_times", "damage", "damaged_at", "offset", "one_interface")

    def __init__(self) -> None:
        self.offset = 0
        self.one_interface = False
        self.bad_times = 0
        # Where the file stopped making sense (a byte offset, None: it did not) and why:
        # the reader ends there, keeping the records before it (see ``read_records``).
        self.damaged_at: int | None = None
        self.damage = ""


POSITION_EVERY = 4096  # records between position updates of the scapy-read formats


def read_records(path: str, position: ReadPosition | None = None,
                 ) -> Iterator[tuple[int, bytes, float]]:
    """Yield ``(linktype, frame, ts)`` for every packet record of a pcap or pcapng file, or
    of the capture on standard input when ``path`` is STDIN (``tcpdump -w -``).

    Streams: memory stays flat whatever the file's size. A file that is not a capture
    raises ``BadInput``; a file cut short ends the iteration at the last whole record. A
    damaged file (a record length no record can have, a pcapng block that does not parse)
    ends the iteration there too, after the records before it, and says where in
    ``position.damaged_at`` and why in ``position.damage``: what was read is still worth
    reporting, and the caller decides how loudly to say the rest was not.
    ``position``, when given, follows the reader through the file.

    The classic pcap link-type field is masked to its low 16 bits as libpcap does: the
    upper ones carry the FCS length and other flags (0x30000001 is Ethernet).
    """
    position = position or ReadPosition()
    stream = None
    if path == STDIN:
        stream = sys.stdin.buffer
        head = _read_full(stream, 24)
        if head[:2] == b"\x1f\x8b":  # gzip: scapy would seek; a pipe cannot
            stream = gzip.GzipFile(fileobj=io.BufferedReader(_Prepended(head, stream)))
            head = _read_full(stream, 24)
    else:
        try:
            with open(path, "rb") as fh:
                head = fh.read(24)
                if head[:2] == b"\x1f\x8b":  # gzip: a classic pcap inside is read below
                    fh.seek(0)
                    with gzip.GzipFile(fileobj=fh) as unzipped:
                        head = _read_full(unzipped, 24)
        except (OSError, EOFError):
            head = b""  # scapy names the error below
    fmt = _PCAP_MAGIC.get(head[:4])
    if fmt is not None and len(head) == 24:
        position.one_interface = _one_interface(head, fmt[0])
        if stream is not None:
            yield from _read_pcap(stream, head, *fmt, position)
            return
        with open(path, "rb", buffering=0) as fh:
            if fh.read(2) == b"\x1f\x8b":
                # Progress counts the bytes on disk, which is how far a gzip file is read.
                fh.seek(0)
                with gzip.GzipFile(fileobj=fh) as unzipped:
                    unzipped.read(24)
                    yield from _read_pcap(unzipped, head, *fmt, position, fh.tell)
                return
            fh.seek(24)
            yield from _read_pcap(fh, head, *fmt, position)
        return
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapNgReader

    _quiet_scapy()
    disk = None  # the file on disk (a path): where progress and damage are measured
    try:
        if stream is None:
            disk = open(path, "rb")  # noqa: SIM115 (closed with the reader, below)
            source: BinaryIO = disk
            if disk.read(2) == b"\x1f\x8b":
                disk.seek(0)
                source = gzip.GzipFile(fileobj=disk)  # type: ignore[assignment]
            else:
                disk.seek(0)
        else:
            source = io.BufferedReader(_Prepended(head, stream))
        bounded = _Bounded(source)
        reader = RawPcapNgReader(bounded)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}",
                       "give the path of a pcap or pcapng file") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc}", "give a pcap or pcapng file") from None
    except (Scapy_Exception, EOFError):
        if disk is not None:
            disk.close()
        raise BadInput(
            f"{_name(path)} is not a pcap or pcapng capture file",
            "write captures with tcpdump -w FILE (or tshark/dumpcap); gzip-compressed "
            "files are read too",
        ) from None

    def tell() -> int:
        try:
            return disk.tell() if disk is not None else bounded.consumed
        except (OSError, ValueError):
            return position.offset

    def refused() -> bool:
        """A block longer than any block is damage (scapy would read the rest of the file
        into memory for it, then call that the end)."""
        if bounded.refused_at is None:
            return False
        position.damaged_at = bounded.refused_at
        position.damage = (f"a block claims {bounded.refused} bytes, more than any block "
                           f"holds ({MAX_BLOCK})")
        return True

    count = 0
    try:
        if hasattr(reader, "interfaces"):  # pcapng: link type per interface
            while True:
                try:
                    frame, meta = reader._read_packet(size=READ_SIZE)
                except EOFError:
                    refused()
                    return
                ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
                count += 1
                if count % POSITION_EVERY == 0:
                    position.offset = tell()
                if ts < TS_MAX:
                    yield meta.linktype, frame, ts
                else:
                    position.bad_times += 1
        else:
            linktype = reader.linktype & 0xFFFF
            scale = 1e-9 if getattr(reader, "nano", False) else 1e-6
            read = reader._read_packet
            while True:
                try:
                    frame, meta = read(size=READ_SIZE)
                except EOFError:
                    refused()
                    return
                count += 1
                if count % POSITION_EVERY == 0:
                    position.offset = tell()
                yield linktype, frame, meta.sec + meta.usec * scale
    except Scapy_Exception as exc:
        if not refused():
            position.damaged_at = tell()
            position.damage = str(exc) or "a block that does not parse"
    finally:
        position.offset = tell()
        with contextlib.suppress(Exception):
            reader.close()
        if disk is not None:
            disk.close()


MAX_BLOCK = 16 << 20  # Wireshark's limit for a pcapng block, a packet's included


class _Bounded:
    """The file scapy's pcapng reader reads, refusing any read longer than MAX_BLOCK (it
    reads a block's body in one call, of the length the block claims): the read comes back
    empty, which scapy takes for the end, and ``refused_at`` says where the block began.
    Counts what it handed over, for a position on a pipe."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.name = getattr(f, "name", "stdin")
        self.consumed = 0
        self.refused: int | None = None
        self.refused_at: int | None = None

    def read(self, size: int = -1) -> bytes:
        if size is not None and size > MAX_BLOCK:
            if self.refused_at is None:
                # The block's type and length are read; its body is asked for: the length
                # less the 12 bytes of type, length and trailing length.
                self.refused, self.refused_at = size + 12, self.consumed - 8
            return b""
        data = self.f.read(size)
        self.consumed += len(data)
        return data

    def close(self) -> None:
        self.f.close()


def _one_interface(head: bytes, order: str) -> bool:
    """True when every packet of a classic pcap with this header was captured on one
    interface, so no packet can be in it twice (``tcpdump -i eth0``): any link type but
    Linux cooked capture, which is what ``tcpdump -i any`` writes (a packet crossing a
    bridge shows up on each port). pcapng may hold several interfaces: never true."""
    linktype = struct.unpack(order + "I", head[20:24])[0] & 0xFFFF
    return linktype not in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2)


def _name(path: str) -> str:
    return "standard input" if path == STDIN else path


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """``size`` bytes (fewer only at the end): a pipe may hand them over in pieces."""
    data = b""
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    return data


class _Prepended(io.RawIOBase):
    """``head`` (already read, to tell the format) and then the rest of ``stream``: what
    scapy's reader needs to read a piped capture from its first byte."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def _read_pcap(fh: BinaryIO, head: bytes, order: str, nano: bool,
               position: ReadPosition, tell: Callable[[], int] | None = None,
               ) -> Iterator[tuple[int, bytes, float]]:
    """Classic pcap without scapy, from ``fh`` just after the 24-byte ``head``: the same
    records, timestamps and truncation rules as ``RawPcapReader`` (a whole header with part
    of its data yields that part; a partial header ends the file), about five times cheaper
    per record. Works on a pipe: nothing is sought. ``tell``, when given, is where the
    progress is (the compressed file under a gzip one); else the bytes read.

    A record header claiming more than MAX_CAPLEN bytes is damage (tcpdump and tshark stop
    there too): the reading ends at it, with ``position`` saying where. Without that
    check one bogus length would make this hold the rest of the file in memory, copying
    it again with every chunk read. With it, the buffer never holds more than a chunk and
    a record."""
    linktype = struct.unpack(order + "I", head[20:24])[0] & 0xFFFF
    scale = 1e-9 if nano else 1e-6
    header = struct.Struct(order + "IIII").unpack_from
    buf = b""
    off = 0
    base = 24  # the file offset of buf[0] (in the uncompressed stream)
    read_bytes = 24
    position.offset = 24
    # A pipe's buffered reader would wait for a whole CHUNK; read1 hands over what came.
    read = getattr(fh, "read1", fh.read)
    while True:
        chunk = read(CHUNK)
        if not chunk:
            break
        read_bytes += len(chunk)
        position.offset = tell() if tell is not None else read_bytes
        if off < len(buf):
            base += off
            buf = buf[off:] + chunk
        else:
            base += len(buf)
            buf = chunk
        off = 0
        end = len(buf)
        while off + 16 <= end:
            sec, usec, caplen, _wirelen = header(buf, off)
            if caplen > MAX_CAPLEN:
                _damaged(position, base + off, caplen)
                return
            stop = off + 16 + caplen
            if stop > end:
                break
            yield linktype, buf[off + 16:stop], sec + usec * scale
            off = stop
    if off + 16 <= len(buf):  # the last record was cut short: what it has
        sec, usec, caplen, _wirelen = header(buf, off)
        if caplen > MAX_CAPLEN:
            _damaged(position, base + off, caplen)
            return
        yield linktype, buf[off + 16:off + 16 + READ_SIZE], sec + usec * scale


def _damaged(position: ReadPosition, at: int, caplen: int) -> None:
    position.damaged_at = at
    position.damage = (f"a record claims {caplen} captured bytes, more than any record "
                       f"holds ({MAX_CAPLEN})")


def _quiet_scapy() -> None:
    """scapy logs a warning per truncated record; the summary counts them instead."""
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)


class EvidenceWriter:
    """Packets of matched events into a pcap or pcapng file created 0600, in time order.

    A live trace's events come from several captures, each over its own log stream with its
    own lag: in arrival order the file's packets went back in time by up to 6 ms across
    capture points on a real cluster (tools that read it warn, and deltas go negative).
    Packets wait in a heap until the newest event is ``REORDER`` seconds past them (or the
    heap holds ``HELD_MAX``, a bound on memory), then go out oldest first.
    """

    REORDER = 5.0  # seconds (event time) a packet waits for earlier ones
    HELD_MAX = 50_000

    def __init__(self, path: str) -> None:
        from scapy.utils import RawPcapNgWriter, RawPcapWriter

        self.path = path
        self.pcapng = path.lower().endswith(".pcapng")
        self.count = 0
        self.skipped = 0  # events that came without their packet
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
        except OSError as exc:
            raise UsageError(f"--pcap: cannot write {path}: {exc.strerror}",
                             "give a writable path") from None
        if self.pcapng:
            os.close(fd)  # scapy's pcapng writer opens by name; the file is already 0600
            self._writer = RawPcapNgWriter(path)
        else:
            self._writer = RawPcapWriter(os.fdopen(fd, "wb"), linktype=LINKTYPE_RAW)
        self._writer.linktype = LINKTYPE_RAW
        self._writer.write_header(None)
        self._writer.header_present = True
        self._held: list[tuple[float, int, bytes, str, str]] = []
        self._newest = float("-inf")

    def write(self, packet: bytes | None, ts: float, comment: str = "", where: str = "") -> None:
        if not packet:
            self.skipped += 1
            return
        self.count += 1
        heapq.heappush(self._held, (ts, self.count, packet, comment, where))
        self._newest = max(self._newest, ts)
        held = self._held
        while held and (held[0][0] < self._newest - self.REORDER or len(held) > self.HELD_MAX):
            self._write(*heapq.heappop(held))

    def _write(self, ts: float, _n: int, packet: bytes, comment: str, where: str) -> None:
        pkt = _Packet(packet)
        if self.pcapng:
            pkt.comments = [comment.encode("utf-8")] if comment else None
            pkt.sniffed_on = where or None
        self._writer.write_packet(pkt, sec=ts)

    def close(self) -> str:
        """Write what is held, close the file and return its SHA-256 (hex)."""
        while self._held:
            self._write(*heapq.heappop(self._held))
        self._writer.close()
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
