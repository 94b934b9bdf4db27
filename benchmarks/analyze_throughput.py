"""Offline throughput: ``kubectl-dnstrace analyze`` against tshark on the same capture file.

In the lab (tests/lab): dnsmasq in a DNS namespace answers a local zone while dnsperf in a
client namespace sends queries, and ``tcpdump -w`` in the DNS namespace writes every packet
(queries and responses) to a pcap. Then, in the same run, on the same file:

- ``kubectl-dnstrace analyze --offline -o ndjson FILE > /dev/null``
- ``tshark -r FILE -Y dns -T fields -e ip.src -e dns.qry.name -e dns.qry.type -e dns.flags.rcode``

each at two file sizes (the first quarter of the capture, cut with editcap, and the whole
file), so peak memory can be compared across sizes: a streaming reader stays flat. For each
it reports wall time, CPU time (user + system of the process, from wait4), packets/s by
wall and by CPU, and peak RSS. With ``--repeat N`` the two tools take turns N times per
size: the table keeps each tool's best run, and the ratio of each adjacent pair is reported
too (median and range), which a shared host's slow spells disturb less.

Then decode -> attribute -> aggregate with 10,000 pods in the inventory, on the file path:
the big capture's client address (dnsperf has one) is rewritten, packet by packet, to the
addresses of 10,000 pods (``pipeline_throughput.cluster_objects``: 500 Deployments on 50
nodes), each question asked by the same few pods, a query and its response by the same
pod; the pods, nodes and Services go to a ``--pods`` file. Timed like the above:

- ``kubectl-dnstrace analyze --offline --pods PODS -o table --no-lines FILE``

(decode, attribute, link, aggregate, and the summary table of every pod at the end);
events/s are DNS messages over wall time. Run as root, on a quiet machine:

    .venv/bin/python benchmarks/analyze_throughput.py [--packets 1000000] [--rate 25000] \
        [--pcap FILE] [--repeat 5]

It prints a markdown table (for docs/performance.md) and the raw figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import machine
from tests.lab import dnslab
from tests.lab.netns import Lab

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = str(Path(sys.executable).parent / "kubectl-dnstrace")
NAMES = 2_000


def zone() -> dnslab.Zone:
    a = {f"h{i}.example.com": [f"10.1.{i // 250}.{i % 250 + 1}"] for i in range(NAMES)}
    return dnslab.Zone(local=["example.com"], a=a, txt={"t.example.com": "bench"})


def query_file(path: Path) -> None:
    """Mostly A lookups of known names, some NXDOMAIN, AAAA and TXT: realistic variety."""
    lines = []
    for i in range(NAMES):
        lines.append(f"h{i}.example.com A")
        if i % 10 == 0:
            lines.append(f"missing{i}.example.com A")
        if i % 7 == 0:
            lines.append(f"h{i}.example.com AAAA")
        if i % 50 == 0:
            lines.append("t.example.com TXT")
    path.write_text("\n".join(lines) + "\n")


def capture(tmp: Path, packets: int, rate: int) -> Path:
    """Run dnsperf against dnsmasq while tcpdump writes the DNS namespace's packets."""
    pcap = tmp / "dnsperf.pcap"
    qfile = tmp / "queries.txt"
    query_file(qfile)
    queries = packets // 2 + packets // 50  # a little extra: some answers may be lost
    with Lab() as lab:
        d = dnslab.dns_lab(lab, tmp, zone(), log_queries=False,
                           dnsmasq_extra=["--cache-size=10000", "--dns-forward-max=5000"])
        client, _, _ = d.add_client("perf")
        dump = d.dns.popen(["tcpdump", "-n", "-i", "eth0", "-B", "65536", "-w", str(pcap),
                            "udp", "port", "53"])
        if b"listening on" not in dump.stderr.readline():  # tcpdump says so once it listens
            raise RuntimeError("tcpdump did not start")
        seconds = queries / rate + 5
        perf = client.run("dnsperf", "-s", dnslab.host_addrs(dnslab.DNS_HOST)[0], "-d",
                          str(qfile), "-n", "1000000", "-q", "500", "-Q", str(rate),
                          "-l", f"{queries / rate:.1f}", "-c", "4", timeout=seconds + 60)
        time.sleep(1.0)
        dump.send_signal(signal.SIGINT)
        _, err = dump.communicate(timeout=30)
        drops = re.search(rb"(\d+) packets dropped by kernel", err)
        print(f"dnsperf: {_perf_summary(perf.stdout)}; tcpdump: "
              f"{drops.group(0).decode() if drops else 'no drop count'}", file=sys.stderr)
    return pcap


