"""Renders, exactly: live lines, the table, -o wide, -o json, -o ndjson, and the evidence
pcap — through the Pipeline, as a sandwich (events in, stdout and stderr out).

Times print in UTC; every render is deterministic, so these are exact-output tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import time

import pytest

from kubectl_dnstrace import jsontext, render
from kubectl_dnstrace.attribution import Attributor
from kubectl_dnstrace.errors import ExitCode
from kubectl_dnstrace.kube.inventory import Inventory
from kubectl_dnstrace.model import DnsEvent, OutputOptions
from kubectl_dnstrace.pipeline import Pipeline
from tests.test_inventory import T0, node, owner, pod
from tests.test_linking import q, r

COREDNS = "kube-system/coredns-7db6d8ff4d-abcde"


def inventory() -> Inventory:
    pods = [
        pod("web-5d8f7c9b6-x2k4p", "10.244.0.5", owner=("ReplicaSet", "web-5d8f7c9b6")),
        pod("coredns-7db6d8ff4d-abcde", "10.244.1.2", namespace="kube-system", node="node-b",
            labels={"k8s-app": "kube-dns"}, owner=("ReplicaSet", "coredns-7db6d8ff4d")),
        pod("agent-x7k2p", "172.18.0.10", namespace="monitoring", host_network=True,
            owner=("DaemonSet", "agent")),
        pod("kube-proxy-a", "172.18.0.10", namespace="kube-system", host_network=True,
            owner=("DaemonSet", "kube-proxy")),
    ]
    owners = [owner("ReplicaSet", "web-5d8f7c9b6", "shop", ("Deployment", "web")),
              owner("ReplicaSet", "coredns-7db6d8ff4d", "kube-system", ("Deployment", "coredns"))]
    return Inventory.from_objects(pods, [node("node-a", "172.18.0.10", "10.244.0.0/24"),
                                         node("node-b", "172.18.0.11", "10.244.1.0/24")],
                                  owners=owners, since=T0 - 60)


def events() -> list[DnsEvent]:
    """A CoreDNS capture: a pod's lookup goes upstream, a hostNetwork pod asks, the pod asks
    again (cache), a query gets no answer, an unknown private address asks."""
    web = q(0.000, "10.244.0.5", "10.244.1.2", 4242, "evil.example.com")
    up = q(0.001, "10.244.1.2", "172.18.0.53", 777, "evil.example.com", sport=51000)
    agent = q(1.250, "172.18.0.10", "10.244.1.2", 99, "good.example.com", sport=41000)
    again = q(2.5, "10.244.0.5", "10.244.1.2", 4243, "evil.example.com", sport=40001)
    lost = q(3.0, "10.244.0.5", "10.244.1.2", 4244, "slow.example.com", "TXT", sport=40002)
    stranger = q(3.5, "192.168.50.7", "10.244.1.2", 5, "evil.example.com", "AAAA", sport=33333)
    return [web, up, r(up, 0.010), r(web, 0.012), agent,
            r(agent, 0.0005, answers=("203.0.113.7",)), again, r(again, 0.0004), lost, stranger,
            r(stranger, 0.001, "NXDOMAIN", ())]


def run(fmt: str, evs: list[DnsEvent] | None = None, **output) -> tuple[str, str, ExitCode]:
    out, err = io.StringIO(), io.StringIO()
    output.setdefault("width", 120)
    p = Pipeline(OutputOptions(format=fmt, **output), out, err,
                 attributor=Attributor(inventory()),
                 meta={"command": "trace", "targets": ["coredns"], "roles": {COREDNS: "coredns"}})
    for ev in events() if evs is None else evs:
        p.feed(ev)
    code = p.finish()
    return out.getvalue(), err.getvalue(), code


EXPECTED_TABLE = """\
TIME          NAM…CE  CLIENT        WORKLOAD  QNAME             QTYPE  RCODE     ANSWERS  LATENCY  SEEN-AT   NOTE
14:00:00.000  shop    web-5d…x2k4p  Depl…web  evil.example.com  A      NOERROR   203….66  12.0ms   kube…cde  forwarded
14:00:00.001  kub…em  coredn…abcde  Depl…dns  evil.example.com  A      NOERROR   203….66  10.0ms   kube…cde  upstr…/web)
14:00:01.250  -       node/node-a   one …k2p  good.example.com  A      NOERROR   203…3.7  0.5ms    kube…cde  cache
14:00:02.500  shop    web-5d…x2k4p  Depl…web  evil.example.com  A      NOERROR   203….66  0.4ms    kube…cde  cache
14:00:03.000  shop    web-5d…x2k4p  Depl…web  slow.example.com  TXT    -         -        -        kube…cde  no response
14:00:03.500  -       192.16…nown)  -         evil.example.com  AAAA   NXDOMAIN  -        1.0ms    kube…cde  cache

NAMESPACE  POD                   WORKLOAD         NODE    NAMES             COUNT  QTYPES  RCODES     FIRST     LAST
shop       web-5d8f7c9b6-x2k4p   Deployment/web   node-a  evi…om (+1 more)  3      A:2…:1  NOERROR:2  14:00:00  14:00:03
-          192.168.50…(unknown)  -                -       evil.example.com  1      AAAA:1  NXDO…IN:1  14:00:03  14:00:03
-          node/node-a           one of:…t-x7k2p  node-a  good.example.com  1      A:1     NOERROR:1  14:00:01  14:00:01
kube…stem  coredns-7d…f4d-abcde  Deploym…coredns  node-b  evil.example.com  1      A:1     NOERROR:1  14:00:00  14:00:00

