"""``kubectl dnstrace analyze``: capture files through the same back half as a live trace.

The lab tests make real captures — tcpdump in a DNS namespace while dig asks dnsmasq — and
check every packet against tshark: source, name, type and rcode.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubectl_dnstrace import dnswire, fileevents
from kubectl_dnstrace.attribution import Attributor
from kubectl_dnstrace.cli import main
from kubectl_dnstrace.errors import UsageError
from tests.lab import dnslab
from tests.test_inventory import pod

DNS4, DNS6 = dnslab.host_addrs(dnslab.DNS_HOST)


def analyze(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["analyze", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- files without a lab ----------------------------------------------------------------


def _write_pcap(path: Path, packets) -> None:
    from scapy.utils import wrpcap

    wrpcap(str(path), packets)


def _exchange(src: str, name: str, qid: int, ts: float, sport: int = 40000,
              rcode: int = 0, answer: str | None = "203.0.113.66", server: str = DNS4,
              latency: float = 0.002):
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    query = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=server) / UDP(sport=sport, dport=53) / DNS(
        id=qid, rd=1, qd=DNSQR(qname=name))
    response = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=server, dst=src) / UDP(sport=53, dport=sport) / DNS(
        id=qid, qr=1, rcode=rcode, qd=DNSQR(qname=name),
        an=DNSRR(rrname=name, rdata=answer) if answer else None)
    query.time, response.time = ts, ts + latency
    return [query, response]


@pytest.mark.parametrize("content", [b"", b"this is not a capture file\n", b"\xd4\xc3\xb2"])
def test_a_file_that_is_not_a_capture_is_bad_input(tmp_path, capsys, content):
    path = tmp_path / "notes.pcap"
    path.write_bytes(content)
    code, out, err = analyze(capsys, "--offline", str(path))
    assert code == 10
    assert out == ""
    assert err.startswith(f"error: {path} is not a pcap or pcapng capture file\n")


def test_a_missing_file_is_bad_input(tmp_path, capsys):
    code, _, err = analyze(capsys, "--offline", str(tmp_path / "nope.pcap"))
    assert code == 10
    assert f"cannot read {tmp_path / 'nope.pcap'}: no such file" in err


def test_a_directory_is_bad_input_and_says_so(tmp_path, capsys):
    code, _, err = analyze(capsys, "--offline", str(tmp_path))
    assert code == 10
    assert f"cannot read {tmp_path}: it is a directory\n" in err


def test_a_malformed_dns_packet_is_counted_and_skipped(tmp_path, capsys):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    # A header announcing one question whose name runs past the end of the packet.
    broken = bytes.fromhex("123401000001000000000000") + b"\x05ab"
    bad = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.244.0.9", dst=DNS4) / UDP(sport=1234, dport=53) / broken
    bad.time = 1_764_165_601.0
    path = tmp_path / "mixed.pcap"
    _write_pcap(path, [bad, *_exchange("10.244.0.5", "evil.example.com", 7, 1_764_165_600.0)])
    code, out, err = analyze(capsys, "--offline", "-o", "ndjson", str(path))
    assert code == 0
    assert [json.loads(line)["qname"] for line in out.splitlines()] == ["evil.example.com"] * 2
    assert f"{path}: 3 packets, 3 DNS messages, 2 matched, 1 malformed (skipped)" in err


def _pcapng_in_seconds(path: Path, packets: list[tuple[int, bytes]]) -> None:
    """A pcapng file whose interface counts time in whole seconds (if_tsresol 0), with
    64-bit timestamps as given: what a damaged or hostile file can hold."""
    def block(kind: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        return struct.pack("<II", kind, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    data = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    data += block(1, struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HHB3x", 9, 1, 0)
                  + struct.pack("<HH", 0, 0))
    for ts, frame in packets:
        data += block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame),
                                     len(frame)) + frame)
    path.write_bytes(data)


def test_a_packet_timed_past_the_year_10000_is_counted_and_skipped(tmp_path, capsys):
    """pcapng timestamps are 64 bits in a unit the file picks: a damaged or hostile file
    can date a packet where no clock goes (here 2**64 - 1 seconds). Such a packet is skipped
    and said, the rest is read; it used to end the run with an internal error where the
    table's times are drawn."""
    good = [(1_764_165_600, bytes(p)) for p in _exchange("10.244.0.5", "evil.example.com", 7, 0)]
    far = [(2**64 - 1, bytes(p)) for p in _exchange("10.244.0.9", "far.example.com", 8, 0)]
    path = tmp_path / "far.pcapng"
    _pcapng_in_seconds(path, [*good, *far, (1 << 40, bytes(far[0][1]))])
    for fmt in ("table", "wide", "json", "ndjson"):
        code, out, err = analyze(capsys, "--offline", "-o", fmt, str(path))
        assert (code, "internal error" in err) == (0, False), err
        assert (f"{path}: 5 packets, 2 DNS messages, 2 matched, 3 with a timestamp past the "
                "year 10000 (skipped)") in err
        assert "evil.example.com" in out and "far.example.com" not in out


