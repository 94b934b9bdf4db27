"""The capture agent under a flood, in a real pod that has CoreDNS's memory limit.

A pod of the tools image runs dnsmasq on 127.0.0.1 and, in the same container, the lab's
flood sender (``tests/lab/flood.py``: queries for distinct names as fast as it can, on the
pod's loopback: the traffic never leaves the pod). Its one container has ``limits.memory:
170Mi``, the usual CoreDNS limit, so the pod's memory cgroup has that limit and the
ephemeral capture container the plugin adds is charged to it. The plugin traces the pod
unfiltered as a user would; the agent's own records, read back from its container log,
must show a run that ended on its deadline with ``stats`` and ``bye``, counted what it shed,
and stayed within 64 MB; the pod must not have been OOM-killed.
"""

from __future__ import annotations

import time
from pathlib import Path

from kubectl_dnstrace import protocol
from tests.real.cluster import CONTAINER_ADDED, RealCluster

FLOOD_PY = Path(__file__).resolve().parents[1] / "lab" / "flood.py"
RSS_BUDGET_KB = 64 * 1024
DURATION = 8.0

POD = """
apiVersion: v1
kind: Pod
metadata: {name: dns, labels: {app: flooded-dns}}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{name: flood, configMap: {name: flood}}]
  containers:
  - name: dns
    image: docker.io/realk8s/tools:1
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "dnsmasq --no-resolv --no-hosts --listen-address=127.0.0.1 --bind-interfaces --port=53 --address=/example.com/10.0.0.1 --cache-size=10000 --user=root && exec python3 /flood/flood.py 127.0.0.1 3600"]
    volumeMounts: [{name: flood, mountPath: /flood}]
    resources: {limits: {memory: 170Mi}, requests: {memory: 70Mi}}
"""


def test_a_flooded_pod_with_coredns_s_memory_limit(real: RealCluster):
    with real.namespace("i15-agent-flood") as ns:
        real.kubectl("create", "configmap", "flood", "-n", ns, f"--from-file=flood.py={FLOOD_PY}")
        real.apply(POD, ns)
        real.wait_pods(ns, "app=flooded-dns")
        done = real.plugin("pod/dns", "-n", ns, "--duration", f"{DURATION:g}s", timeout=180)
        assert done.returncode == 0, done.stderr
        added = [m.group(1) for m in CONTAINER_ADDED.finditer(done.stderr)]
        assert len(added) == 1, done.stderr
        log = real.kubectl("logs", "-n", ns, "dns", "-c", added[0], timeout=60).stdout
        records = [protocol.decode(line) for line in log.splitlines() if line.strip()]
        assert records[0]["type"] == "hello"
        assert [r["type"] for r in records[-2:]] == ["stats", "bye"]
        bye, stats = records[-1], records[-2]
        assert bye["reason"] == "deadline"
        assert bye["elapsed"] <= DURATION + 1.0, bye
        # A flood: far more than the agent writes records for; it aggregated and said so.
        assert stats["seen"] > 100_000, stats
        assert stats["emitted"] <= 2000 * (DURATION + 1)
        aggs = [r for r in records if r["type"] == "agg"]
        assert aggs and stats["emitted"] + sum(a["total"] for a in aggs) == stats["matched"]
        for key in ("drops", "shed_records", "shed_packets", "ungrouped"):
            assert isinstance(stats[key], int) and stats[key] >= 0, (key, stats)
        assert stats["ungrouped"] > 0  # distinct names beyond the interval's group table
        assert 0 < stats["peak_rss_kb"] <= RSS_BUDGET_KB, stats
        # The traced pod lived through it: no restart, no OOM kill, and the agent exited 0
        # (the kubelet reports the exit within its status sync, some seconds later).
        end = time.monotonic() + 60
        while True:
            pod = real.get_json("pod", "-n", ns, "dns")
            (agent,) = [s for s in pod["status"].get("ephemeralContainerStatuses") or []
                        if s["name"] == added[0]]
            if "terminated" in agent["state"] or time.monotonic() > end:
                break
            time.sleep(2)
        assert agent["state"]["terminated"]["exitCode"] == 0, agent
        (status,) = pod["status"]["containerStatuses"]
        assert status["restartCount"] == 0 and "running" in status["state"], status