Notes:
  192.168.50.7 [192.168.50.7]: not a pod, node or Service address known to the inventory
  node/node-a [172.18.0.10]: InternalIP of node node-a: a node process or one of its hostNetwork pods

Upstream lookups:
  upstream lookup of evil.example.com A at 14:00:00 by kube-system/coredns-7db6d8ff4d-abcde (Deployment/coredns) to
    172.18.0.53 caused by shop/web-5d8f7c9b6-x2k4p (Deployment/web)
"""

EXPECTED_WIDE = """\
TIME          NAMESPACE     CLIENT                        IP               WORKLOAD              QNAME                         QTYPE  RCODE     ANSWERS           LATENCY   SERVER           SEEN-AT                   NOTE
14:00:00.000  shop          web-5d8f7c9b6-x2k4p           10.244.0.5       Deployment/web        evil.example.com              A      NOERROR   203.0.113.66      12.0ms    10.244.1.2       kube-system/coredns-7db6d8ff4d-abcde  forwarded
14:00:00.001  kube-system   coredns-7db6d8ff4d-abcde      10.244.1.2       Deployment/coredns    evil.example.com              A      NOERROR   203.0.113.66      10.0ms    172.18.0.53      kube-system/coredns-7db6d8ff4d-abcde  upstream for shop/web-5d8f7c9b6-x2k4p (Deployment/web)
14:00:01.250  -             node/node-a                   172.18.0.10      one of: kube-system/kube-proxy-a, monitoring/agent-x7k2p  good.example.com              A      NOERROR   203.0.113.7       0.5ms     10.244.1.2       kube-system/coredns-7db6d8ff4d-abcde  cache
14:00:02.500  shop          web-5d8f7c9b6-x2k4p           10.244.0.5       Deployment/web        evil.example.com              A      NOERROR   203.0.113.66      0.4ms     10.244.1.2       kube-system/coredns-7db6d8ff4d-abcde  cache
14:00:03.000  shop          web-5d8f7c9b6-x2k4p           10.244.0.5       Deployment/web        slow.example.com              TXT    -         -                 -         10.244.1.2       kube-system/coredns-7db6d8ff4d-abcde  no response
14:00:03.500  -             192.168.50.7 (unknown)        192.168.50.7     -                     evil.example.com              AAAA   NXDOMAIN  -                 1.0ms     10.244.1.2       kube-system/coredns-7db6d8ff4d-abcde  cache

NAMESPACE    POD                       WORKLOAD                                                  NODE    NAMES                               COUNT    QTYPES     RCODES      FIRST     LAST      IPS           DNS-SERVERS    SEEN-AT                               P50     P95
shop         web-5d8f7c9b6-x2k4p       Deployment/web                                            node-a  evil.example.com, slow.example.com  3        A:2 TXT:1  NOERROR:2   14:00:00  14:00:03  10.244.0.5    10.244.1.2     kube-system/coredns-7db6d8ff4d-abcde  0.4ms   12.0ms
-            192.168.50.7 (unknown)    -                                                         -       evil.example.com                    1        AAAA:1     NXDOMAIN:1  14:00:03  14:00:03  192.168.50.7  10.244.1.2     kube-system/coredns-7db6d8ff4d-abcde  1.0ms   1.0ms
-            node/node-a               one of: kube-system/kube-proxy-a, monitoring/agent-x7k2p  node-a  good.example.com                    1        A:1        NOERROR:1   14:00:01  14:00:01  172.18.0.10   10.244.1.2     kube-system/coredns-7db6d8ff4d-abcde  0.5ms   0.5ms
kube-system  coredns-7db6d8ff4d-abcde  Deployment/coredns                                        node-b  evil.example.com                    1        A:1        NOERROR:1   14:00:00  14:00:00  10.244.1.2    172.18.0.53    kube-system/coredns-7db6d8ff4d-abcde  10.0ms  10.0ms

Notes:
  192.168.50.7 [192.168.50.7]: not a pod, node or Service address known to the inventory
  node/node-a [172.18.0.10]: InternalIP of node node-a: a node process or one of its hostNetwork pods

Upstream lookups:
  upstream lookup of evil.example.com A at 14:00:00 by kube-system/coredns-7db6d8ff4d-abcde (Deployment/coredns) to 172.18.0.53 caused by shop/web-5d8f7c9b6-x2k4p (Deployment/web)