def test_a_truncated_file_yields_the_records_before_the_cut(tmp_path, capsys):
    path = tmp_path / "cut.pcap"
    _write_pcap(path, _exchange("10.244.0.5", "evil.example.com", 7, 1_764_165_600.0))
    path.write_bytes(path.read_bytes()[:-10])
    code, out, _ = analyze(capsys, "--offline", "-o", "ndjson", str(path))
    assert code == 0
    # The last record's first bytes are there: its response, question whole, is reported
    # as far as it goes (its answer was in the 10 bytes cut), as tshark shows it.
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["qr"], e.get("answers"), e.get("truncated")) for e in events] == [
        ("query", None, None), ("response", [], True)]


def test_filters_exit_status_and_pods_file_attribution(tmp_path, capsys):
    path = tmp_path / "node7.pcap"
    _write_pcap(path, [*_exchange("10.244.0.5", "evil.example.com", 1, 1_764_165_600.0),
                       *_exchange("10.244.0.6", "good.example.com", 2, 1_764_165_601.0, 40001),
                       *_exchange("10.244.0.6", "gone.example.com", 3, 1_764_165_602.0, 40002,
                                  rcode=3, answer=None)])
    pods = tmp_path / "pods.json"
    pods.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", start=1_764_165_000.0,
            owner=("ReplicaSet", "web-5d8f7c9b6"), labels={"pod-template-hash": "5d8f7c9b6"})]}))
    code, out, _ = analyze(capsys, "--offline", "--pods", str(pods), "--domain",
                           "EVIL.example.com.", "-o", "ndjson", str(path))
    assert code == 0
    clients = [json.loads(line)["client"] for line in out.splitlines()]
    assert clients == [{"kind": "pod", "namespace": "shop", "name": "web-5d8f7c9b6-x2k4p",
                        "workload": "Deployment/web", "node": "node-a", "candidates": []}] * 2
    code, out, _ = analyze(capsys, "--offline", "--rcode", "nxdomain", "-o", "ndjson", str(path))
    assert [(e["qname"], e["rcode"]) for e in map(json.loads, out.splitlines())] == [
        ("gone.example.com", "NXDOMAIN")]
    code, out, err = analyze(capsys, "--offline", "--domain", "nothing.example", str(path))
    assert (code, out) == (1, "")
    assert err.endswith("No DNS queries matched.\n")
    code, _, err = analyze(capsys, "--offline", "--qtype", "BOGUS", str(path))
    assert code == 2


_MISFIT_ODD = [None, True, 0, -1, 1e308, "", "x", "not-an-ip", [], {}, [1], ["x"], {"a": 1},
               "2026-13-45T99:99:99Z", "10.244.0.0/33"]


def _fields(value, path=()):
    """Every path into a JSON value, for replacing what is there."""
    children = (value.items() if isinstance(value, dict)
                else enumerate(value) if isinstance(value, list) else ())
    for key, child in children:
        yield (*path, key)
        yield from _fields(child, (*path, key))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_pods_file_with_fields_of_other_types_is_named_never_an_internal_error(data):
    """A saved listing may be edited, damaged, or hostile: whatever its fields hold, analyze
    either attributes with it or names the item and the field (exit 2) — never an internal
    error (before the check: 235 of 600 such files ended in one)."""
    import copy

    from tests.test_inventory import node, owner, service

    items = [pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", owner=("ReplicaSet", "web-5d8f7c9b6"),
                 labels={"pod-template-hash": "5d8f7c9b6", "k8s-app": "web"},
                 finished=1_764_165_900.0, phase="Succeeded"),
             node("node-a", "172.18.0.10", "10.244.0.0/24"),
             service("kube-dns", "kube-system", "10.96.0.10"),
             owner("ReplicaSet", "web-5d8f7c9b6", "shop", ("Deployment", "web"))]
    for _ in range(data.draw(st.integers(1, 3))):
        item = data.draw(st.sampled_from(items))
        where = data.draw(st.sampled_from(list(_fields(item))))
        parent = item
        for key in where[:-1]:
            parent = parent[key]
        parent[where[-1]] = copy.deepcopy(data.draw(st.sampled_from(_MISFIT_ODD)))
    tmp = Path(tempfile.mkdtemp(prefix="dnstrace-misfit-"))
    try:
        (tmp / "pods.json").write_text(json.dumps({"kind": "List", "items": items}))
        _write_pcap(tmp / "c.pcap", _exchange("10.244.0.5", "evil.example.com", 7,
                                              1_764_165_600.0))
        fmt = data.draw(st.sampled_from(["table", "wide", "json", "ndjson"]))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["analyze", "--offline", "--pods", str(tmp / "pods.json"), "-o", fmt,
                         str(tmp / "c.pcap")])
        assert code in (0, 2), err.getvalue()
        if code == 2:
            assert re.match(rf"error: --pods: {re.escape(str(tmp))}/pods.json: item \d ", err.getvalue())
            assert "save it again with: kubectl get pods -A -o json > pods.json" in err.getvalue()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_pods_file_item_of_other_types_is_named_with_its_field(tmp_path, capsys):
    pods = tmp_path / "pods.json"
    bad = pod("web-1", "10.244.0.5")
    bad["status"]["podIPs"] = [{"ip": ["10.244.0.5"]}]
    pods.write_text(json.dumps({"kind": "List", "items": [pod("api-0", "10.244.0.6"), bad]}))
    path = tmp_path / "c.pcap"
    _write_pcap(path, _exchange("10.244.0.5", "evil.example.com", 7, 1_764_165_600.0))
    code, out, err = analyze(capsys, "--offline", "--pods", str(pods), str(path))
    assert (code, out) == (2, "")
    assert err == (f"error: --pods: {pods}: item 1 (Pod shop/web-1): status.podIPs[0].ip is "
                   "not a string\nsave it again with: kubectl get pods -A -o json > pods.json\n")


