"""``analyze`` of a capture a responder made by hand in a pod of the real cluster: tcpdump
with a small snap length on every interface (``-i any -s 96``) while the pod asks the
cluster DNS and a resolver on its own loopback. The file comes back over ``kubectl exec``
and is read as the responder would read it: attributed against the live cluster, compared
with tshark's reading of the same file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from tests.real.cluster import RealCluster

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: capturer
  labels: {app: capturer}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: app
    image: docker.io/realk8s/tools:1
    imagePullPolicy: IfNotPresent
    command:
    - sh
    - -c
    - |
      dnsmasq --keep-in-foreground --no-resolv --no-hosts --user=root --bind-interfaces \\
        --listen-address=127.0.0.1 --address=/loop.test/10.9.9.9 &
      tcpdump -n -U -i any -s 96 -w /tmp/cap.pcap port 53 2>/tmp/tcpdump.err &
      sleep 3
      for i in 1 2 3; do
        dig +tries=1 +time=2 @127.0.0.1 loop.test A >/dev/null
        dig +tries=1 +time=2 evil.example.test A >/dev/null
        dig +tries=1 +time=2 kubernetes.default.svc.cluster.local A >/dev/null
        dig +tries=1 +time=2 missing.example.test A >/dev/null
      done
      sleep 1
      kill -INT %2
      sleep 1
      touch /tmp/done
      sleep 3600
"""


def _tshark(path) -> list[tuple[str, str, str, str]]:
    res = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "dns", "-T", "fields", "-e", "ip.src", "-e", "ipv6.src",
         "-e", "dns.qry.name", "-e", "dns.qry.type", "-e", "dns.flags.rcode"],
        capture_output=True, text=True, check=True)
    rows = []
    for line in res.stdout.splitlines():
        v4, v6, name, qtype, rcode = line.split("\t")
        rows.append((v4 or v6, name, qtype, rcode))
    return rows


def test_a_snap_length_capture_made_in_a_real_pod_reads_as_tshark_reads_it(
        real: RealCluster, tmp_path):
    from kubectl_dnstrace import dnswire

    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    with real.namespace("i19-analyze-cap") as ns:
        real.apply(POD, ns)
        real.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/capturer", "--timeout=90s")
        end = time.monotonic() + 90
        while real.kubectl("exec", "-n", ns, "capturer", "--", "test", "-e", "/tmp/done",
                           check=False).returncode != 0:
            assert time.monotonic() < end, "the pod's capture did not finish"
            time.sleep(1)
        pod_ip = real.get_json("pod", "-n", ns, "capturer")["status"]["podIP"]
        data = subprocess.run(["kubectl", "exec", "-n", ns, "capturer", "--", "cat",
                               "/tmp/cap.pcap"], capture_output=True, env=real.env(),
                              timeout=60, check=True).stdout
        path = tmp_path / "cap.pcap"
        path.write_bytes(data)
        # Against the live cluster: the pod is named while it still exists.
        done = real.plugin("analyze", "-o", "ndjson", str(path))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    theirs = _tshark(path)
    # tcpdump -i any sees a loopback packet once per direction's hook: one message, maybe
    # twice in a row; a repeat within the file is the same packet (analyze counts it once).
    once = [row for i, row in enumerate(theirs) if i == 0 or theirs[i - 1] != row]
    named = [row for row in once if row[1]]
    ours = [(e["src"], e["qname"], str(dnswire.type_code(e["qtype"])),
             str(dnswire.rcode_code(e["rcode"])) if e.get("rcode") else "") for e in events]
    assert ours == named, (ours, theirs, done.stderr)
    asked = {(e["qname"], e["qr"]) for e in events}
    assert {("loop.test", "query"), ("loop.test", "response"),
            ("evil.example.test", "response")} <= asked
    # The snap length cut some responses after their question: reported, marked.
    assert any(e.get("truncated") for e in events), done.stderr
    assert "cut short by the capture's snap length" in done.stderr
    # The pod's own address is the pod; its loopback asking its own resolver is no forward.
    to_cluster = [e for e in events if e["qr"] == "query" and e["src"] == pod_ip]
    assert to_cluster and {e["client"].get("name") for e in to_cluster} == {"capturer"}, \
        [e["client"] for e in to_cluster]
    assert not any(e.get("forward") for e in events)