"""

EXPECTED_NDJSON_FIRST_LINES = [
    '{"type":"dns","ts":1764165600.0,"qr":"query","proto":"udp","src":"10.244.0.5","sport":40000,"dst":"10.244.1.2","dport":53,"id":4242,"qname":"evil.example.com","qtype":"A","iface":"","resolver":{"ip":"10.244.1.2","kind":"cluster-dns","bypass":false},"seq":0,"observed_at":"kube-system/coredns-7db6d8ff4d-abcde","client":{"kind":"pod","namespace":"shop","name":"web-5d8f7c9b6-x2k4p","workload":"Deployment/web","node":"node-a","candidates":[]}}',
    '{"type":"dns","ts":1764165600.001,"qr":"query","proto":"udp","src":"10.244.1.2","sport":51000,"dst":"172.18.0.53","dport":53,"id":777,"qname":"evil.example.com","qtype":"A","iface":"","resolver":{"ip":"172.18.0.53","kind":"external","bypass":false},"seq":0,"observed_at":"kube-system/coredns-7db6d8ff4d-abcde","client":{"kind":"pod","namespace":"kube-system","name":"coredns-7db6d8ff4d-abcde","workload":"Deployment/coredns","node":"node-b","candidates":[]},"forward":{"upstream":true,"caused_by":[{"kind":"pod","namespace":"shop","name":"web-5d8f7c9b6-x2k4p","workload":"Deployment/web","node":"node-a","candidates":[],"ip":"10.244.0.5"}],"via":[]}}',
    '{"type":"dns","ts":1764165600.011,"qr":"response","proto":"udp","src":"172.18.0.53","sport":53,"dst":"10.244.1.2","dport":51000,"id":777,"qname":"evil.example.com","qtype":"A","iface":"","rcode":"NOERROR","answers":["203.0.113.66"],"latency_ms":10.0,"resolver":{"ip":"172.18.0.53","kind":"external","bypass":false},"seq":0,"observed_at":"kube-system/coredns-7db6d8ff4d-abcde","client":{"kind":"pod","namespace":"kube-system","name":"coredns-7db6d8ff4d-abcde","workload":"Deployment/coredns","node":"node-b","candidates":[]}}',
]


def test_table_live_lines_then_summary_notes_and_upstream_lookups():
    out, err, code = run("table")
    assert out == EXPECTED_TABLE
    assert err == ""
    assert code == ExitCode.MATCHED


def test_a_capture_across_midnight_dates_its_summary_times():
    """A node capture that ran overnight: HH:MM:SS alone would show a LAST before the FIRST."""
    evening = q(0.0, "10.244.0.5", "10.244.1.2", 1, "evil.example.com")  # 14:00 UTC
    morning = q(13 * 3600.0, "10.244.0.5", "10.244.1.2", 2, "evil.example.com", sport=40001)
    forward = q(13 * 3600.0 + 0.001, "10.244.1.2", "172.18.0.53", 3, "evil.example.com",
                sport=51000)
    out, _, code = run("table", [evening, morning, forward], live=False, width=250)
    assert code == ExitCode.MATCHED
    table = out.split("\n\n")[0].splitlines()
    assert table[0].split()[-2:] == ["FIRST", "LAST"]
    web = next(line for line in table if "web-5d8f7c9b6-x2k4p" in line)
    assert web.endswith("2025-11-26 14:00:00  2025-11-27 03:00:00")
    coredns = next(line for line in table if "coredns-7db6d8ff4d-abcde" in line)
    assert coredns.endswith("2025-11-27 03:00:00  2025-11-27 03:00:00")
    assert "upstream lookup of evil.example.com A at 2025-11-27 03:00:00 by" in out


def test_names_past_the_limit_are_summed_under_their_domain_and_said_so(monkeypatch):
    from kubectl_dnstrace import aggregate

    monkeypatch.setattr(aggregate, "MAX_NAMES", 2)
    evs = [q(0.1 * i, "10.244.0.5", "10.244.1.2", i, f"x{i}.t.evil.example.com", sport=40000 + i)
           for i in range(5)]
    out, _, _ = run("table", evs, live=False, width=250)
    assert ("  shop/web-5d8f7c9b6-x2k4p (Deployment/web): asked more than 2 names (or the trace "
            "more than 100,000): the rest are counted under their parent domains: "
            "*.t.evil.example.com (3)\n") in out
    assert "x0.t.evil.example.com, x1.t.evil.example.com" in out.splitlines()[1]
    out, _, _ = run("json", evs)
    [web] = [c for c in json.loads(out)["summary"] if c["client"]["name"] == "web-5d8f7c9b6-x2k4p"]
    assert [(n["name"], n["count"], n.get("folded", False)) for n in web["names"]] == [
        ("*.t.evil.example.com", 3, True), ("x0.t.evil.example.com", 1, False),
        ("x1.t.evil.example.com", 1, False)]


def test_wide_adds_ips_servers_seen_at_and_latency_percentiles():
    out, err, _ = run("wide")
    assert out == EXPECTED_WIDE
    assert err == ""


def test_table_without_live_lines():
    out, _, _ = run("table", live=False)
    assert out == EXPECTED_TABLE.split("\n\n", 1)[1]


def test_ndjson_streams_one_enriched_event_per_line():
    out, err, _ = run("ndjson")
    lines = out.splitlines()
    assert len(lines) == len(events())
    assert lines[:3] == EXPECTED_NDJSON_FIRST_LINES
    assert err == ""
    for line in lines:
        rec = json.loads(line)
        assert set(rec["client"]) >= {"kind", "namespace", "name", "workload", "node",
                                      "candidates"}
    agent = json.loads(lines[4])
    assert agent["client"]["kind"] == "node"
    assert agent["client"]["candidates"] == ["kube-system/kube-proxy-a", "monitoring/agent-x7k2p"]


EXPECTED_JSON = {
    "kind": "DnsTraceReport",
    "version": 1,
    "meta": {"command": "trace", "roles": {COREDNS: "coredns"}},
    "targets": ["coredns"],
    "summary": [{
        "client": {"kind": "pod", "namespace": "shop", "name": "web-5d8f7c9b6-x2k4p",
                   "workload": "Deployment/web", "node": "node-a", "candidates": [],
                   "ips": ["10.244.0.5"]},
        "count": 1,
        "first": "2025-11-26T14:00:00.000Z",
        "last": "2025-11-26T14:00:00.012Z",
        "qtypes": {"A": 1},
        "rcodes": {"NOERROR": 1},
        "latency_ms": {"p50": 12.0, "p95": 12.0},
        "names": [{
            "name": "evil.example.com", "count": 1, "qtypes": {"A": 1},
            "rcodes": {"NOERROR": 1}, "answers": ["203.0.113.66"],
            "first": "2025-11-26T14:00:00.000Z", "last": "2025-11-26T14:00:00.012Z",
            "observed_at": [COREDNS], "servers": ["10.244.1.2"],
            "latency_ms": {"p50": 12.0, "p95": 12.0, "max": 12.0}, "served": {"cache": 1},
        }],
    }],
    "upstream": [],
    # Queries around cluster DNS, encrypted DNS attempts, nodes not covered (bypass.py).
    "bypassed_cluster_dns": [],
    "encrypted_dns": [],
    "uncovered_nodes": [],
    "encrypted_dns_events": [],
    "notices": [],
    "events": [
        {"type": "dns", "ts": T0, "qr": "query", "proto": "udp", "src": "10.244.0.5",
         "sport": 40000, "dst": "10.244.1.2", "dport": 53, "id": 4242,
         "qname": "evil.example.com", "qtype": "A", "iface": "",
         "resolver": {"ip": "10.244.1.2", "kind": "cluster-dns", "bypass": False}, "seq": 0,
         "observed_at": COREDNS,
         "client": {"kind": "pod", "namespace": "shop", "name": "web-5d8f7c9b6-x2k4p",
                    "workload": "Deployment/web", "node": "node-a", "candidates": []}},
        {"type": "dns", "ts": T0 + 0.012, "qr": "response", "proto": "udp",
         "src": "10.244.1.2", "sport": 53, "dst": "10.244.0.5", "dport": 40000, "id": 4242,
         "qname": "evil.example.com", "qtype": "A", "iface": "", "rcode": "NOERROR",
         "answers": ["203.0.113.66"], "latency_ms": 12.0,
         "resolver": {"ip": "10.244.1.2", "kind": "cluster-dns", "bypass": False}, "seq": 0,
         "observed_at": COREDNS,
         "client": {"kind": "pod", "namespace": "shop", "name": "web-5d8f7c9b6-x2k4p",
                    "workload": "Deployment/web", "node": "node-a", "candidates": []},
         "served": "cache"},  # a CoreDNS capture, and CoreDNS did not ask upstream
    ],
}


def test_json_is_one_document_with_meta_targets_summary_upstream_and_events():
    web = events()[0]
    out, err, code = run("json", [web, r(web, 0.012)])
    assert out == json.dumps(EXPECTED_JSON, indent=2, ensure_ascii=False) + "\n"
    assert err == ""
    assert code == ExitCode.MATCHED


@pytest.mark.parametrize("read", [1 << 20, 5], ids=["whole", "in-5-character-reads"])
def test_json_events_wait_on_disk_and_come_out_exactly_as_one_document(monkeypatch, read):
    """-o json keeps its events in an unlinked temporary file, not in memory; a resolver's
    own query stays in memory (a late cause may still be added) with a marker in its place.
    The document is byte for byte json.dumps(…, indent=2) of itself, in arrival order, however
    the spool is read back."""
    monkeypatch.setattr(render.EventSpool, "READ", read)
    web = q(0.000, "10.244.0.5", "10.244.1.2", 4242, "bücher.example")
    up = q(0.001, "10.244.1.2", "172.18.0.53", 777, "bücher.example", sport=51000)
    # The forward arrives first (its capture's stream was faster): its cause comes later.
    # A later one finds its cause already there: final at once, written out at once.
    again = q(30.0, "10.244.0.5", "10.244.1.2", 4243, "again.example", sport=40001)
    up2 = q(30.001, "10.244.1.2", "172.18.0.53", 778, "again.example", sport=51001)
    fed = [up, web, r(up, 0.010), r(web, 0.012)] + [
        q(1 + i, "10.244.0.5", "10.244.1.2", i, f"n{i}.example.com", sport=30000 + i)
        for i in range(20)] + [again, up2]
    out, _, _ = run("json", fed)
    doc = json.loads(out)
    assert out == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    assert [(e["ts"], e["qr"]) for e in doc["events"]] == [(ev.ts, ev.qr) for ev in fed]
    for forward in (doc["events"][0], doc["events"][-1]):
        assert [c["name"] for c in forward["forward"]["caused_by"]] == ["web-5d8f7c9b6-x2k4p"]
    assert doc["events"][1]["qname"] == "bücher.example"


from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8) | st.integers() | st.booleans() | st.none()
                      | st.floats(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES)
def test_the_hand_made_indentation_is_json_s_own(value):
    doc = json.dumps({"events": [value]}, indent=2, ensure_ascii=False)
    assert doc == '{\n  "events": [\n' + jsontext.element(value) + "\n  ]\n}"


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _JSON_VALUES, min_size=1, max_size=4),
       st.text(max_size=8), _JSON_VALUES)
def test_an_element_ending_in_a_value_laid_out_once_is_the_same_text(obj, name, value):
    """-o json lays each client out once and ends its events with that text."""
    obj.pop(name, None)
    assume(obj)
    laid = jsontext.indented(value, jsontext.MEMBER_PAD)
    assert jsontext.element_ending(obj, name, laid) == jsontext.element({**obj, name: value})


def test_json_upstream_links_name_the_causing_pod():
    out, _, _ = run("json")
    [link] = json.loads(out)["upstream"]
    assert link["text"] == (
        "upstream lookup of evil.example.com A at 14:00:00 by "
        "kube-system/coredns-7db6d8ff4d-abcde (Deployment/coredns) to 172.18.0.53 caused by "
        "shop/web-5d8f7c9b6-x2k4p (Deployment/web)")
    assert [c["name"] for c in link["caused_by"]] == ["web-5d8f7c9b6-x2k4p"]
    assert link["upstream"] is True


@pytest.mark.parametrize("fmt", ["table", "wide", "json", "ndjson"])
def test_nothing_matched_is_exit_1_with_a_clean_stdout(fmt):
    out, err, code = run(fmt, [])
    assert code == ExitCode.NO_MATCH
    if fmt == "json":
        assert json.loads(out)["summary"] == []
    else:
        assert out == ""
    assert err == ("No DNS queries matched.\n" if fmt in ("table", "wide") else "")


def test_notices_go_to_stderr_only():
    out, err = io.StringIO(), io.StringIO()
    p = Pipeline(OutputOptions(format="ndjson"), out, err)
    p.notice("waiting for kube-system/coredns-1")
    assert (out.getvalue(), err.getvalue()) == ("", "waiting for kube-system/coredns-1\n")


def test_nodelocal_dns_is_detected_and_said_in_one_line():
    inv = Inventory.from_objects([pod("node-local-dns-a", "172.18.0.10", namespace="kube-system",
                                      host_network=True, labels={"k8s-app": "node-local-dns"})],
                                 [node("node-a", "172.18.0.10", "10.244.0.0/24")], since=T0)
    out, err = io.StringIO(), io.StringIO()
    Pipeline(OutputOptions(format="table"), out, err, attributor=Attributor(inv))
    assert err.getvalue() == (
        "NodeLocal DNSCache is on (1 node): CoreDNS sees node addresses, not pods; clients are "
        "named from the node-local-dns captures, which see the pods' own addresses\n")


def test_nodelocal_notice_is_not_said_on_a_trace_of_application_pods():
    """pod/, deploy/ ... captures sit in the pods themselves: they see their own addresses
    whatever NodeLocal DNSCache does."""
    from kubectl_dnstrace.model import PodRef

    inv = Inventory.from_objects([pod("node-local-dns-a", "172.18.0.10", namespace="kube-system",
                                      host_network=True, labels={"k8s-app": "node-local-dns"})],
                                 [node("node-a", "172.18.0.10", "10.244.0.0/24")], since=T0)
    err = io.StringIO()
    Pipeline(OutputOptions(format="table"), io.StringIO(), err, attributor=Attributor(inv),
             meta={"targets": [PodRef("shop", "web-1", role="pod")]})
    assert err.getvalue() == ""
    Pipeline(OutputOptions(format="table"), io.StringIO(), err, attributor=Attributor(inv),
             meta={"targets": [PodRef("kube-system", "coredns-1", role="coredns")]})
    assert err.getvalue().startswith("NodeLocal DNSCache is on (1 node)")


def _with_packets(evs: list[DnsEvent]) -> list[DnsEvent]:
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import IP, UDP

    for ev in evs:
        ev.raw = bytes(IP(src=ev.src, dst=ev.dst) / UDP(sport=ev.sport, dport=ev.dport)
                       / DNS(id=ev.id, qr=int(ev.qr == "response"), qd=DNSQR(qname=ev.qname)))
    return evs


@pytest.mark.parametrize("name", ["evidence.pcap", "evidence.pcapng"])
def test_evidence_file_is_0600_with_its_sha256_on_stderr(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"old content, world-readable")
    os.chmod(path, 0o644)
    out, err, _ = run("ndjson", _with_packets(events()), pcap_path=str(path))
    assert os.stat(path).st_mode & 0o777 == 0o600
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    kind = "pcapng" if name.endswith("ng") else "pcap"
    assert err == f"wrote 11 packets to {path} ({kind}, mode 0600); sha256 {digest}\n"
    assert len(out.splitlines()) == 11
    fields = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "ip.src", "-e", "dns.qry.name",
         "-e", "frame.time_epoch"] + (["-e", "frame.comment"] if kind == "pcapng" else []),
        capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(fields) == 11
    first = fields[0].split("\t")
    assert first[:2] == ["10.244.0.5", "evil.example.com"]
    assert abs(float(first[2]) - T0) < 1e-5
    if kind == "pcapng":
        assert first[3] == "shop/web-5d8f7c9b6-x2k4p (Deployment/web) query evil.example.com A"
        assert fields[4].split("\t")[3] == "node/node-a query good.example.com A"


def test_events_without_their_packet_are_counted_not_written(tmp_path):
    path = tmp_path / "e.pcap"
    _, err, _ = run("ndjson", events()[:2], pcap_path=str(path))
    assert re.search(r"wrote 0 packets .*\n2 events came without their packet", err)


@pytest.mark.parametrize(("ts", "text"), [(T0, "14:00:00.000"), (T0 + 0.9996, "14:00:01.000"),
                                          (T0 + 59.0404, "14:00:59.040")])
def test_clock_with_milliseconds_is_utc(ts, text):
    assert render.clock_ms(ts) == text


@pytest.mark.parametrize(("ms", "text"), [(None, "-"), (0.42, "0.4ms"), (12.0, "12.0ms"),
                                          (1500.0, "1.50s")])
def test_latency_text(ms, text):
    assert render.latency(ms) == text


def test_the_fast_ndjson_writer_is_byte_identical_to_the_plain_one():
    odd = q(9.0, "10.244.0.5", "10.244.1.2", 7, 'we"ird\\\\name.ex\u00e4mple.com', "TYPE65534",
            sport=40009)
    evs = [*events(), odd, r(odd, 0.001, "RCODE23", ('"txt with quotes"', "b\u00fccher")),
           DnsEvent(ts=T0 + 11, qr="response", proto="tcp", src="10.244.1.2", sport=53,
                    dst="fd00::5", dport=4, id=1, qname=".", qtype="NS", rcode=None,
                    observed_at="shop/web", iface="eth0", seq=42)]
    # Latency texts are kept per value: 0.0 and -0.0 are one key but two texts.
    evs += [DnsEvent(ts=T0 + 12 + i / 10, qr="response", proto="udp", src="10.244.1.2",
                     sport=53, dst="10.244.0.5", dport=40010 + i, id=i, qname="a.example",
                     qtype="A", rcode="NOERROR", latency_ms=ms, observed_at="shop/web")
            for i, ms in enumerate([0.135, 0.0, -0.0, 0.135, 0.0, 1e-06, 1500.25, 0.135,
                                    12.0, 12, 12.0])]
    attributor = Attributor(inventory())
    writer = render.NdjsonWriter()
    from kubectl_dnstrace.attribution import Attributed
    from kubectl_dnstrace.linking import Linker

    linker = Linker(server_of=attributor.attribute, resolver_captures={COREDNS})
    for ev in evs:
        client = attributor.attribute(ev.src if ev.qr == "query" else ev.dst, ev.ts)
        ann = linker.observe(ev, client)
        a = Attributed(ev, client, ann.link, ann.served)
        assert writer.line(a) == render.ndjson_line(a)
        json.loads(writer.line(a))


def test_an_event_from_an_unheld_pod_address_waits_for_the_pod_watch(monkeypatch):
    """A new pod's first query can arrive before the watch event that carries its IP."""
    import kubectl_dnstrace.pipeline as pipeline_module

    inv = inventory()
    inv.watching = True  # as after start_watch: upserts below play the watch's events
    out, err = io.StringIO(), io.StringIO()
    p = Pipeline(OutputOptions(format="ndjson"), out, err, attributor=Attributor(inv))
    first = q(5.0, "10.244.0.77", "10.244.1.2", 1, "c2.evil.example.com", sport=5000)
    p.feed(first)
    assert out.getvalue() == ""  # waiting: 10.244.0.77 is in node-a's podCIDR, unheld
    inv.upsert_pod(pod("report-29410020-h7k2m", "10.244.0.77", namespace="batch",
                       start=T0 + 4, owner=("Job", "report-29410020")), observed=T0 + 5.5)
    p.feed(r(first))
    names = [json.loads(line)["client"]["name"] for line in out.getvalue().splitlines()]
    assert names == ["report-29410020-h7k2m"] * 2
    # An address that stays unheld is the node's after the wait (here: at once).
    monkeypatch.setattr(pipeline_module, "WATCH_WAIT", 0.0)
    p.feed(q(6.0, "10.244.0.1", "10.244.1.2", 2, "x.example.com", sport=5001))
    p.feed(q(6.1, "10.244.0.5", "10.244.1.2", 3, "y.example.com", sport=5002))
    kinds = [json.loads(line)["client"]["kind"] for line in out.getvalue().splitlines()]
    assert kinds == ["pod", "pod", "node", "pod"]
    assert p.finish() == ExitCode.MATCHED