def _inventory_view(inv) -> tuple:
    now = 1_764_165_700.0
    return (sorted((p.key, p.ips, p.node) for p in inv.pods.values()),
            sorted(inv.nodes), dict(inv.services),
            sorted(inv.workload(p) for p in inv.pods.values()),
            [(c.kind, c.name) for c in map(lambda ip: Attributor(inv).attribute(ip, now),
                                           ("10.244.0.5", "10.244.0.1", "10.96.0.10"))])


def test_a_pods_file_is_read_an_item_at_a_time_with_the_same_result(tmp_path):
    """kubectl's List read item by item gives the inventory a whole parse gives — in any
    order of kinds, as one object, as YAML; a damaged file is named; and reading 10,000 pods
    costs about the file's size in memory beyond the inventory, not five times it."""
    import tracemalloc

    import yaml

    from kubectl_dnstrace.analyze import inventory_from_file
    from kubectl_dnstrace.kube.inventory import Inventory
    from tests.test_inventory import node, owner, service

    web = pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", owner=("ReplicaSet", "web-5d8f7c9b6"),
              labels={"pod-template-hash": "5d8f7c9b6"})
    items = [web, node("node-a", "172.18.0.10", "10.244.0.0/24"),
             service("kube-dns", "kube-system", "10.96.0.10"),
             owner("ReplicaSet", "web-5d8f7c9b6", "shop", ("Deployment", "web")),
             pod("api-0", "10.244.0.6", owner=("StatefulSet", "api"))]
    whole = Inventory.from_objects([items[0], items[4]], [items[1]], [items[2]], [items[3]])
    want = _inventory_view(whole)
    assert want[3] == ["Deployment/web", "StatefulSet/api"]
    for name, text in [
            ("list.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": items,
                                      "metadata": {"resourceVersion": ""}}, indent=1)),
            ("list-items-first.json", json.dumps({"items": items[::-1], "kind": "List"})),
            ("list.yaml", yaml.safe_dump({"kind": "List", "items": items}))]:
        (tmp_path / name).write_text(text)
        assert _inventory_view(inventory_from_file(str(tmp_path / name))) == want, name
    (tmp_path / "one.json").write_text(json.dumps(web))
    assert [p.name for p in inventory_from_file(str(tmp_path / "one.json")).pods.values()] == [
        "web-5d8f7c9b6-x2k4p"]
    (tmp_path / "none.json").write_text('{"kind": "List", "items": null}')
    assert inventory_from_file(str(tmp_path / "none.json")).pods == {}
    (tmp_path / "cut.json").write_text(json.dumps({"kind": "List", "items": items})[:-40])
    with pytest.raises(UsageError, match="is not a JSON or YAML Kubernetes object"):
        inventory_from_file(str(tmp_path / "cut.json"))

    big = tmp_path / "big.json"
    big.write_text(json.dumps({"kind": "List", "items": [
        pod(f"web-{i:05d}", f"10.{64 + i // 62500}.{i // 250 % 250}.{i % 250 + 2}")
        for i in range(10_000)]}))
    tracemalloc.start()
    try:
        inv = inventory_from_file(str(big))
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(inv.pods) == 10_000
    # Beyond the inventory kept: the file's text (1x its size) and one item at a time. A
    # whole parse held 5.5x the file's size beyond it.
    assert peak - kept < 2 * big.stat().st_size, (peak, kept, big.stat().st_size)


def _as_cooked(packets):
    """The same packets as ``tcpdump -i any`` writes them (Linux cooked capture)."""
    from scapy.layers.l2 import CookedLinux

    cooked = []
    for pkt in packets:
        c = CookedLinux(proto=0x0800) / pkt.payload
        c.time = pkt.time
        cooked.append(c)
    return cooked


