"""The kubectl side's back half: events/s through decode -> attribute -> aggregate, with an
inventory of 10,000 pods, and that inventory's memory.

No network and no cluster: the inventory is built from API-shaped objects (10,000 pods of
500 Deployments on 50 nodes, 1,000 Services), and the events are the agent's NDJSON lines
exactly as they arrive over pods/log — each prefixed with the kubelet's timestamp, as
bytes — a query and its response, from clients spread over all pods, each pod asking the
four names its workload uses. Stages, each timed over the same events (CPU time of this
process), each doing what a live trace does per line:

1. decode: the log stream's ``LineReader.lines`` for each read of 64 KiB (per line:
   timestamp split, ``protocol.decode``, seq check; one queue item per read) +
   ``DnsEvent.from_record``
2. + attribute: ``Attributor.attribute`` of the client address at the event's time
3. + aggregate: ``Aggregator.add``
4. + the hand-over between a stream's thread and the trace's loop: the same ``queue.Queue``
   ``put`` / ``get(timeout=…)`` per read (in one thread here: the cost, not the wait)
5. the whole ``Pipeline`` with ``-o table`` (attribute, link, aggregate; no live lines),
   fed through the queue like a live trace

The garbage collector is set up as a live trace sets it up: ``Pipeline`` starts after the
inventory is built and applies ``gcpolicy.for_streams`` (freeze what exists, space
collections out), so every stage runs after that same call.

Memory: tracemalloc's count of the inventory alone, and the process's RSS growth while it
is built. Then the same pods served by the project's simulated API server (tests/lab/cluster,
real HTTP; the server fills in a pod's defaults as a real one does) and listed by
``Inventory.from_cluster`` in a child process, once in pages of ``LIST_CHUNK`` and once in
one response (``limit=0``, what the plugin did before it paged): tracemalloc's peak and the
child's peak RSS while it lists, which is what a user's machine pays, not only what the
inventory keeps. Run:

    .venv/bin/python benchmarks/pipeline_throughput.py [--pods 10000] [--events 300000]

It prints a markdown table (for docs/performance.md) and the raw figures as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import machine
from kubectl_dnstrace import gcpolicy, protocol
from kubectl_dnstrace.aggregate import Aggregator
from kubectl_dnstrace.attribution import Attributed, Attributor
from kubectl_dnstrace.kube.inventory import Inventory
from kubectl_dnstrace.kube.logstream import LineReader
from kubectl_dnstrace.model import DnsEvent, OutputOptions, PodRef
from kubectl_dnstrace.pipeline import Pipeline

T0 = 1_764_165_600.0
LINES_PER_READ = 65536 // 320  # the log stream reads 64 KiB at a time; a line is ~320 bytes
NODES = 50
DEPLOYMENTS = 500


def stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def cluster_objects(pods: int) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """Pods, nodes, services and ReplicaSets shaped like `kubectl get -o json` items."""
    nodes = [{"kind": "Node", "metadata": {"name": f"node-{n}"},
              "spec": {"podCIDR": f"10.{64 + n // 256}.{n % 256}.0/24"},
              "status": {"addresses": [{"type": "InternalIP", "address": f"172.18.{n // 256}.{n % 256 + 10}"},
                                       {"type": "Hostname", "address": f"node-{n}"}]}}
             for n in range(NODES)]
    owners = [{"kind": "ReplicaSet", "metadata": {
        "name": f"app{d}-5d8f7c9b6", "namespace": f"ns{d % 40}",
        "ownerReferences": [{"kind": "Deployment", "name": f"app{d}", "controller": True}]}}
        for d in range(DEPLOYMENTS)]
    items = []
    for i in range(pods):
        d, n = i % DEPLOYMENTS, i % NODES
        host = i // NODES + 2
        items.append({
            "kind": "Pod",
            "metadata": {
                "name": f"app{d}-5d8f7c9b6-{i:05x}", "namespace": f"ns{d % 40}", "uid": f"uid-{i}",
                "creationTimestamp": stamp(T0 - 3600),
                "labels": {"app": f"app{d}", "pod-template-hash": "5d8f7c9b6"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": f"app{d}-5d8f7c9b6", "uid": f"rs-{d}",
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {"nodeName": f"node-{n}", "containers": [
                {"name": "app", "image": f"registry.example.com/app{d}:1.2.3",
                 "ports": [{"containerPort": 8080}], "resources": {"requests": {"cpu": "100m"}}}]},
            "status": {"phase": "Running", "startTime": stamp(T0 - 3600),
                       "podIP": f"10.{64 + n // 256}.{n % 256}.{host}",
                       "podIPs": [{"ip": f"10.{64 + n // 256}.{n % 256}.{host}"}],
                       "hostIP": f"172.18.{n // 256}.{n % 256 + 10}",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0,
                                              "state": {"running": {"startedAt": stamp(T0 - 3590)}}}]},
        })
    services = [{"kind": "Service", "metadata": {"name": f"svc{s}", "namespace": f"ns{s % 40}"},
                 "spec": {"clusterIP": f"10.96.{s // 250}.{s % 250 + 1}"}} for s in range(1000)]
    return items, nodes, services, owners


def agent_lines(pods: list[dict], count: int) -> list[bytes]:
    """The agent's ``dns`` records as the log stream yields them: query then response, many
    clients, each line with the kubelet's timestamp in front (``kubectl logs --timestamps``)."""
    rnd = random.Random(7)
    ips = [p["status"]["podIP"] for p in pods]

    def names_of(i: int) -> list[str]:  # a workload asks a few names, again and again
        d = i % DEPLOYMENTS
        return [f"svc{d % 300}.ns{d % 40}.svc.cluster.local", f"api{d % 100}.example.com",
                f"db{d % 50}.ns{d % 40}.svc.cluster.local", "metrics.example.net"]

    lines = []
    for k in range(count // 2):
        i = rnd.randrange(len(ips))
        ip, name = ips[i], rnd.choice(names_of(i))
        ts = T0 + k * 0.0002
        port = 30000 + k % 30000
        # In the agent's field order (agent/events.py), as its encoder writes them.
        query = {"type": "dns", "seq": 2 * k + 1, "ts": ts, "qr": "query", "proto": "udp",
                 "src": ip, "sport": port, "dst": "10.64.0.2", "dport": 53, "id": k & 0xFFFF,
                 "qname": name, "qtype": "A", "iface": "eth0"}
        response = dict(query, seq=2 * k + 2, ts=ts + 0.0004, qr="response", src="10.64.0.2",
                        sport=53, dst=ip, dport=port, rcode="NOERROR", answers=["10.96.1.1"],
                        latency_ms=0.4)
        for rec in (query, response):
            kubelet_ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec["ts"]))
            lines.append(f"{kubelet_ts}.{int(rec['ts'] % 1 * 1e9):09d}Z "
                         f"{protocol.encode(rec)}".encode())
    return lines


