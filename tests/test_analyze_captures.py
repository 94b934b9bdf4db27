"""``analyze`` on captures made elsewhere, with other tools and settings: a small snap length,
NFLOG and PKTAP link types, link-type fields with flag bits, loopback captures, damaged
files. Each is checked against tshark's reading of the same file where tshark reads it.

The lab tests make the captures with the real tools: tcpdump on ``nflog:N`` behind an
iptables NFLOG rule, on ``eth0`` cut afterwards with ``editcap -s``, and on ``lo`` of a
namespace whose resolver is its own address.
"""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubectl_dnstrace import dnswire
from kubectl_dnstrace.agent.events import EventBuilder
from kubectl_dnstrace.agent.filters import DnsFilter
from kubectl_dnstrace.agent.frames import FrameDecoder
from kubectl_dnstrace.fileevents import FileEventBuilder
from kubectl_dnstrace.linklayers import nflog_payload, pktap_packet
from tests.conftest import IN_CI
from tests.lab import dnslab
from tests.test_analyze import _exchange, _ours, analyze

PLUGIN = Path(sys.executable).with_name("kubectl-dnstrace")
T0 = 1_764_165_600.0


def require_tshark() -> None:
    """Skip (or, under CI=true, fail) a test that compares with tshark where it is missing."""
    if shutil.which("tshark") is None:
        if IN_CI:
            pytest.fail("CI=true but tshark is not installed")
        pytest.skip("tshark is not installed (Debian: apt-get install tshark)")


def _tshark(path: Path, *extra: str) -> list[tuple[str, str, str, str]]:
    """(source, qname, qtype, rcode) of every frame tshark decodes as DNS."""
    res = subprocess.run(
        ["tshark", "-r", str(path), *extra, "-Y", "dns", "-T", "fields", "-e", "ip.src",
         "-e", "ipv6.src", "-e", "dns.qry.name", "-e", "dns.qry.type", "-e", "dns.flags.rcode"],
        capture_output=True, text=True, check=True)
    rows = []
    for line in res.stdout.splitlines():
        v4, v6, name, qtype, rcode = line.split("\t")
        rows.append((v4 or v6, name, qtype, rcode))
    return rows


def _events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def _pcap(path: Path, linktype: int, frames: list[tuple[float, bytes]],
          order: str = "<") -> None:
    """A classic pcap with any link-type field, byte order and frames."""
    data = struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)
    for ts, frame in frames:
        sec = int(ts)
        data += struct.pack(order + "IIII", sec, round((ts - sec) * 1e6), len(frame),
                            len(frame)) + frame
    path.write_bytes(data)


def _ethernet_frames(packets) -> list[tuple[float, bytes]]:
    return [(float(p.time), bytes(p)) for p in packets]


def _exchanges() -> list:
    return [p for k, (name, rcode) in enumerate([("evil.example.com", 0),
                                                 ("nope.example.com", 3),
                                                 ("www.example.com", 0)])
            for p in _exchange(f"10.244.0.{5 + k}", name, 7 + k, T0 + k, 40000 + k, rcode=rcode,
                               answer=None if rcode else "203.0.113.66")]


# ---- link-type fields and wrapping link types, built by hand, read by tshark too ----------


def _pktap(frame: bytes, dlt: int = 1, order: str = "<", length: int = 156) -> bytes:
    """A macOS PKTAP header (``struct pktap_header``, ``pth_length`` 156 as Apple's libpcap
    writes it today; 108 is the first version's) in front of ``frame``."""
    head = struct.pack(order + "III", length, 1, dlt) + b"en0".ljust(24, b"\0")
    head += struct.pack(order + "IIIIi", 0, 2, 14, 0, 321) + b"dig".ljust(20, b"\0")
    head += struct.pack(order + "IHHi", 0, 6, 0, 321) + b"dig".ljust(20, b"\0")
    return head.ljust(length, b"\0") + frame