@pytest.mark.parametrize("child", [False, True], ids=["in-process", "decoder-in-child"])
def test_a_repeat_counts_on_one_interface_and_a_copy_is_dropped_from_several(
        tmp_path, capsys, monkeypatch, child):
    """The same bytes twice within 0.2 s: on one interface (``tcpdump -i eth0``) that is
    the client asking again (glibc retries with the same id and port), as tshark shows it;
    in a capture of several interfaces (``-i any``: a packet crossing a bridge is on each
    port; pcapng may hold several interfaces) it is one packet seen twice."""
    monkeypatch.setattr(fileevents, "use_child", lambda path: child)
    query, response = _exchange("10.244.0.5", "evil.example.com", 7, 1_764_165_600.0)
    again = query.copy()
    again.time = query.time + 0.1
    packets = [query, again, response]
    runs = {}
    _write_pcap(tmp_path / "eth0.pcap", packets)
    _write_pcap(tmp_path / "any.pcap", _as_cooked(packets))
    _write_pcapng(tmp_path / "eth0.pcapng", packets)
    for name in ("eth0.pcap", "any.pcap", "eth0.pcapng"):
        code, out, err = analyze(capsys, "--offline", "-o", "ndjson", str(tmp_path / name))
        assert code == 0, err
        runs[name] = ([e["qr"] for e in map(json.loads, out.splitlines())], err)
    assert runs["eth0.pcap"][0] == ["query", "query", "response"]
    assert "duplicates" not in runs["eth0.pcap"][1]
    for name in ("any.pcap", "eth0.pcapng"):
        assert runs[name][0] == ["query", "response"], name
        assert f"{tmp_path / name}: 3 packets, 3 DNS messages, 2 matched, 1 duplicates" in \
            runs[name][1]


@pytest.mark.parametrize("child", [False, True], ids=["in-process", "decoders-in-children"])
def test_several_captures_merge_in_time_order_count_once_and_link_across_files(
        tmp_path, capsys, monkeypatch, child):
    """A client pod's capture and the CoreDNS pod's capture of the same incident, 10 s
    between queries: each query is in both files, CoreDNS's forward only in its own. Read
    one file after the other, the second file's early queries would no longer be within
    the duplicate window of the first's (counted twice), and its lines would come after
    all of the first's; merged by capture time, a query counts once, lines interleave, and
    each forward is linked to the pod that caused it, whichever file is named first."""
    from kubectl_dnstrace import analyze as analyze_module

    monkeypatch.setattr(fileevents, "use_child", lambda path: child)
    monkeypatch.setattr(analyze_module, "FILE_CHILDREN", 1)  # the other file in this process
    upstream = "198.51.100.53"
    client_side, coredns_side = [], []
    for k in range(3):
        t = 1_764_165_600.0 + 10 * k
        exchange = _exchange("10.244.0.5", "evil.example.com", 10 + k, t, 40000 + k,
                             latency=0.004)
        forward = _exchange(DNS4, "evil.example.com", 900 + k, t + 0.001, 5300 + k,
                            server=upstream, answer="203.0.113.66")
        client_side += exchange
        coredns_side += sorted([*exchange, *forward], key=lambda p: p.time)
    _write_pcap(tmp_path / "client.pcap", client_side)
    _write_pcap(tmp_path / "coredns.pcap", _as_cooked(coredns_side))
    pods = tmp_path / "pods.json"
    pods.write_text(json.dumps({"kind": "List", "items": [
        pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", owner=("ReplicaSet", "web-5d8f7c9b6"),
            labels={"pod-template-hash": "5d8f7c9b6"}),
        pod("coredns-7db6d8ff4d-abcde", DNS4, namespace="kube-system",
            labels={"k8s-app": "kube-dns"})]}))
    files = [str(tmp_path / "coredns.pcap"), str(tmp_path / "client.pcap")]
    for order in (files, files[::-1]):
        code, out, err = analyze(capsys, "--offline", "--pods", str(pods), "-o", "json", *order)
        assert code == 0, err
        doc = json.loads(out)
        web = [c for c in doc["summary"] if c["client"]["name"] == "web-5d8f7c9b6-x2k4p"]
        assert [c["count"] for c in web] == [3]
        assert [(lk["qname"], [c["name"] for c in lk["caused_by"]]) for lk in doc["upstream"]] \
            == [("evil.example.com", ["web-5d8f7c9b6-x2k4p"])] * 3
        times = [e["ts"] for e in doc["events"]]
        assert times == sorted(times)
        seen = [(round(e["ts"] - 1_764_165_600.0, 3), e["qr"], Path(e["observed_at"]).name)
                for e in doc["events"] if e["src"] != upstream and e["dst"] != upstream]
        # The same message in both files: in the order the files were named.
        first, second = (Path(f).name for f in order)
        assert seen[:4] == [(0.0, "query", first), (0.0, "query", second),
                            (0.004, "response", first), (0.004, "response", second)]
        assert len(seen) == 12
        assert f"{order[0]}: " in err and f"{order[1]}: " in err