def test_an_address_that_waited_in_vain_is_not_waited_for_again(monkeypatch):
    """A CNI gateway (behind NodeLocal DNSCache) never shows up in the pod watch: one wait
    per address, not one per event, or every live line would lag WATCH_WAIT behind."""
    import kubectl_dnstrace.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "WATCH_WAIT", 0.05)
    inv = inventory()
    inv.watching = True
    out = io.StringIO()
    p = Pipeline(OutputOptions(format="ndjson"), out, io.StringIO(), attributor=Attributor(inv))

    def lines() -> list[str]:
        return [json.loads(line)["src"] for line in out.getvalue().splitlines()]

    p.feed(q(5.0, "10.244.0.1", "10.244.1.2", 1, "a.example.com", sport=6000))
    assert lines() == []  # the first event from the gateway waits for the watch
    time.sleep(0.06)
    p.tick()
    assert lines() == ["10.244.0.1"]
    p.feed(q(5.1, "10.244.0.1", "10.244.1.2", 2, "b.example.com", sport=6001))
    assert lines() == ["10.244.0.1"] * 2  # at once now
    p.feed(q(5.2, "10.244.0.79", "10.244.1.2", 3, "c.example.com", sport=6002))
    assert lines() == ["10.244.0.1"] * 2  # another unheld address still waits
    p.finish()
    assert lines() == ["10.244.0.1", "10.244.0.1", "10.244.0.79"]