def test_pktap_and_a_flagged_link_type_field_read_as_tshark_reads_them(tmp_path, capsys):
    """Apple's PKTAP (258, and 149 as Apple's own libpcap numbers it), with Ethernet or raw
    IP inside, and a pcap whose link-type field carries flag bits above its low 16 (an FCS
    length of 3: 0x30000001 is Ethernet): every message, as tshark shows it."""
    require_tshark()
    packets = _exchanges()
    frames = _ethernet_frames(packets)
    files = {
        "pktap.pcap": (258, [(ts, _pktap(f)) for ts, f in frames]),
        "pktap-raw.pcap": (258, [(ts, _pktap(f[14:], dlt=12, length=108)) for ts, f in frames]),
        "pktap-149.pcap": (149, [(ts, _pktap(f)) for ts, f in frames]),
        "flagged.pcap": (0x30000001, frames),
        "flagged-be.pcap": (0x04000001, frames),
    }
    want = None
    for name, (linktype, content) in files.items():
        path = tmp_path / name
        _pcap(path, linktype, content, ">" if name.endswith("-be.pcap") else "<")
        code, out, err = analyze(capsys, "--offline", "-o", "ndjson", str(path))
        assert code == 0, (name, err)
        ours = _ours(_events(out))
        assert ours == _tshark(path), name
        want = want or ours
        assert ours == want and len(ours) == 6, name
        assert f"{path}: 6 packets, 6 DNS messages, 6 matched\n" in err


def test_pktap_and_nflog_headers_that_hold_no_packet_give_none():
    frame = bytes(range(60))
    assert pktap_packet(_pktap(frame)) == (1, frame)
    assert pktap_packet(_pktap(frame, order=">")) == (1, frame)
    assert pktap_packet(_pktap(frame)[:100]) is None  # shorter than any header
    assert pktap_packet(struct.pack("<I", 4000) + _pktap(frame)[4:]) is None  # past the end
    other = bytearray(_pktap(frame))
    other[4] = 2  # pth_type_next: not a packet
    assert pktap_packet(bytes(other)) is None
    tlv = struct.pack("<HH", 8, 1) + b"\x08\x00\x00\x00"  # NFULA_PACKET_HDR only
    assert nflog_payload(b"\x02\x00\x00\x05" + tlv) is None
    payload = bytes(range(40))
    for order in "<>":
        record = (b"\x02\x00\x00\x05" + struct.pack(order + "HH", 8, 1) + b"\x08\x00\x00\x00"
                  + struct.pack(order + "HH", 4 + len(payload), 9) + payload)
        assert nflog_payload(record) == payload, order
        assert nflog_payload(record[:30]) == payload[:14], order  # cut by the snap length
    assert nflog_payload(b"\x02\x00\x00\x05" + struct.pack("<HH", 2, 9) + payload) is None