def _write_pcapng(path: Path, packets) -> None:
    from scapy.utils import PcapNgWriter

    with PcapNgWriter(str(path)) as writer:
        for pkt in packets:
            writer.write(pkt)


# ---- real captures from the lab, checked against tshark ---------------------------------

QUERIES = [  # (name, type, tcp)
    ("www.example.com", "A", False),
    ("nope.example.com", "A", False),
    ("www.example.com", "AAAA", False),
    ("txt.example.com", "TXT", False),
    ("alias.example.com", "A", True),
    ("evil.example.com", "MX", False),
    ("x.evil.example.com", "A", True),
    ("api.lab.test", "A", False),
    ("missing.lab.test", "TXT", True),
]


def _tcpdump(ns, path: Path, *extra: str):
    # --immediate-mode: without it libpcap hands packets over in ring blocks, and a
    # SIGINT loses the last block's packets.
    proc = ns.popen(["tcpdump", "-n", "-U", "--immediate-mode", "-w", str(path), *extra,
                     "port", "53"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # tcpdump writes the file header once it listens
        if path.exists() and path.stat().st_size >= 24:
            return proc
        time.sleep(0.05)
    raise AssertionError("tcpdump did not start")


def _stop(proc) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)


def _tshark(path: Path) -> list[tuple[str, str, str, str]]:
    res = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "dns", "-T", "fields", "-e", "ip.src", "-e", "ipv6.src",
         "-e", "dns.qry.name", "-e", "dns.qry.type", "-e", "dns.flags.rcode"],
        capture_output=True, text=True, check=True)
    rows = []
    for line in res.stdout.splitlines():
        v4, v6, name, qtype, rcode = line.split("\t")
        rows.append((v4 or v6, name, qtype, rcode))
    return rows


def _ours(events: list[dict]) -> list[tuple[str, str, str, str]]:
    return [(e["src"], e["qname"], str(dnswire.type_code(e["qtype"])),
             str(dnswire.rcode_code(e["rcode"])) if e.get("rcode") else "") for e in events]


def _strip_ethernet(src: Path, dst: Path) -> None:
    """The same packets as LINKTYPE_RAW (what a tun device or our own --pcap writes)."""
    from scapy.utils import RawPcapReader, RawPcapWriter

    reader = RawPcapReader(str(src))
    writer = RawPcapWriter(str(dst), linktype=101)
    writer.write_header(None)
    for frame, meta in reader:
        writer.write_packet(frame[14:], sec=meta.sec, usec=meta.usec)
    writer.close()
    reader.close()


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """One lab run, captured three ways: Ethernet pcap, Linux cooked SLL2, and pcapng."""
    from tests.conftest import require_lab
    from tests.lab.netns import Lab

    require_lab()
    tmp = tmp_path_factory.mktemp("captures")
    with Lab() as lab:
        d = dnslab.dns_lab(lab, tmp)
        client, ip4, ip6 = d.add_client()
        eth = _tcpdump(d.dns, tmp / "eth.pcap", "-i", "eth0")
        sll = _tcpdump(d.dns, tmp / "sll.pcap", "-i", "any", "-y", "LINUX_SLL")
        sll2 = _tcpdump(d.dns, tmp / "sll2.pcap", "-i", "any", "-y", "LINUX_SLL2")
        # The node's namespace: each packet crosses the bridge, on the client's port and on
        # the DNS pod's port.
        bridge = _tcpdump(d.node, tmp / "bridge-any.pcap", "-i", "any", "-y", "LINUX_SLL2")
        for server in (DNS4, DNS6):
            for name, qtype, tcp in QUERIES:
                assert dnslab.dig(client, server, name, qtype, tcp=tcp).returncode == 0
        time.sleep(0.3)
        _stop(eth)
        _stop(sll)
        _stop(sll2)
        _stop(bridge)
    subprocess.run(["editcap", "-F", "pcapng", str(tmp / "eth.pcap"), str(tmp / "eth.pcapng")],
                   check=True, capture_output=True)
    _strip_ethernet(tmp / "eth.pcap", tmp / "raw.pcap")
    return tmp, (ip4, ip6)


@pytest.mark.lab
@pytest.mark.parametrize("child", [False, True], ids=["in-process", "decoder-in-child"])
@pytest.mark.parametrize("name", ["eth.pcap", "sll.pcap", "sll2.pcap", "raw.pcap", "eth.pcapng"])
def test_analyze_agrees_with_tshark_on_every_packet(captures, capsys, monkeypatch, name, child):
    monkeypatch.setattr(fileevents, "use_child", lambda path: child)
    tmp, _ = captures
    path = tmp / name
    code, out, err = analyze(capsys, "--offline", "-o", "ndjson", str(path))
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    expected = _tshark(path)
    assert len(expected) == 2 * 2 * len(QUERIES)
    assert _ours(events) == expected
    # Query and response matched: every response carries its latency.
    assert all(e["latency_ms"] is not None for e in events if e["qr"] == "response")
    assert {e["client"]["kind"] for e in events} == {"unknown"}