def test_finish_releases_events_still_waiting_for_the_watch():
    inv = inventory()
    inv.watching = True
    out = io.StringIO()
    p = Pipeline(OutputOptions(format="ndjson"), out, io.StringIO(), attributor=Attributor(inv))
    p.feed(q(5.0, "10.244.0.78", "10.244.1.2", 1, "a.example.com"))
    assert out.getvalue() == ""
    p.finish()
    assert json.loads(out.getvalue())["client"]["kind"] == "node"


def test_agent_aggregate_records_are_attributed_counted_and_streamed():
    rec = {"type": "agg", "seq": 812, "ts": T0 + 1, "interval": 1.0, "threshold": 2000,
           "total": 40620, "groups": [
               {"client": "10.244.0.5", "qname": "evil.example.com", "qtype": "A",
                "rcode": None, "count": 20311},
               {"client": "10.244.0.5", "qname": "evil.example.com", "qtype": "A",
                "rcode": "NOERROR", "count": 20309}]}
    out, err = io.StringIO(), io.StringIO()
    p = Pipeline(OutputOptions(format="ndjson"), out, err, attributor=Attributor(inventory()))
    p.feed_aggregate(rec, COREDNS)
    first = json.loads(out.getvalue().splitlines()[0])
    assert first == {"type": "agg", "ts": T0 + 1, "interval": 1.0, "client_ip": "10.244.0.5",
                     "qname": "evil.example.com", "qtype": "A", "rcode": None, "count": 20311,
                     "observed_at": COREDNS,
                     "client": {"kind": "pod", "namespace": "shop", "name": "web-5d8f7c9b6-x2k4p",
                                "workload": "Deployment/web", "node": "node-a", "candidates": []}}
    assert p.finish() == ExitCode.MATCHED
    table_out, table_err = io.StringIO(), io.StringIO()
    t = Pipeline(OutputOptions(format="table"), table_out, table_err,
                 attributor=Attributor(inventory()))
    t.feed_aggregate(rec, COREDNS)
    t.finish()
    row = table_out.getvalue().splitlines()[1].split()
    assert row[:6] == ["shop", "web-5d8f7c9b6-x2k4p", "Deployment/web", "node-a",
                       "evil.example.com", "20311"]