LISTING_CHILD = """
import json, sys, time, tracemalloc
from kubectl_dnstrace.kube import client
from kubectl_dnstrace.kube.inventory import Inventory
from kubectl_dnstrace.model import ClusterOptions

def status_kb(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

kubeconfig, chunk = sys.argv[1], int(sys.argv[2])
if chunk >= 0:
    client.LIST_CHUNK = chunk
kube = client.Kube.connect(ClusterOptions(kubeconfig=kubeconfig))
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # resets the peak RSS (VmHWM) to the RSS now
rss0 = status_kb("VmRSS")
tracemalloc.start()
start = time.monotonic()
inv = Inventory.from_cluster(kube)
seconds = time.monotonic() - start
current, peak = tracemalloc.get_traced_memory()
print(json.dumps({"pods": len(inv.pods), "seconds": seconds, "peak_mb": peak / 2**20,
                  "kept_mb": current / 2**20,
                  "rss_growth_mb": (status_kb("VmHWM") - rss0) / 1024}))
"""


def listing_memory(pods: int) -> list[dict]:
    """Peak memory of ``Inventory.from_cluster`` over ``pods`` pods, paged and not."""
    import subprocess
    import tempfile

    from kubectl_dnstrace.kube import client
    from tests.lab.cluster import SimCluster

    items, nodes, services, owners = cluster_objects(pods)
    out = []
    with SimCluster() as sim, tempfile.TemporaryDirectory() as tmp:
        for ns in sorted({o["metadata"]["namespace"] for o in items + services}):
            sim.store.ensure_namespace(ns)
        for obj in nodes + services + owners + items:
            sim.store.create(obj)
        listed = sim.store.list("pods")[0]
        pod_kb = len(json.dumps(listed)) / len(listed) / 1024
        kubeconfig = sim.write_kubeconfig(Path(tmp) / "kubeconfig")
        for label, chunk in ((f"pages of {client.LIST_CHUNK}", -1), ("one response", 0)):
            res = subprocess.run([sys.executable, "-c", LISTING_CHILD, str(kubeconfig), str(chunk)],
                                 capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1])
            row = json.loads(res.stdout)
            row.update(listing=label, pod_kb=pod_kb)
            out.append(row)
            print(f"listing {pods:,} pods in {label}: peak {row['peak_mb']:.0f} MB (tracemalloc), "
                  f"RSS +{row['rss_growth_mb']:.0f} MB, {row['seconds']:.1f} s", file=sys.stderr)
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--listing-only", action="store_true",
                    help="only the listing's memory (no event stages)")
    args = ap.parse_args()
    if args.listing_only:
        rows = listing_memory(args.pods)
        print(json.dumps(rows, indent=1))
        return 0

    pods, nodes, services, owners = cluster_objects(args.pods)
    rss0 = rss_mb()
    tracemalloc.start()
    inventory = Inventory.from_objects(pods, nodes, services, owners, since=T0 - 60)
    inv_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_inventory = rss_mb() - rss0
    load = os.getloadavg()[0]
    lines = agent_lines(pods, args.events)
    n = len(lines)
    where = PodRef("kube-system", "coredns-1", role="coredns")
    # What Pipeline.__init__ does before a live stream starts (see the module docstring).
    gcpolicy.for_streams()

    class Handover:
        """The reader's queue, when the stage measures the work on either side of it."""

        def __init__(self) -> None:
            self.items: list = []

        def put(self, item) -> None:
            self.items.append(item)

        def take(self) -> list:
            items, self.items = self.items, []
            return items

    def read(out):
        """A stream's per-line work, then the trace loop's: one generator of events. The
        lines come in reads of 64 KiB, as a busy agent's log does (about 200 lines)."""
        reader = LineReader(where, out)
        key = where.key
        event = DnsEvent.from_record
        if isinstance(out, queue.Queue):
            def take() -> list:
                return [out.get(timeout=0.5) for _ in range(out.qsize())]
        else:
            take = out.take
        count = 0
        for start in range(0, len(lines), LINES_PER_READ):
            reader.lines(lines[start:start + LINES_PER_READ])
            for item in take():
                count += len(item.records)
                for rec in item.records:
                    yield event(rec, key)
        assert count == len(lines), (count, len(lines))  # every record, once

    def decode():
        for _ev in read(Handover()):
            pass

    attributor = Attributor(inventory)

    def decode_attribute():
        attribute = attributor.attribute
        for ev in read(Handover()):
            attribute(ev.src if ev.qr == "query" else ev.dst, ev.ts)

    def aggregate(out):
        attribute = attributor.attribute
        add = Aggregator().add
        for ev in read(out):
            add(Attributed(ev, attribute(ev.src if ev.qr == "query" else ev.dst, ev.ts)))

    def decode_attribute_aggregate():
        aggregate(Handover())

    def through_the_queue():
        aggregate(queue.Queue())

    finish_s = []

    def whole_pipeline():
        p = Pipeline(OutputOptions(format="table", live=False), io.StringIO(), io.StringIO(),
                     attributor=Attributor(inventory), streaming=False)
        for ev in read(queue.Queue()):
            p.feed(ev)
        finish_s.append(timed(p.finish))  # the summary table, once at the end: apart

    stages = [("decode (log line: timestamp, protocol.decode, seq; DnsEvent.from_record)", decode),
              ("+ attribute (10,000-pod inventory)", decode_attribute),
              ("+ aggregate", decode_attribute_aggregate),
              ("+ queue.Queue hand-over from the stream thread to the trace loop",
               through_the_queue),
              ("decode + queue + Pipeline.feed -o table (attribute, link, aggregate)",
               whole_pipeline)]
    results = {"pods": args.pods, "events": n, "load_before": load,
               "inventory_tracemalloc_mb": inv_bytes / 2**20,
               "inventory_rss_growth_mb": rss_inventory, "stages": []}
    for name, fn in stages:
        fn()  # warm-up: caches, first-time owner resolution
        seconds = min(timed(fn) for _ in range(2))
        if fn is whole_pipeline:
            seconds -= min(finish_s)
        results["stages"].append({"stage": name, "cpu_s": seconds, "events_per_s": n / seconds})
        print(f"{name}: {n / seconds:,.0f} events/s", file=sys.stderr)

    print(f"Machine: {machine.describe()}")
    print(f"Load average before the run: {load:.2f} ({os.cpu_count()} CPUs)\n")
    print(f"| stage ({n:,} events, {args.pods:,} pods) | events/s | µs/event |")
    print("|---|---:|---:|")
    for s in results["stages"]:
        print(f"| {s['stage']} | {s['events_per_s']:,.0f} | {1e6 / s['events_per_s']:.1f} |")
    clients = len({json.loads(line.partition(b" ")[2])["src"] for line in lines[::2]})
    results["summary_table_s"] = min(finish_s)
    print(f"\nSummary table at the end ({clients:,} clients): {min(finish_s):.2f} s CPU")
    print(f"\nInventory of {args.pods:,} pods, {NODES} nodes, 1,000 Services: "
          f"{inv_bytes / 2**20:.1f} MB (tracemalloc), RSS growth {rss_inventory:.1f} MB")
    results["listing"] = listing_memory(args.pods)
    print(f"\nListing {args.pods:,} pods from the API server "
          f"({results['listing'][0]['pod_kb']:.1f} KB of JSON a pod as listed):\n")
    print("| listing | seconds | peak MB (tracemalloc) | kept MB | peak RSS growth MB |")
    print("|---|---:|---:|---:|---:|")
    for row in results["listing"]:
        print(f"| {row['listing']} | {row['seconds']:.1f} | {row['peak_mb']:.1f} | "
              f"{row['kept_mb']:.1f} | {row['rss_growth_mb']:.0f} |")
    print("\n" + json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