@pytest.mark.lab
def test_a_capture_of_every_bridge_port_counts_each_packet_once(captures, capsys):
    tmp, _ = captures
    path = tmp / "bridge-any.pcap"
    code, out, err = analyze(capsys, "--offline", "-o", "ndjson", str(path))
    assert code == 0, err
    rows = _tshark(path)
    # tshark lists each UDP message twice, one after the other (a TCP segment's second copy
    # is a retransmission to it): once per message is what was asked and answered. The
    # judge is what tshark reads in this same file, not the count the run should have
    # given: on a loaded machine tcpdump itself can miss a segment.
    once = [row for i, row in enumerate(rows) if i == 0 or rows[i - 1] != row]
    assert len(once) >= 2 * len(QUERIES) and len(rows) > len(once)
    assert _ours([json.loads(line) for line in out.splitlines()]) == once
    assert f"{len(once)} matched, " in err and " duplicates" in err


@pytest.mark.lab
def test_the_dns_pod_s_and_the_node_s_captures_together_count_each_query_once(captures, capsys):
    """Two captures of the same run (the DNS namespace's eth0, every port of the node's
    bridge): the summary is the one of either alone, and the events come in time order."""
    tmp, (ip4, ip6) = captures
    summaries = {}
    for files in (["eth.pcap"], ["eth.pcap", "bridge-any.pcap"], ["bridge-any.pcap", "eth.pcap"]):
        code, out, err = analyze(capsys, "--offline", "-o", "json", *(str(tmp / f) for f in files))
        assert code == 0, err
        doc = json.loads(out)
        times = [e["ts"] for e in doc["events"]]
        assert times == sorted(times)
        assert {Path(e["observed_at"]).name for e in doc["events"]} == set(files)
        summaries[tuple(files)] = [(c["client"]["ips"], c["count"], c["qtypes"], c["rcodes"])
                                   for c in doc["summary"]]
    alone = summaries[("eth.pcap",)]
    assert sorted(ip for ips, *_ in alone for ip in ips) == sorted([ip4, ip6])
    assert sum(count for _, count, *_ in alone) == 2 * len(QUERIES)
    assert all(v == alone for v in summaries.values())


@pytest.mark.lab
def test_the_link_types_really_differ(captures):
    from kubectl_dnstrace.pcapio import read_records

    tmp, _ = captures
    names = ("eth.pcap", "sll.pcap", "sll2.pcap", "raw.pcap", "eth.pcapng")
    first = {name: next(iter(read_records(str(tmp / name))))[0] for name in names}
    assert first == {"eth.pcap": 1, "sll.pcap": 113, "sll2.pcap": 276, "raw.pcap": 101,
                     "eth.pcapng": 1}
    assert (tmp / "eth.pcapng").read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"


@pytest.mark.lab
def test_analyze_table_names_the_pod_from_a_pods_file(captures, capsys, tmp_path, monkeypatch):
    tmp, (ip4, ip6) = captures
    monkeypatch.setenv("COLUMNS", "200")  # every text whole (at 120 they are shortened)
    client = pod("client-0", ip4, namespace="lab", owner=("StatefulSet", "client"))
    client["status"]["podIPs"].append({"ip": ip6})
    pods = tmp_path / "pods.json"
    pods.write_text(json.dumps({"kind": "List", "items": [client]}))
    code, out, _ = analyze(capsys, "--offline", "--pods", str(pods), "--domain", "evil.example.com",
                           "--no-lines", str(tmp / "eth.pcap"))
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAMESPACE", "POD", "WORKLOAD", "NODE", "NAMES", "COUNT", "QTYPES",
                              "RCODES", "FIRST", "LAST"]
    assert row.split()[:9] == ["lab", "client-0", "StatefulSet/client", "node-a",
                               "evil.example.com,", "x.evil.example.com", "4", "A:2", "MX:2"]


def test_analyze_attributes_against_the_current_cluster(tmp_path, capsys, monkeypatch):
    """Without --offline: the kubeconfig's cluster (here the simulated API server, through
    the real kubernetes client) names the pod, its Deployment and its node."""
    from tests.lab.cluster import SimCluster
    from tests.test_inventory import owner

    path = tmp_path / "node7.pcap"
    _write_pcap(path, _exchange("10.244.0.5", "evil.example.com", 1, time.time() - 5))
    with SimCluster() as sim:
        sim.write_kubeconfig(tmp_path / "kubeconfig")
        sim.store.ensure_namespace("shop")
        sim.store.create(owner("ReplicaSet", "web-5d8f7c9b6", "shop", ("Deployment", "web")))
        sim.store.create(pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", start=time.time() - 60,
                             owner=("ReplicaSet", "web-5d8f7c9b6")))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        code, out, err = analyze(capsys, "-o", "ndjson", str(path))
    assert code == 0, err
    assert [json.loads(line)["client"]["workload"] for line in out.splitlines()] == \
        ["Deployment/web"] * 2