def test_a_live_forward_line_waits_for_a_cause_from_a_slower_stream(monkeypatch):
    """Two captures, two log streams: CoreDNS's own upstream query can arrive before the
    client query that caused it. Its -o ndjson line waits (LINK_WAIT) and then names it."""
    import kubectl_dnstrace.pipeline as pipeline_module

    out, err = io.StringIO(), io.StringIO()
    p = Pipeline(OutputOptions(format="ndjson"), out, err, attributor=Attributor(inventory()))
    web = q(0.000, "10.244.0.5", "10.244.1.2", 4242, "evil.example.com")
    up = q(0.001, "10.244.1.2", "172.18.0.53", 777, "evil.example.com", sport=51000)
    up.observed_at = COREDNS
    p.feed(up)  # the forward first: its cause is still in the other stream
    assert out.getvalue() == ""
    p.feed(web)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["qr"], e["src"]) for e in lines] == [("query", "10.244.0.5"),
                                                    ("query", "10.244.1.2")]
    assert [c["name"] for c in lines[1]["forward"]["caused_by"]] == ["web-5d8f7c9b6-x2k4p"]
    # A forward whose cause never comes is written after LINK_WAIT (tick: no traffic)...
    lonely = q(9.0, "10.244.1.2", "172.18.0.53", 778, "other.example.com", sport=51001)
    lonely.observed_at = COREDNS
    p.feed(lonely)
    p.tick()
    assert len(out.getvalue().splitlines()) == 2  # still waiting
    monkeypatch.setattr(pipeline_module, "LINK_WAIT", 0.0)
    late = q(20.0, "10.244.1.2", "172.18.0.53", 779, "third.example.com", sport=51002)
    late.observed_at = COREDNS
    p.feed(late)
    p.tick()
    names = [json.loads(line)["qname"] for line in out.getvalue().splitlines()]
    assert names[2:] == ["other.example.com", "third.example.com"]
    assert json.loads(out.getvalue().splitlines()[2])["forward"]["caused_by"] == []


