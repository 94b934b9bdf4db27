"""The simulated cluster against the real one: the same scenario, the same answer.

The same three bare pods (one asks for the alerted name, one for a name that does not
exist, one for a name outside the filter) run in the simulated cluster (tests/lab) and on the
real one (manifests/diff.yaml); the same ``coredns`` trace runs on both through the real
kubectl. What the user learns must be the same: the set of (client pod, qname, qtype,
rcode) and the exit code. CoreDNS's own upstream queries are left out of the comparison:
whether one falls inside the window depends on what its cache held when the trace started.
Every difference found between the two is listed in docs/testing.md.
"""

from __future__ import annotations

import json
import subprocess

from kubectl_dnstrace.errors import ExitCode
from tests.conftest import require_lab

NS = "rt-diff"
TRACE = ["coredns", "--domain", "evil.example.test", "--domain", "nx.test",
         "--duration", "15s", "-o", "json"]
SCENARIO = {
    "nodes": ["node-a"],
    "dns": {"replicas": 2, "records": {"evil.example.test": "10.66.6.6",
                                       "good.example.test": "10.0.0.42"}},
    "pods": [
        {"name": "asker", "namespace": NS, "queries": [{"name": "evil.example.test", "type": "A", "every": "1s"}]},
        {"name": "nxer", "namespace": NS, "queries": [{"name": "gone.nx.test", "type": "A", "every": "1s"}]},
        {"name": "quiet", "namespace": NS, "queries": [{"name": "good.example.test", "type": "A", "every": "1s"}]},
    ],
}


def seen(doc: dict) -> set[tuple[str, str, str, str]]:
    """(namespace/pod, qname, qtype, rcode) of every answered query of the scenario's pods."""
    out = set()
    for e in doc["events"]:
        c = e.get("client") or {}
        if e["qr"] == "response" and c.get("namespace") == NS:
            out.add((f"{c['namespace']}/{c['name']}", e["qname"], e["qtype"], e["rcode"]))
    return out


def test_the_simulated_and_the_real_cluster_tell_the_same_story(real):
    require_lab()
    from tests.lab.scenario import ScenarioLab

    with ScenarioLab(SCENARIO) as sl:
        sim = subprocess.run(["kubectl", "dnstrace", *TRACE], capture_output=True, text=True,
                             env=sl.env(), timeout=180, stdin=subprocess.DEVNULL)
    with real.namespace(NS):
        real.apply("diff.yaml", NS)
        real.wait_pods(NS, "app=diff", 3)
        live = real.plugin(*TRACE)
    assert sim.returncode == live.returncode == ExitCode.MATCHED, (sim.stderr, live.stderr)
    expected = {(f"{NS}/asker", "evil.example.test", "A", "NOERROR"),
                (f"{NS}/nxer", "gone.nx.test", "A", "NXDOMAIN")}
    assert seen(json.loads(live.stdout)) == expected
    assert seen(json.loads(sim.stdout)) == expected