def _perf_summary(text: str) -> str:
    sent = re.search(r"Queries sent:\s+(\d+)", text)
    done = re.search(r"Queries completed:\s+(\d+)", text)
    qps = re.search(r"Queries per second:\s+([\d.]+)", text)
    return (f"{sent.group(1) if sent else '?'} sent, {done.group(1) if done else '?'} completed, "
            f"{qps.group(1) if qps else '?'} q/s")


def count_packets(path: Path) -> int:
    out = subprocess.run(["capinfos", "-c", "-M", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(re.search(r"Number of packets:\s+(\d+)", out).group(1))


def spread_over_pods(src: Path, dst: Path, pods_file: Path, pods: int = 10_000) -> int:
    """Rewrite ``src`` (a classic Ethernet pcap of IPv4 DNS over UDP) into ``dst`` with the
    clients spread over ``pods`` pod addresses, and write those pods (with their nodes,
    Services and ReplicaSets) to ``pods_file``. The pod of a packet is picked from its
    question and its client port and id, so a query and its response go to the same pod and
    each question to five pods. The IPv4 checksum is redone; the UDP one is zeroed (0 means
    none, in IPv4). Returns the number of packets."""
    # Imported here: measure() reads a child's peak RSS, which on Linux starts from this
    # process's RSS when the child is forked — the tools are timed before this import.
    from benchmarks.pipeline_throughput import cluster_objects

    items, nodes, services, owners = cluster_objects(pods)
    pods_file.write_text(json.dumps({"kind": "List", "items": items + nodes + services + owners}))
    addrs = [bytes(map(int, p["status"]["podIP"].split("."))) for p in items]
    count = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        head = fin.read(24)
        magic, linktype = struct.unpack("<I", head[:4])[0], struct.unpack("<I", head[20:])[0]
        if magic not in (0xA1B2C3D4, 0xA1B23C4D) or linktype != 1:
            raise SystemExit(f"{src}: a little-endian Ethernet pcap is needed for the rewrite")
        fout.write(head)
        while len(rec := fin.read(16)) == 16:
            data = bytearray(fin.read(struct.unpack_from("<I", rec, 8)[0]))
            count += 1
            if data[12:14] == b"\x08\x00" and data[23] == 17 and (data[14] & 15) == 5:
                sport, dport = struct.unpack_from("!HH", data, 34)
                side = 26 if dport == 53 else 30 if sport == 53 else 0
                if side:
                    port = data[34:36] if side == 26 else data[36:38]
                    question = bytes(data[54:data.index(0, 54) + 5])
                    pick = zlib.crc32(question) + 2003 * (zlib.crc32(port + data[42:44]) % 5)
                    data[side:side + 4] = addrs[pick % len(addrs)]
                    data[24:26] = b"\0\0"
                    total = sum(struct.unpack_from("!10H", data, 14))
                    total = (total & 0xFFFF) + (total >> 16)
                    data[24:26] = struct.pack("!H", ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF)
                    data[40:42] = b"\0\0"
            fout.write(rec)
            fout.write(data)
    return count


def measure(argv: list[str]) -> dict:
    """Wall time, CPU time and peak RSS of one process, its stdout thrown away."""
    with open(os.devnull, "wb") as null:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=null, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        proc.stderr.close() if proc.stderr else None
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err[-500:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_mb": usage.ru_maxrss / 1024, "stderr": err}


def tools(path: Path) -> dict[str, list[str]]:
    return {
        "kubectl-dnstrace analyze": [PLUGIN, "analyze", "--offline", "-o", "ndjson", str(path)],
        "tshark -Y dns -T fields": ["tshark", "-r", str(path), "-Y", "dns", "-T", "fields",
                                    "-e", "ip.src", "-e", "dns.qry.name", "-e", "dns.qry.type",
                                    "-e", "dns.flags.rcode"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="packets in the big file")
    ap.add_argument("--rate", type=int, default=25_000, help="dnsperf queries/s")
    ap.add_argument("--pcap", help="use this capture instead of making one")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool and size (best kept)")
    args = ap.parse_args()
    missing = [tool for tool in ("tshark", "capinfos", "editcap") if not shutil.which(tool)]
    if missing:
        ap.error(f"{', '.join(missing)} not found: install tshark (apt-get install tshark)")
    if args.pcap and not os.path.isfile(args.pcap):
        ap.error(f"--pcap {args.pcap}: no such file")
    if not args.pcap and os.geteuid() != 0:
        ap.error("making a capture needs root (it builds network namespaces); "
                 "or reuse one with --pcap FILE")
    tmp = Path(tempfile.mkdtemp(prefix="dnstrace-bench-"))
    big = Path(args.pcap) if args.pcap else capture(tmp, args.packets, args.rate)
    total = count_packets(big)
    small = tmp / "quarter.pcap"
    # Same format as the capture (classic pcap): editcap would write pcapng otherwise.
    subprocess.run(["editcap", "-F", "pcap", "-r", str(big), str(small), f"1-{total // 4}"],
                   check=True, capture_output=True)
    results = []
    paired: dict[int, list[float]] = {}
    load = os.getloadavg()[0]
    for path in (small, big):
        packets = count_packets(path)
        # The tools take turns (alternating which goes first), so a slow spell of a shared
        # host lands on both: each pair gives a ratio of its own.
        runs: dict[str, list[dict]] = {name: [] for name in tools(path)}
        for i in range(args.repeat):
            order = list(tools(path).items())
            for name, argv in order[::-1] if i % 2 else order:
                runs[name].append(measure(argv))
        ours, theirs = runs.values()
        paired[packets] = sorted(t["wall_s"] / o["wall_s"] for o, t in zip(ours, theirs, strict=True))
        for name, tool_runs in runs.items():
            best = min(tool_runs, key=lambda r: r["wall_s"])
            best.update(tool=name, packets=packets, file_mb=path.stat().st_size / 1e6,
                        pps_wall=packets / best["wall_s"], pps_cpu=packets / best["cpu_s"],
                        walls=[round(r["wall_s"], 2) for r in tool_runs])
            best.pop("stderr")
            results.append(best)
            print(f"{name} on {packets} packets: {best['wall_s']:.1f} s, "
                  f"{best['pps_wall']:.0f} packets/s", file=sys.stderr)
    floor = measure(["true"])["max_rss_mb"]
    print(f"Machine: {machine.describe()}")
    print(f"Load average before the runs: {load:.2f} ({os.cpu_count()} CPUs); "
          f"{args.repeat} run(s) per tool and size, taking turns; peak RSS of `true` started "
          f"the same way: {floor:.0f} MB (a forked child's peak starts from this process's)\n")
    print("| file | tool | wall s | CPU s | packets/s (wall) | packets/s (CPU) | peak RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['packets']:,} packets, {r['file_mb']:.0f} MB | {r['tool']} | "
              f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['pps_wall']:,.0f} | "
              f"{r['pps_cpu']:,.0f} | {r['max_rss_mb']:.0f} |")
    for size in sorted({r["packets"] for r in results}):
        ours, theirs = (next(r for r in results if r["packets"] == size and r["tool"] == t)
                        for t in tools(big))
        ratios = paired[size]
        print(f"\n{size:,} packets: analyze / tshark speed = "
              f"{theirs['wall_s'] / ours['wall_s']:.2f}x (wall, best against best), "
              f"{theirs['cpu_s'] / ours['cpu_s']:.2f}x (CPU); paired runs: median "
              f"{statistics.median(ratios):.2f}x, range {ratios[0]:.2f}-{ratios[-1]:.2f}x")
    attribution = attribute_and_aggregate(big, tmp, args.repeat)
    print("\n" + json.dumps({"tools": results, "pods": attribution}, indent=1))
    if not args.pcap:
        print(f"capture kept at {big}", file=sys.stderr)
    return 0


def attribute_and_aggregate(big: Path, tmp: Path, repeat: int) -> dict:
    """events/s of decode -> attribute -> aggregate over 10,000 pods (module docstring)."""
    spread, pods_file = tmp / "spread.pcap", tmp / "pods.json"
    spread_over_pods(big, spread, pods_file)
    argv = [PLUGIN, "analyze", "--offline", "--pods", str(pods_file), "-o", "table",
            "--no-lines", str(spread)]
    runs = [measure(argv) for _ in range(max(1, repeat))]
    messages = int(re.search(r"(\d+) DNS messages", runs[0]["stderr"]).group(1))
    best = min(runs, key=lambda r: r["wall_s"])
    out = {"messages": messages, "walls": [round(r["wall_s"], 2) for r in runs],
           "wall_s": best["wall_s"], "cpu_s": best["cpu_s"], "max_rss_mb": best["max_rss_mb"],
           "events_per_s_wall": messages / best["wall_s"],
           "events_per_s_cpu": messages / best["cpu_s"]}
    print(f"\ndecode -> attribute -> aggregate, 10,000 pods (`analyze --pods -o table "
          f"--no-lines`), {messages:,} DNS messages: wall s {' '.join(map(str, out['walls']))}; "
          f"best {best['wall_s']:.1f} s = **{out['events_per_s_wall']:,.0f} events/s**, "
          f"CPU {best['cpu_s']:.1f} s ({out['events_per_s_cpu']:,.0f} events/s of CPU), "
          f"peak RSS {best['max_rss_mb']:.0f} MB")
    return out


if __name__ == "__main__":
    sys.exit(main())