def test_a_forward_is_never_lost_at_the_end_of_a_trace():
    out = io.StringIO()
    p = Pipeline(OutputOptions(format="ndjson"), out, io.StringIO(),
                 attributor=Attributor(inventory()))
    up = q(0.001, "10.244.1.2", "172.18.0.53", 777, "evil.example.com", sport=51000)
    up.observed_at = COREDNS
    p.feed(up)
    assert out.getvalue() == ""
    p.finish()
    assert json.loads(out.getvalue())["qname"] == "evil.example.com"


def test_a_late_cause_releases_its_forward_even_behind_another_held_one():
    out = io.StringIO()
    p = Pipeline(OutputOptions(format="ndjson"), out, io.StringIO(),
                 attributor=Attributor(inventory()))
    lonely = q(0.0005, "10.244.1.2", "172.18.0.53", 776, "other.example.com", sport=50999)
    up = q(0.001, "10.244.1.2", "172.18.0.53", 777, "evil.example.com", sport=51000)
    for fwd in (lonely, up):
        fwd.observed_at = COREDNS
        p.feed(fwd)
    p.feed(q(0.000, "10.244.0.5", "10.244.1.2", 4242, "evil.example.com"))
    names = [json.loads(line)["qname"] for line in out.getvalue().splitlines()]
    assert names == ["evil.example.com", "evil.example.com"]  # the cause, then its forward
    assert json.loads(out.getvalue().splitlines()[1])["forward"]["caused_by"]
    p.finish()
    assert json.loads(out.getvalue().splitlines()[2])["qname"] == "other.example.com"


