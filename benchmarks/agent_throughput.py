"""Capture throughput: the agent against tcpdump on the same DNS traffic, at rising rates.

In the lab (tests/lab): dnsmasq in a DNS namespace answers a local zone, dnsperf in a
client namespace sends queries at 5k, 20k, 40k queries/s and then as fast as it can. Four
captures run side by side in the DNS namespace on the same traffic, in the same run:

- the agent with ``--domain`` matching about 1 % of the names,
- the agent with no filter (above 2,000 records/s it sends per-second aggregates),
- ``tcpdump -i eth0 -n -l -vvv port 53`` with its output drained through a pipe (``wc -l``),
- ``tcpdump -i eth0 -w /dev/null port 53``.

For each it reports packets handled / packets on the wire, kernel drops, and CPU (user +
system time from /proc/<pid>/stat over the capture's life). Run as root:

    .venv/bin/python benchmarks/agent_throughput.py [--seconds 10] [--rates 5000,20000,40000,max]

It prints a markdown table (for docs/performance.md) and the raw figures as JSON.

``--flood`` measures the agent's bounds instead (docs/performance.md, "Flood"): a sender in
the client namespace sends queries for distinct names as fast as the box allows (no
pacing by answers, unlike dnsperf: ``tests/lab/flood.py``), the agent runs unfiltered,
and after ``--seconds`` it is asked to stop by its deadline, SIGTERM and its stop file in
turn. Each row gives the time from the ask to the agent's exit, its peak RSS (VmHWM, the
ring included), kernel drops and what it shed:

    .venv/bin/python benchmarks/agent_throughput.py --flood [--seconds 5] [--ring-mb 8]
        [--agent-args '--max-rate 0;'] [--capture-in dns|node]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import machine
from kubectl_dnstrace import protocol
from tests.lab import dnslab
from tests.lab.netns import Lab

NAMES = 10_000
WATCHED = "watched.example.com"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def zone() -> dnslab.Zone:
    a = {}
    for i in range(NAMES):
        name = f"w{i}.{WATCHED}" if i % 100 == 0 else f"h{i}.example.com"
        a[name] = [f"10.1.{i // 250}.{i % 250 + 1}"]
    return dnslab.Zone(local=["example.com"], a=a)


def query_file(path: Path) -> None:
    lines = [f"w{i}.{WATCHED} A" if i % 100 == 0 else f"h{i}.example.com A" for i in range(NAMES)]
    path.write_text("\n".join(lines) + "\n")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tcpdump_counts(stderr: str) -> dict:
    out = {}
    for key, pattern in (("captured", r"(\d+) packets captured"),
                         ("received", r"(\d+) packets received by filter"),
                         ("drops", r"(\d+) packets dropped by kernel")):
        m = re.search(pattern, stderr)
        out[key] = int(m.group(1)) if m else None
    return out


def agent_counts(stdout: str) -> dict:
    records = [protocol.decode(line) for line in stdout.splitlines() if line.strip()]
    stats = [r for r in records if r["type"] == "stats"][-1]
    agg_total = sum(r["total"] for r in records if r["type"] == "agg")
    dns = sum(1 for r in records if r["type"] == "dns")
    return {"captured": stats["seen"], "drops": stats["drops"], "matched": stats["matched"],
            "records": dns, "aggregated": agg_total,
            "agg_records": sum(1 for r in records if r["type"] == "agg"),
            "bye": records[-1].get("reason")}


AGENT_FILTERED = "agent --domain (1 %)"
AGENT_ALL = "agent, no filter"
TCPDUMP_V = "tcpdump -n -l -vvv, piped to wc -l"
TCPDUMP_W = "tcpdump -w /dev/null"


def box_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_step(lab: Lab, d: dnslab.DnsLab, client, qfile: Path, rate: str, seconds: float,
             work: Path, captures: tuple[str, ...] = ("filtered", "all", "vvv", "w"),
             agent_extra: tuple[str, ...] = ()) -> dict:
    """One rate: start the four captures, run dnsperf, stop them, collect the figures.

    The agents write to files, as a container runtime writes a container's log: a pipe
    that nobody drains during the run would stall them, which no kubelet does.
    """
    env = dnslab.agent_env()
    dns = d.dns
    outs = {name: work / f"{rate}-{i}.ndjson" for i, name in enumerate((AGENT_FILTERED, AGENT_ALL))}
    agent = ["python3", "-m", "kubectl_dnstrace.agent", "--duration", str(seconds + 60),
             *agent_extra]
    procs = {}
    if "filtered" in captures:
        procs[AGENT_FILTERED] = dns.popen([*agent, "--domain", WATCHED], env=env,
                                          stdout=outs[AGENT_FILTERED].open("wb"))
    if "all" in captures:
        procs[AGENT_ALL] = dns.popen(agent, env=env, stdout=outs[AGENT_ALL].open("wb"))
    outs = {name: path for name, path in outs.items() if name in procs}
    wc = None
    if "vvv" in captures:
        procs[TCPDUMP_V] = dns.popen(["tcpdump", "-i", "eth0", "-n", "-l", "-vvv", "port", "53"])
        wc = lab.popen(["wc", "-l"], stdin=procs[TCPDUMP_V].stdout)
        procs[TCPDUMP_V].stdout.close()
    if "w" in captures:
        procs[TCPDUMP_W] = dns.popen(["tcpdump", "-i", "eth0", "-w", "/dev/null", "port", "53"],
                                     stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(p.stat().st_size for p in outs.values()):
        time.sleep(0.05)
    time.sleep(1.5)  # tcpdump has no ready signal; give it time to open its socket
    cpu0 = {name: cpu_seconds(p.pid) for name, p in procs.items()}
    server_cpu0 = cpu_seconds(d.server.proc.pid)
    argv = ["dnsperf", "-s", d.server.ip4, "-d", str(qfile), "-l", str(seconds), "-c", "8",
            "-q", "2000", "-t", "2"]
    if rate != "max":
        argv += ["-Q", rate]
    busy0 = box_busy()
    perf_proc = subprocess.Popen(client.cmd(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
    perf_out = perf_proc.stdout.read()
    _pid, _status, usage = os.wait4(perf_proc.pid, 0)
    perf_proc.returncode = 0
    busy1 = box_busy()
    server_cpu = cpu_seconds(d.server.proc.pid) - server_cpu0
    time.sleep(1.0)  # let every capture finish what the kernel already queued
    cpu = {name: cpu_seconds(p.pid) - cpu0[name] for name, p in procs.items()}
    results = {}
    for name, p in procs.items():
        p.send_signal(signal.SIGINT if name.startswith("tcpdump") else signal.SIGTERM)
    for name, p in procs.items():
        _out, err = p.communicate(timeout=30)
        if name in outs:
            results[name] = agent_counts(outs[name].read_text())
        else:
            results[name] = tcpdump_counts(err.decode())
        results[name]["cpu_s"] = cpu[name]
    if wc is not None:
        lines = wc.communicate(timeout=10)[0].decode().strip()
        results[TCPDUMP_V]["lines"] = int(lines or 0)
    sent = int(re.search(r"Queries sent:\s+(\d+)", perf_out).group(1))
    completed = int(re.search(r"Queries completed:\s+(\d+)", perf_out).group(1))
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", perf_out).group(1))
    box = 100.0 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    return {"rate": rate, "seconds": seconds, "sent": sent, "completed": completed, "qps": qps,
            "wire_packets": sent + completed, "dnsmasq_cpu_s": server_cpu,
            "dnsperf_cpu_s": usage.ru_utime + usage.ru_stime, "box_busy_pct": box,
            "captures": results}


def table(steps: list[dict]) -> str:
    rows = ["| offered q/s | answered q/s | capture | packets handled / on the wire | kernel drops | CPU, % of a core |",
            "|---|---|---|---|---|---|"]
    for s in steps:
        for name, c in s["captures"].items():
            got = c.get("captured")
            ratio = f"{got:,} / {s['wire_packets']:,}" if got is not None else "?"
            if name.startswith("agent") and c.get("matched") is not None:
                ratio += f" ({c['matched']:,} matched)"
            cpu = 100.0 * c["cpu_s"] / s["seconds"]
            rows.append(f"| {s['rate']} | {s['qps']:,.0f} | {name} | {ratio} | {c.get('drops')} | {cpu:.0f} |")
        rows.append(f"| {s['rate']} | {s['qps']:,.0f} | (dnsmasq; dnsperf; whole box, % of 2 cores) | | | "
                    f"{100.0 * s['dnsmasq_cpu_s'] / s['seconds']:.0f}; "
                    f"{100.0 * s['dnsperf_cpu_s'] / s['seconds']:.0f}; {s['box_busy_pct']:.0f} |")
    return "\n".join(rows)


def hot_loop_cost(repeat: int = 10) -> dict:
    """CPU per packet of the agent's hot loop alone, in-process, on a synthetic ring of
    20,000 UDP packets (10,000 queries and their responses, distinct names): no kernel,
    no other process — the floor under the figures above."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, UDP

    from kubectl_dnstrace.agent.filters import DnsFilter
    from kubectl_dnstrace.agent.main import Agent, parse_args
    from kubectl_dnstrace.agent.output import Output
    from tests.test_agent_hotpath import ring

    items = []
    for i in range(NAMES):
        name = f"w{i}.{WATCHED}" if i % 100 == 0 else f"h{i}.example.com"
        up = IP(src="10.244.0.101", dst="10.244.0.53") / UDP(sport=20000 + i % 20000, dport=53)
        down = IP(src="10.244.0.53", dst="10.244.0.101") / UDP(sport=53, dport=20000 + i % 20000)
        items.append((bytes(up / DNS(id=i, rd=1, qd=DNSQR(qname=name))), 2, 0, 1000.0 + i * 1e-5))
        items.append((bytes(down / DNS(id=i, qr=1, rd=1, ra=1, qd=DNSQR(qname=name),
                                       an=[DNSRR(rrname=name, rdata="10.1.0.1")])), 2, 0, 1000.0 + i * 1e-5))
    blocks = [ring([(p, ifx, kind, ts + r) for p, ifx, kind, ts in items]) for r in range(repeat)]
    out = {}
    for label, args, domains in (("--domain (1 %)", [], [WATCHED]),
                                 ("no filter, aggregating", [], []),
                                 ("no filter, one record per message", ["--max-rate", "0"], [])):
        agent = Agent(parse_args(args), Output(os.open(os.devnull, os.O_WRONLY)), DnsFilter(domains))
        if label.endswith("aggregating"):
            agent.volume.aggregating, agent.volume._agg_start = True, 0.0
        t0 = time.process_time()
        for r, block in enumerate(blocks):
            agent.run_block(block, 0, len(items))
            agent.out.flush()
            if agent.volume.aggregating:
                agent.volume.take(1001.0 + r, agent.text_key)
        out[label] = 1e6 * (time.process_time() - t0) / (repeat * len(items))
    return out