def test_analyze_under_a_namespace_only_grant_names_that_namespace_s_pods(tmp_path, capsys,
                                                                         monkeypatch):
    from tests.lab.cluster import SimCluster

    path = tmp_path / "node7.pcap"
    now = time.time()
    _write_pcap(path, _exchange("10.244.0.5", "shop.example.com", 1, now - 5)
                + _exchange("10.244.0.9", "batch.example.com", 2, now - 4))
    with SimCluster() as sim:
        sim.write_kubeconfig(tmp_path / "kubeconfig", namespace="shop")
        sim.store.ensure_namespace("shop")
        sim.store.ensure_namespace("batch")
        sim.store.create(pod("web-1", "10.244.0.5", start=now - 60))
        sim.store.create(pod("report-1", "10.244.0.9", namespace="batch", start=now - 60),
                         namespace="batch")
        sim.faults.deny("admin", "list", "pods", namespace="")
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        code, out, err = analyze(capsys, "-o", "ndjson", str(path))
        _, doc, _ = analyze(capsys, "-o", "json", str(path))
    assert json.loads(doc)["meta"]["attribution"] == "namespaces shop"
    assert code == 0, err
    assert ("you may not list pods in every namespace: client attribution covers the pods of "
            "shop only; clients in other namespaces show as unknown addresses") in err
    clients = {json.loads(line)["qname"]: json.loads(line)["client"] for line in out.splitlines()}
    assert clients["shop.example.com"]["name"] == "web-1"
    assert clients["batch.example.com"]["kind"] == "unknown"  # batch's pods were not read


def test_analyze_without_a_cluster_says_how_to_go_offline(tmp_path, capsys, monkeypatch):
    path = tmp_path / "x.pcap"
    _write_pcap(path, _exchange("10.244.0.5", "evil.example.com", 1, 1_764_165_600.0))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    code, out, err = analyze(capsys, str(path))
    assert code == 3
    assert out == ""
    assert err.rstrip().endswith("or attribute without a cluster: --offline (addresses only), or "
                                 "--offline --pods FILE with a saved `kubectl get pods -A -o json`")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("child", [False, True], ids=["in-process", "decoder-in-child"])
def test_a_long_read_shows_how_far_it_got_on_a_terminal_only(tmp_path, monkeypatch, child):
    """A status line (percent of the file, messages, time left) on a terminal's stderr, drawn
    over itself and cleared before the notices; none into a file or under lines that stream
    to the same terminal. Driven by the decoder's position in the file, which also reaches
    the parent from a child, and which keeps moving while a filter matches nothing."""
    from kubectl_dnstrace import analyze as analyze_module
    from kubectl_dnstrace.analyze import run_analyze
    from kubectl_dnstrace.model import AnalyzeRequest, ClusterOptions, Filters, OutputOptions

    monkeypatch.setattr(fileevents, "use_child", lambda path: child)
    monkeypatch.setattr(fileevents, "PROGRESS_PACKETS", 50)
    monkeypatch.setattr(analyze_module.ReadStatus, "FIRST", 0.0)
    monkeypatch.setattr(analyze_module.ReadStatus, "EVERY", 0.0)
    monkeypatch.setattr(analyze_module, "MERGED_BATCH", 1)
    monkeypatch.setattr(fileevents, "BATCH", 1)
    path = tmp_path / "node7.pcap"
    _write_pcap(path, [p for k in range(200) for p in _exchange(
        "10.244.0.5", f"n{k}.example.com", k, 1_764_165_600.0 + k, 40000 + k)])
    size = path.stat().st_size

    def run(fmt: str, live: bool, out, err, domains=()):
        request = AnalyzeRequest(files=[str(path)], filters=Filters(domains=list(domains)),
                                 output=OutputOptions(format=fmt, live=live),
                                 cluster=ClusterOptions(), offline=True)
        return run_analyze(request, out, err)

    out, err = io.StringIO(), _Terminal()
    assert run("json", False, out, err) == 0
    text = err.getvalue()
    shown = re.findall(r"\r\x1b\[2K. reading (\S+): (\d+)%, ([\d,]+) DNS messages", text)
    assert shown and {name for name, _, _ in shown} == {str(path)}
    percents = [int(p) for _, p, _ in shown]
    assert percents == sorted(percents) and 0 < percents[-1] <= 100
    assert f"\r\x1b[2K{path}: 400 packets" in text  # cleared before the notices
    assert json.loads(out.getvalue())["summary"]

    # A filter that matches nothing: the line still moves (empty hand-overs carry it).
    err = _Terminal()
    assert run("json", False, io.StringIO(), err, domains=["nothing.example"]) == 1
    assert len(re.findall(r"reading \S+: (\d+)%, 0 DNS messages", err.getvalue())) >= 3

    # Standard input has no size: messages and time, no percent.
    class Piped:
        buffer = io.BufferedReader(io.BytesIO(path.read_bytes()))

        def isatty(self) -> bool:
            return False

    monkeypatch.setattr(sys, "stdin", Piped())
    err = _Terminal()
    request = AnalyzeRequest(files=["-"], filters=Filters(), output=OutputOptions(format="json"),
                             cluster=ClusterOptions(), offline=True)
    assert run_analyze(request, io.StringIO(), err) == 0
    assert re.search(r"reading stdin: [\d,]+ DNS messages in \d+s", err.getvalue())
    assert "%" not in err.getvalue()

    for fmt, live, out, err in (("json", False, io.StringIO(), io.StringIO()),
                                ("table", True, _Terminal(), _Terminal()),
                                ("ndjson", False, _Terminal(), _Terminal())):
        run(fmt, live, out, err)
        assert "reading" not in err.getvalue() and "\r" not in err.getvalue(), fmt
    assert size > 0