def test_tables_fit_the_terminal_and_stay_lined_up(monkeypatch):
    """Long real names (search-path expansions, CoreDNS pod names, "one of: ...") shortened in
    the middle with "…"; every line within COLUMNS; the columns start where the header's do."""
    long_name = "api.payments.svc.cluster.local.svc.cluster.local.cluster.local"
    evs = [*events(), q(4.0, "10.244.0.5", "10.244.1.2", 9, long_name, sport=40009)]
    monkeypatch.setenv("COLUMNS", "120")
    out = io.StringIO()
    p = Pipeline(OutputOptions(format="table"), out, io.StringIO(),
                 attributor=Attributor(inventory()),
                 meta={"targets": ["coredns"], "roles": {COREDNS: "coredns"}})
    for ev in evs:
        p.feed(ev)
    p.finish()
    text = out.getvalue()
    lines = text.splitlines()
    assert max(map(len, lines)) <= 120
    live, summary = text.split("\n\n")[:2]
    for block in (live, summary):
        rows = block.splitlines()
        starts = [m.start() for m in re.finditer(r"(?<=  )\S", rows[0])]
        for line in rows[1:]:
            for s in starts:  # every cell starts under its header (a last empty one: none)
                assert len(line) <= s or (line[s - 2:s] == "  " and line[s] != " "), (line, s)
    assert "…" in live and long_name not in live
    assert "api.paym" in live  # the start of the name stays...
    assert "r.local  " in live  # ...and its end
    monkeypatch.setenv("COLUMNS", "250")
    json_out, _, _ = run("json", evs)
    assert long_name in json_out  # the JSON keeps it whole


def test_width_falls_back_to_120_when_not_a_tty(monkeypatch):
    from kubectl_dnstrace.columns import shorten, terminal_width

    monkeypatch.delenv("COLUMNS", raising=False)
    assert terminal_width(io.StringIO()) == 120
    monkeypatch.setenv("COLUMNS", "90")
    assert terminal_width(io.StringIO()) == 90
    assert shorten("coredns-5d78c9869d-x7k2p", 12) == "coredn…x7k2p"
    assert shorten("short", 12) == "short"


def test_service_addresses_are_named_svc_ns_name_in_tables_and_carried_in_json():
    """A rogue resolver behind a Service, and an answer that is a Service's ClusterIP."""
    from tests.test_inventory import service

    inv = inventory()
    inv.add_service(service("rogue-dns", "tools", "10.96.7.7"))
    inv.add_service(service("api", "shop", "10.96.3.3"))
    ask = q(0.0, "10.244.0.5", "10.96.7.7", 77, "api.example.com")
    reply = r(ask, answers=("10.96.3.3",))
    out, err = io.StringIO(), io.StringIO()
    p = Pipeline(OutputOptions(format="wide"), out, err, attributor=Attributor(inv),
                 meta={"targets": []})
    p.feed(ask)
    p.feed(reply)
    p.finish()
    line = out.getvalue().splitlines()[1]
    assert "svc/shop/api" in line and "svc/tools/rogue-dns" in line
    assert "svc/tools/rogue-dns" in out.getvalue().split("\n\n")[1]  # DNS-SERVERS
    out = io.StringIO()
    p = Pipeline(OutputOptions(format="ndjson"), out, io.StringIO(), attributor=Attributor(inv))
    p.feed(ask)
    p.feed(reply)
    p.finish()
    first, second = (json.loads(x) for x in out.getvalue().splitlines())
    assert first["services"] == {"10.96.7.7": {"namespace": "tools", "name": "rogue-dns"}}
    assert second["services"] == {"10.96.3.3": {"namespace": "shop", "name": "api"},
                                  "10.96.7.7": {"namespace": "tools", "name": "rogue-dns"}}


def test_evidence_file_is_in_time_order_whatever_order_the_captures_delivered(tmp_path):
    """Two captures' streams interleave with lags: the file is still in time order."""
    path = tmp_path / "e.pcap"
    evs = _with_packets(events())
    late_stream = [e for i, e in enumerate(evs) if i % 2]
    fast_stream = [e for i, e in enumerate(evs) if not i % 2]
    run("ndjson", fast_stream[:3] + late_stream + fast_stream[3:], pcap_path=str(path))
    times = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(times) == len(evs)
    assert [float(t) for t in times] == sorted(float(t) for t in times)