def flood_rows(seconds: float, ring_mbs: list[int], agent_args: list[list[str]],
               where: str = "dns") -> list[dict]:
    """The agent under the flood, for each ring size, argument set and way to stop it;
    ``where``: in the DNS pod's namespace, or the node's (every veth: each message twice,
    the duplicate table in use)."""
    from tests.lab.flood import STOPS, run_flooded_agent

    rows = []
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        d = dnslab.dns_lab(lab, work, log_queries=False,
                           dnsmasq_extra=["--cache-size=10000", "--dns-forward-max=5000"])
        client, _, _ = d.add_client()
        for ring_mb in ring_mbs:
            for args in agent_args:
                for stop in STOPS:
                    argv = [*args, "--ring-mb", str(ring_mb)]
                    ns = d.node if where == "node" else d.dns
                    run = run_flooded_agent(ns, client, d.server.ip4, work, stop, argv,
                                            flood_seconds=seconds, env=dnslab.agent_env())
                    stats = run.stats
                    row = {"args": (" ".join(args) or "(defaults)")
                           + (", node namespace" if where == "node" else ""),
                           "ring_mb": ring_mb,
                           "stop": stop, "bye": run.records[-1]["reason"],
                           "time_to_stop_s": run.time_to_stop,
                           "peak_rss_mb": run.peak_rss_kb / 1024.0,
                           "flood_qps": run.sent / max(run.flood_seconds, 1e-9),
                           "cpu_pct": 100.0 * run.cpu_seconds / max(run.flood_seconds, 1e-9),
                           **{k: stats.get(k) for k in ("seen", "matched", "emitted", "drops",
                                                       "shed_records", "shed_packets",
                                                       "ungrouped")}}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def flood_table(rows: list[dict]) -> str:
    out = ["| agent args | ring MiB | stopped by | time to stop, s | peak RSS, MB | flood q/s "
           "(sent) | packets seen | kernel drops | shed packets | shed records | ungrouped "
           "| dns records | CPU, % of a core |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['args']} | {r['ring_mb']} | {r['stop']} (bye: {r['bye']}) | "
                   f"{r['time_to_stop_s']:.2f} | {r['peak_rss_mb']:.1f} | {r['flood_qps']:,.0f} | "
                   f"{r['seen']:,} | {r['drops']:,} | {r['shed_packets']:,} | "
                   f"{r['shed_records']:,} | {r['ungrouped']:,} | {r['emitted']:,} | "
                   f"{r['cpu_pct']:.0f} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="5000,20000,40000,max")
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--hot-loop", action="store_true", help="only the in-process hot-loop cost")
    ap.add_argument("--captures", default="filtered,all,vvv,w",
                    help="which captures run side by side (filtered, all, vvv, w); fewer "
                         "captures leave more CPU to dnsmasq and show the agent at higher rates")
    ap.add_argument("--flood", action="store_true",
                    help="the agent's bounds under a flood of distinct names (time to stop, "
                         "peak RSS, drops, sheds) instead of the rate steps")
    ap.add_argument("--ring-mb", default="16",
                    help="with --flood: ring sizes to try, comma-separated (MiB)")
    ap.add_argument("--agent-args", default="--max-rate 0",
                    help="with --flood: agent argument sets, separated by ';' (an empty set "
                         "is the defaults)")
    ap.add_argument("--capture-in", choices=("dns", "node"), default="dns",
                    help="with --flood: the namespace the agent captures in")
    ap.add_argument("--step-agent-args", default="",
                    help="extra arguments for both agents of the rate steps, e.g. "
                         "--encrypted-dns (node traces)")
    args = ap.parse_args()
    if args.flood:
        rows = flood_rows(args.seconds, [int(x) for x in args.ring_mb.split(",")],
                          [a.split() for a in args.agent_args.split(";")], args.capture_in)
        print(f"Machine: {machine.describe()}\n")
        print(flood_table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    if args.hot_loop:
        for label, us in hot_loop_cost().items():
            print(f"| {label} | {us:.2f} µs |")
        return 0
    steps = []
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        qfile = work / "queries.txt"
        query_file(qfile)
        # dnsmasq tuned for rate: no query log, a big cache, many concurrent queries.
        d = dnslab.dns_lab(lab, work, zone(), log_queries=False,
                           dnsmasq_extra=["--cache-size=10000", "--dns-forward-max=5000"])
        client, _, _ = d.add_client()
        for rate in args.rates.split(","):
            step = run_step(lab, d, client, qfile, rate, args.seconds, work,
                            tuple(args.captures.split(",")), tuple(args.step_agent_args.split()))
            steps.append(step)
            print(json.dumps(step), file=sys.stderr, flush=True)
    print(f"Machine: {machine.describe()}\n")
    print(table(steps))
    if args.json:
        Path(args.json).write_text(json.dumps(steps, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