def test_frames_of_link_types_it_does_not_read_are_named_and_alone_are_bad_input(
        tmp_path, capsys):
    """Frames of a link type analyze does not read are counted by type in the summary; a file
    of nothing else has nothing to report and is a bad capture file (exit 10), not an empty
    one (exit 1)."""
    frames = _ethernet_frames(_exchanges())
    radiotap = tmp_path / "wifi.pcap"
    _pcap(radiotap, 127, frames)
    code, out, err = analyze(capsys, "--offline", str(radiotap))
    assert code == 10 and out == ""
    assert (f"{radiotap}: 6 packets, 0 DNS messages, 0 matched, 6 frames of link types "
            "analyze does not read (skipped: 6 IEEE802_11_RADIOTAP (127))") in err
    assert (f"error: {radiotap}: no frame could be read as IP: 6 are of link type "
            "IEEE802_11_RADIOTAP (127), which analyze does not read\n") in err
    # NFLOG records without a packet (a rule with --nflog-size 0): read, but no IP in them.
    headers_only = tmp_path / "nflog-headers.pcap"
    _pcap(headers_only, 239, [(ts, b"\x02\x00\x00\x05" + struct.pack("<HH", 8, 1) + bytes(4))
                              for ts, _ in frames])
    code, out, err = analyze(capsys, "--offline", str(headers_only))
    assert code == 10 and out == ""
    assert "6 NFLOG or PKTAP frames without a packet (skipped)" in err
    assert "no frame could be read as IP: 6 are NFLOG or PKTAP records without a packet" in err

    # In pcapng each interface has its own link type: one of them is read.
    def block(kind: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        return struct.pack("<II", kind, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    data = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    data += block(1, struct.pack("<HHI", 1, 0, 65535))  # interface 0: Ethernet
    data += block(1, struct.pack("<HHI", 147, 0, 65535))  # interface 1: USER0
    for k, (ts, frame) in enumerate(frames):
        usec = round(ts * 1e6)
        data += block(6, struct.pack("<IIIII", 0 if k < 2 else 1, usec >> 32, usec & 0xFFFFFFFF,
                                     len(frame), len(frame)) + frame)
    mixed = tmp_path / "mixed.pcapng"
    mixed.write_bytes(data)
    code, out, err = analyze(capsys, "--offline", "-o", "ndjson", str(mixed))
    assert code == 0, err
    assert len(out.splitlines()) == 2
    assert "4 frames of link types analyze does not read (skipped: 4 USER0 (147))" in err

    empty = tmp_path / "empty.pcap"
    _pcap(empty, 1, [])
    assert analyze(capsys, "--offline", str(empty))[0] == 1  # a capture of nothing


# ---- a damaged file --------------------------------------------------------------------------


# Starts the command from a small fresh interpreter and writes its peak RSS (KiB, from
# wait4: it and the processes it waited for, the decoding child too) to the file named
# first. Not from this process: Linux carries a parent's high-water mark across fork and
# exec into the child's, so a child of a big pytest would start at pytest's size.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run_measured(argv: list, tmp: Path) -> tuple[int, str, str, float, int]:
    """Run ``argv``; its exit code, output, error output, seconds, and peak RSS in KiB."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(tmp / "peak"),
                           *(str(a) for a in argv)], capture_output=True, text=True,
                          timeout=300)
    seconds = time.monotonic() - start
    return (proc.returncode, proc.stdout, proc.stderr, seconds,
            int((tmp / "peak").read_text()))


def test_a_damaged_pcap_reports_what_came_before_and_where_in_bounded_memory(tmp_path):
    """One bogus record length 5 packets in, then 150 MB: the first packets are reported,
    the run ends saying "damaged at byte N" (exit 10, after the results), and neither
    memory nor time grows with what follows (it used to be buffered whole, copied again
    per megabyte read: quadratic time, memory of the file's size)."""
    packets = _exchanges()
    frames = _ethernet_frames(packets)
    path = tmp_path / "damaged.pcap"
    _pcap(path, 1, frames[:5])
    good = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(struct.pack("<IIII", int(T0) + 9, 0, 0xFFFFFFF0, 0xFFFFFFF0))
        chunk = bytes(range(256)) * 4096
        for _ in range(150):
            fh.write(chunk)
    code, out, err, seconds, peak_kib = _run_measured(
        [PLUGIN, "analyze", "--offline", "-o", "ndjson", path], tmp_path)
    assert code == 10, err
    assert [(e["qr"], e["qname"]) for e in _events(out)] == [
        ("query", "evil.example.com"), ("response", "evil.example.com"),
        ("query", "nope.example.com"), ("response", "nope.example.com"),
        ("query", "www.example.com")]
    assert f"{path}: 5 packets, 5 DNS messages, 5 matched; damaged at byte {good}: " in err
    assert (f"error: {path} is damaged at byte {good}: a record claims 4294967280 captured "
            "bytes, more than any record holds (262144)\n") in err
    assert "the packets before the damage were read" in err
    # Generous: the interpreter and its libraries take some 60-100 MB; the file is 150 MB.
    assert peak_kib < 150 * 1024, peak_kib
    assert seconds < 120  # (a hang guard, not a timing measure)


def test_a_damaged_gzip_pcap_and_one_on_standard_input_say_the_same(tmp_path):
    import gzip

    frames = _ethernet_frames(_exchanges())
    path = tmp_path / "damaged.pcap"
    _pcap(path, 1, frames[:2])
    good = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(struct.pack("<IIII", int(T0) + 9, 0, 300000, 300000) + bytes(1000))
    (tmp_path / "damaged.pcap.gz").write_bytes(gzip.compress(path.read_bytes()))
    for name, stdin in (("damaged.pcap.gz", None), ("-", path.read_bytes())):
        proc = subprocess.run([PLUGIN, "analyze", "--offline", "-o", "ndjson",
                               name if name == "-" else tmp_path / name],
                              input=stdin, capture_output=True)
        assert proc.returncode == 10, proc.stderr
        assert len(proc.stdout.splitlines()) == 2
        assert f"is damaged at byte {good}: a record claims 300000 captured".encode() \
            in proc.stderr


# ---- cut messages, one by one --------------------------------------------------------------


def _segments(frames: list[tuple[float, bytes]]):
    decoder = FrameDecoder()
    return [seg for ts, frame in frames for seg in decoder.decode_link(1, frame, ts)]


def test_a_response_cut_after_its_question_is_reported_and_one_cut_inside_it_is_counted():
    """What the snap length leaves is all the builder gets: a response with its question
    whole is reported (rcode, the answers that fit, truncated); one cut inside its question
    is counted as cut, not malformed; a whole packet whose message is broken stays
    malformed (a whole packet cannot be "cut"). The agent's own builder, live, takes whole
    packets: a cut one is malformed there."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    name = "many.example.com"
    answers = [DNSRR(rrname=name, rdata=f"203.0.113.{k}") for k in range(8)]
    response = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.96.0.10", dst="10.244.0.5") / UDP(sport=53, dport=4000)
                     / DNS(id=9, qr=1, rd=1, ra=1, rcode=0, qd=DNSQR(qname=name), an=answers))
    whole = dnswire.parse_message(response[42:])
    assert len(whole.answers) == 8
    question_end = 42 + 12 + len(name) + 2 + 4
    for snap in range(question_end, len(response)):
        builder = FileEventBuilder(DnsFilter())
        f = builder.fields(_segments([(T0, response[:snap])])[0])
        fitting = (snap - question_end) // (len(name) + 2 + 14)  # uncompressed owners
        assert f is not None, snap
        assert (f[1], f[8], f[9], f[10], f[14]) == ("response", name, "A", "NOERROR", True)
        assert f[11] == [a.rdata for a in answers[:fitting]], snap
        assert (builder.truncated, builder.cut, builder.malformed) == (1, 0, 0)
    for snap in range(42 + 12, question_end):
        builder = FileEventBuilder(DnsFilter())
        segs = _segments([(T0, response[:snap])])
        assert all(builder.fields(s) is None for s in segs)
        assert (builder.cut, builder.malformed) == (len(segs), 0), snap
    live = EventBuilder(DnsFilter())
    assert live.fields(_segments([(T0, response[:question_end + 20])])[0]) is None
    assert live.malformed == 1
    # The same bytes, but the IP and UDP lengths say that is all there is: malformed.
    broken = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.96.0.10", dst="10.244.0.5") / UDP(sport=53, dport=4000)
                   / response[42:question_end + 20])
    builder = FileEventBuilder(DnsFilter())
    assert builder.fields(_segments([(T0, broken)])[0]) is None
    assert (builder.truncated, builder.malformed) == (0, 1)


def test_a_partial_parse_of_a_whole_message_is_the_whole_parse():
    from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRROPT

    msg = bytes(DNS(id=3, qr=1, qd=DNSQR(qname="a.example"), an=[DNSRR(
        rrname="a.example", rdata="192.0.2.1")], ar=[DNSRROPT(rclass=1232)]))
    full = dnswire.parse_message(msg)
    assert dnswire.parse_message(msg, partial=True) == full and not full.cut
    cut = dnswire.parse_message(msg[:-3], partial=True)
    assert cut.cut and cut.answers == full.answers and cut.edns is None
    with pytest.raises(dnswire.DnsParseError):
        dnswire.parse_message(msg[:-3])
    with pytest.raises(dnswire.DnsParseError):
        dnswire.parse_message(msg[:20], partial=True)  # inside the question


# ---- captures from the lab, made with the real tools -----------------------------------------

ZONE_MANY = [f"10.9.0.{k}" for k in range(1, 13)]
LAB_QUERIES = [("www.example.com", "A"), ("nope.example.com", "A"), ("txt.example.com", "TXT"),
               ("many.example.com", "A"), ("api.lab.test", "A"), ("missing.lab.test", "TXT")]


def _start_tcpdump(ns, path: Path, *args: str):
    proc = ns.popen(["tcpdump", "-n", "-U", "-w", str(path), *args])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size >= 24:
            return proc
        time.sleep(0.05)
    raise AssertionError(f"tcpdump did not start: {path.name}")


def _stop(proc) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def lab_captures(tmp_path_factory):
    """One lab run captured three ways at once: NFLOG (an iptables rule in the client's
    namespace copying its DNS packets to ``nflog:5``), the DNS namespace's eth0 (to be cut
    with editcap), and its loopback while it queries its own address over and over."""
    from tests.conftest import require_lab
    from tests.lab.netns import Lab

    require_lab()
    tmp = tmp_path_factory.mktemp("foreign")
    zone = dnslab.Zone.default()
    zone.a["many.example.com"] = ZONE_MANY
    with Lab() as lab:
        d = dnslab.dns_lab(lab, tmp, zone=zone)
        client, _ip4, _ip6 = d.add_client()
        for tool in ("iptables", "ip6tables"):  # inside the client's namespace only
            client.run(tool, "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "NFLOG",
                       "--nflog-group", "5")
            client.run(tool, "-A", "INPUT", "-p", "udp", "--sport", "53", "-j", "NFLOG",
                       "--nflog-group", "5")
        nflog = _start_tcpdump(client, tmp / "nflog.pcap", "-i", "nflog:5")
        eth = _start_tcpdump(d.dns, tmp / "eth.pcap", "-i", "eth0", "port", "53")
        lo = _start_tcpdump(d.dns, tmp / "lo.pcap", "-i", "lo", "port", "53")
        time.sleep(0.5)  # tcpdump on nflog binds after it wrote the file header
        for server in (d.server.ip4, d.server.ip6):
            for name, qtype in LAB_QUERIES:
                assert dnslab.dig(client, server, name, qtype).returncode == 0
        for _ in range(3):  # the resolver's own host asking it: loopback, one address
            for name, qtype in LAB_QUERIES[:2]:
                assert dnslab.dig(d.dns, d.server.ip4, name, qtype).returncode == 0
        # The kernel hands NFLOG packets to tcpdump in batches, flushed each second.
        time.sleep(1.5)
        for proc in (nflog, eth, lo):
            _stop(proc)
    return tmp


@pytest.mark.lab
def test_an_nflog_capture_agrees_with_tshark(lab_captures, capsys):
    path = lab_captures / "nflog.pcap"
    assert (path.read_bytes()[20:22], len(_tshark(path))) == (b"\xef\x00", 4 * len(LAB_QUERIES))
    code, out, err = analyze(capsys, "--offline", "-o", "ndjson", str(path))
    assert code == 0, err
    events = _events(out)
    assert _ours(events) == _tshark(path)
    assert all(e["latency_ms"] is not None for e in events if e["qr"] == "response")
    many = [e for e in events if e["qname"] == "many.example.com" and e["qr"] == "response"]
    assert [sorted(e["answers"]) for e in many] == [sorted(ZONE_MANY)] * 2


@pytest.mark.lab
@pytest.mark.parametrize("snap", [80, 98, 150, 200])
def test_a_capture_cut_by_editcap_s_agrees_with_tshark_but_for_cut_questions(
        lab_captures, capsys, tmp_path, snap):
    """``editcap -s N``: every message tshark shows with its question is reported with the
    same source, name, type and rcode; the ones whose question was cut are counted, and
    those are exactly the ones tshark shows without a name."""
    path = tmp_path / f"s{snap}.pcap"
    subprocess.run(["editcap", "-s", str(snap), str(lab_captures / "eth.pcap"), str(path)],
                   check=True, capture_output=True)
    theirs = _tshark(path)
    assert len(theirs) == 4 * len(LAB_QUERIES)
    code, out, err = analyze(capsys, "--offline", "-o", "ndjson", str(path))
    assert code == 0, err
    events = _events(out)
    named = [row for row in theirs if row[1]]
    assert _ours(events) == named
    cut = len(theirs) - len(named)
    truncated = sum(1 for e in events if e.get("truncated"))
    assert truncated > 0 or snap == 200
    assert ((f", {truncated} cut short by the capture's snap length (reported as far as they "
             "go)") in err) == bool(truncated)
    assert (f", {cut} cut short inside their question (skipped)" in err) == bool(cut)
    # The answers that fit are a prefix of the whole response's, as tshark lists them.
    whole = {(e["id"], e["src"]): e["answers"] for e in _events(
        analyze(capsys, "--offline", "-o", "ndjson", str(lab_captures / "eth.pcap"))[1])
        if e["qr"] == "response"}
    for e in events:
        if e["qr"] == "response":
            full = whole[(e["id"], e["src"])]
            if e.get("truncated"):
                assert e["answers"] == full[:len(e["answers"])]
            else:
                assert e["answers"] == full


@pytest.mark.lab
def test_a_loopback_capture_links_nothing_and_stdin_keeps_time_order(lab_captures, capsys):
    """The resolver's host asks its own address: client and resolver share it, so none of
    the client's repeated queries is an upstream lookup; read from a file or piped in, the
    lines come in capture time order."""
    path = lab_captures / "lo.pcap"
    code, out, err = analyze(capsys, "--offline", "-o", "ndjson", str(path))
    assert code == 0, err
    events = _events(out)
    assert _ours(events) == _tshark(path) and len(events) == 12
    assert {e["src"] for e in events} == {dnslab.host_addrs(dnslab.DNS_HOST)[0]}
    assert not any("forward" in e for e in events)
    code, out, err = analyze(capsys, "--offline", str(path))
    assert "upstream" not in out and "forwarded" not in out and "cause not seen" not in out
    piped = subprocess.run([PLUGIN, "analyze", "--offline", "-o", "ndjson", "-"],
                           input=path.read_bytes(), capture_output=True, check=True)
    times = [e["ts"] for e in _events(piped.stdout.decode())]
    assert times == sorted(times) and len(times) == 12


def test_a_forward_without_a_cause_keeps_its_place_on_standard_input(tmp_path):
    """A resolver's lookup whose cause is outside the capture: live, its line waits a little
    for a cause from another capture's stream; from a file or standard input (one capture,
    in time order) nothing can come later, so it is written in its place, not after the
    lines that follow it."""
    from tests.test_analyze import DNS4, _write_pcap

    packets = [*_exchange("10.244.0.5", "a.example.com", 1, T0, 40001),  # DNS4 is a resolver
               *_exchange(DNS4, "b.example.com", 2, T0 + 1, 5301, server="198.51.100.53"),
               *_exchange("10.244.0.6", "c.example.com", 3, T0 + 1.5, 40002)]
    _write_pcap(tmp_path / "c.pcap", packets)
    for source, stdin in ((tmp_path / "c.pcap", None), ("-", (tmp_path / "c.pcap").read_bytes())):
        proc = subprocess.run([PLUGIN, "analyze", "--offline", "-o", "ndjson", source],
                              input=stdin, capture_output=True, check=True)
        events = _events(proc.stdout.decode())
        assert [e["qname"] for e in events] == [p.qd[0].qname.decode().rstrip(".")
                                                for p in packets], source
        assert [bool(e.get("forward")) for e in events] == [False, False, True, False, False,
                                                            False], source


def test_a_damaged_pcapng_block_ends_the_reading_there_in_bounded_memory(tmp_path):
    """A pcapng block whose length field claims 4 GB, then 100 MB: scapy would read all of
    it for that block and call it the end; the block is refused where it starts."""
    frames = _ethernet_frames(_exchanges())

    def block(kind: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        return struct.pack("<II", kind, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    data = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    data += block(1, struct.pack("<HHI", 1, 0, 65535))
    for ts, frame in frames[:3]:
        usec = round(ts * 1e6)
        data += block(6, struct.pack("<IIIII", 0, usec >> 32, usec & 0xFFFFFFFF, len(frame),
                                     len(frame)) + frame)
    good = len(data)
    path = tmp_path / "damaged.pcapng"
    with open(path, "wb") as fh:
        fh.write(data + struct.pack("<II", 6, 0xFFFFFFF0))
        chunk = bytes(range(256)) * 4096
        for _ in range(100):
            fh.write(chunk)
    code, out, err, _seconds, peak_kib = _run_measured(
        [PLUGIN, "analyze", "--offline", "-o", "ndjson", path], tmp_path)
    assert code == 10, err
    assert [(e["qr"], e["qname"]) for e in _events(out)] == [
        ("query", "evil.example.com"), ("response", "evil.example.com"),
        ("query", "nope.example.com")]
    assert (f"error: {path} is damaged at byte {good}: a block claims 4294967280 bytes, more "
            "than any block holds (16777216)\n") in err
    assert peak_kib < 100 * 1024, peak_kib