PLUGIN = Path(sys.executable).with_name("kubectl-dnstrace")


def test_a_capture_piped_into_standard_input_is_read_like_a_file(tmp_path):
    """``tcpdump -w - | kubectl dnstrace analyze -``: classic pcap, pcapng and gzip through a
    pipe give the file's own events (seen at "stdin"); a capture still being written is
    streamed, each line out as soon as its packets are in; "-" twice, nothing piped in, or
    not a capture are each said plainly."""
    import gzip

    packets = [p for k in range(6) for p in _exchange(
        "10.244.0.5", f"n{k}.example.com", k, 1_764_165_600.0 + k, 40000 + k)]
    _write_pcap(tmp_path / "c.pcap", packets)
    _write_pcapng(tmp_path / "c.pcapng", packets)
    (tmp_path / "c.pcap.gz").write_bytes(gzip.compress((tmp_path / "c.pcap").read_bytes()))

    def lines(out: str, seen: str) -> list[dict]:
        events = [json.loads(line) for line in out.splitlines()]
        assert {e["observed_at"] for e in events} == {seen}
        return [{k: v for k, v in e.items() if k != "observed_at"} for e in events]

    as_file = subprocess.run([PLUGIN, "analyze", "--offline", "-o", "ndjson", tmp_path / "c.pcap"],
                             capture_output=True, text=True, check=True)
    want = lines(as_file.stdout, str(tmp_path / "c.pcap"))
    assert len(want) == 12
    for name in ("c.pcap", "c.pcapng", "c.pcap.gz"):
        piped = subprocess.run([PLUGIN, "analyze", "--offline", "-o", "ndjson", "-"],
                               input=(tmp_path / name).read_bytes(), capture_output=True,
                               check=True)
        assert lines(piped.stdout.decode(), "stdin") == want, name
        assert b"stdin: 12 packets, 12 DNS messages, 12 matched" in piped.stderr

    # Still being written: the first exchange's lines come before the rest is sent.
    data = (tmp_path / "c.pcap").read_bytes()
    first_two = 24 + sum(16 + len(bytes(p)) for p in packets[:2])
    proc = subprocess.Popen([PLUGIN, "analyze", "--offline", "-o", "ndjson", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(30, proc.kill)  # a line held back would block readline
    watchdog.start()
    try:
        proc.stdin.write(data[:first_two])
        proc.stdin.flush()
        early = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [(e["qr"], e["qname"]) for e in early] == [("query", "n0.example.com"),
                                                          ("response", "n0.example.com")]
        proc.stdin.write(data[first_two:])
        proc.stdin.close()
        rest = proc.stdout.read().decode().splitlines()
        assert proc.wait(timeout=30) == 0 and len(rest) == 10
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    twice = subprocess.run([PLUGIN, "analyze", "--offline", "-", "-"], input=data,
                           capture_output=True, text=False)
    assert twice.returncode == 2 and b"standard input (-) is named twice" in twice.stderr
    junk = subprocess.run([PLUGIN, "analyze", "--offline", "-"], input=b"not a capture\n",
                          capture_output=True)
    assert junk.returncode == 10
    assert b"standard input is not a pcap or pcapng capture file" in junk.stderr


def test_standard_input_from_a_terminal_is_not_waited_on(capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    code, out, err = analyze(capsys, "--offline", "-")
    assert (code, out) == (2, "")
    assert "- reads a capture from standard input, and nothing is piped in" in err
    assert "tcpdump -U -w - port 53 | kubectl dnstrace analyze -" in err
