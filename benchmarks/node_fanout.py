"""``kubectl dnstrace nodes`` on a cluster of many nodes: time until every node's capture
runs, and the plugin's peak memory and threads (issue 16's fan-out).

The project's simulated API server (tests/lab/cluster, real HTTP, in this process) holds N
Ready nodes, each with one hostNetwork DaemonSet pod (``kube-proxy-<i>``) for the capture
to attach to. The plugin runs as users run it (its console script, in a child process):
it resolves ``nodes``, chooses the pod of each node, adds N ephemeral containers, waits for
them (a bounded number of watches at a time), opens N log streams, and at the end asks every
agent to stop through exec.

What runs in the containers is not the agent: N agents, each with its 16 MiB capture ring,
would measure this machine, not the plugin. The simulated kubelet starts a small shell stub
instead (``python3`` in the container command is mapped to it): it writes the ``hello``
record, waits for the stop file or the deadline, writes ``bye``. Every other step — patch,
watch, status, pods/log streaming, pods/exec — is the simulated server's real HTTP path.

Measured from the plugin's start: until its stderr says ``capturing in N pod(s)`` (all
running, every stream open), and the whole run (``--duration`` included, plus stopping);
peak RSS (VmHWM) and peak threads of the plugin process, sampled every 50 ms. Needs root
(the simulated kubelet runs containers in a network namespace). Run:

    .venv/bin/python benchmarks/node_fanout.py [--nodes 200] [--duration 10]

It prints a markdown table (for docs/performance.md) and the raw figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import describe as describe_machine  # noqa: E402
from tests.lab.cluster import SimCluster  # noqa: E402

STUB = r"""#!/bin/sh
# A stand-in for the capture agent: hello, wait for the stop file or the deadline, bye.
stop=""; duration=60
while [ $# -gt 0 ]; do
  case "$1" in
    --stop-file) stop="$2"; shift ;;
    --duration) duration="$2"; shift ;;
  esac
  shift
done
printf '{"type":"hello","seq":1,"agent_version":"stub","protocol":1,"interfaces":["lo"],"filters":{}}\n'
end=$(( $(date +%s) + ${duration%.*} ))
reason=deadline
while [ "$(date +%s)" -lt "$end" ]; do
  if [ -n "$stop" ] && [ -e "$stop" ]; then reason=stop-file; break; fi
  sleep 0.5
done
printf '{"type":"stats","seq":2,"seen":0,"matched":0,"emitted":0,"drops":0}\n'
printf '{"type":"bye","seq":3,"reason":"%s"}\n' "$reason"
"""


def populate(cluster: SimCluster, nodes: int, netns: str) -> None:
    store = cluster.store
    store.create({"kind": "DaemonSet", "apiVersion": "apps/v1",
                  "metadata": {"name": "kube-proxy", "namespace": "kube-system",
                               "uid": "ds-kube-proxy"},
                  "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
                           "template": {"metadata": {"labels": {"k8s-app": "kube-proxy"}},
                                        "spec": {"containers": [{"name": "kube-proxy",
                                                                 "image": "kube-proxy"}]}}}},
                 namespace="kube-system")
    for i in range(nodes):
        name = f"node-{i:03d}"
        ip = f"10.{100 + i // 250}.{i % 250}.1"
        cluster.add_node(name, ip)
        pod = f"kube-proxy-{i:03d}"
        store.create({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": pod, "namespace": "kube-system", "uid": f"uid-{pod}",
                         "labels": {"k8s-app": "kube-proxy"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                              "name": "kube-proxy", "uid": "ds-kube-proxy",
                                              "controller": True}]},
            "spec": {"nodeName": name, "hostNetwork": True,
                     "containers": [{"name": "kube-proxy", "image": "kube-proxy"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "hostIP": ip, "startTime": "2026-01-01T00:00:00Z",
                       "containerStatuses": [{"name": "kube-proxy", "ready": True,
                                              "state": {"running": {}}}]},
        }, namespace="kube-system")
        cluster.kubelet.register_pod_netns("kube-system", pod, netns)


def sample(pid: int, peak: dict, done: threading.Event) -> None:
    while not done.is_set():
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak["rss_kb"] = max(peak.get("rss_kb", 0), int(line.split()[1]))
                    elif line.startswith("Threads:"):
                        peak["threads"] = max(peak.get("threads", 0), int(line.split()[1]))
        except OSError:
            return
        done.wait(0.05)


def run(nodes: int, duration: int) -> dict:
    netns = f"dtlab-fanout-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    work = Path(tempfile.mkdtemp(prefix="dnstrace-fanout-"))
    stub = work / "agent-stub"
    stub.write_text(STUB)
    stub.chmod(0o755)
    cluster = SimCluster().start()
    try:
        cluster.kubelet.python3 = str(stub)
        populate(cluster, nodes, netns)
        kubeconfig = work / "kubeconfig"
        cluster.write_kubeconfig(kubeconfig)
        env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        plugin = str(Path(sys.executable).with_name("kubectl-dnstrace"))
        start = time.monotonic()
        proc = subprocess.Popen([plugin, "nodes", "--duration", f"{duration}s", "-o", "ndjson",
                                 "--timeout", "300s"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        peak: dict = {}
        done = threading.Event()
        threading.Thread(target=sample, args=(proc.pid, peak, done), daemon=True).start()
        running_at = None
        stderr = []
        for line in proc.stderr:
            stderr.append(line)
            if running_at is None and line.startswith("capturing in "):
                running_at = time.monotonic() - start
        code = proc.wait()
        total = time.monotonic() - start
        done.set()
        text = "".join(stderr)
        return {"nodes": nodes, "duration": duration, "exit": code,
                "all_running_s": round(running_at, 2) if running_at else None,
                "total_s": round(total, 2), "peak_rss_mib": round(peak.get("rss_kb", 0) / 1024, 1),
                "peak_threads": peak.get("threads", 0),
                "stopped": text.count("asked ") and text.split("asked ")[1].split(" ")[0],
                "stderr_tail": text[-600:] if code else ""}
    finally:
        cluster.stop()
        subprocess.run(["ip", "netns", "del", netns], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--duration", type=int, default=10)
    args = ap.parse_args()
    result = run(args.nodes, args.duration)
    print(describe_machine())
    print()
    print(f"| nodes | all captures running | whole run (--duration {args.duration}s) | peak RSS "
          "| peak threads |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {result['nodes']} | {result['all_running_s']} s | {result['total_s']} s | "
          f"{result['peak_rss_mib']} MiB | {result['peak_threads']} |")
    print()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
