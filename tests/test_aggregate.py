"""Aggregation as a sandwich: attributed events in, per-client per-name statistics out."""

from __future__ import annotations

from collections import Counter

from kubectl_dnstrace.aggregate import Aggregator, client_key, percentile
from kubectl_dnstrace.attribution import Attributed
from kubectl_dnstrace.model import Client
from tests.test_linking import q, r

WEB = Client(kind="pod", ip="10.244.0.5", namespace="shop", name="web", workload="Deployment/web",
             node="node-a")
API = Client(kind="pod", ip="10.244.1.5", namespace="shop", name="api-0", node="node-b")


def aggregate(pairs) -> Aggregator:
    agg = Aggregator()
    for ev, client, *served in pairs:
        agg.add(Attributed(ev, client, None, served[0] if served else ""))
    return agg


def test_counts_types_rcodes_answers_times_servers_and_latency_per_client_and_name():
    q1 = q(0, "10.244.0.5", "10.244.1.2", 1, "evil.example.com")
    q2 = q(5, "10.244.0.5", "10.244.1.2", 2, "EVIL.example.com", "AAAA", sport=40001)
    q3 = q(6, "10.244.0.5", "10.244.1.3", 3, "good.example.com", sport=40002)
    q4 = q(7, "10.244.1.5", "10.244.1.2", 4, "evil.example.com")
    agg = aggregate([
        (q1, WEB), (r(q1, 0.002), WEB, "forwarded"),
        (q2, WEB), (r(q2, 0.004, "NOERROR", ()), WEB, "cache"),
        (q3, WEB), (r(q3, 0.010, "NXDOMAIN", ()), WEB),
        (q4, API),
    ])
    web, api = agg.clients()
    assert web.client == WEB and api.client == API
    assert (web.count, api.count) == (3, 1)
    evil = web.names["evil.example.com"]
    assert evil.name == "evil.example.com"  # first spelling kept, counted case-insensitively
    assert evil.count == 2
    assert evil.qtypes == {"A": 1, "AAAA": 1}
    assert evil.rcodes == {"NOERROR": 2}
    assert list(evil.answers) == ["203.0.113.66"]
    assert (evil.first, evil.last) == (q1.ts, q2.ts + 0.004)
    assert evil.servers == {"10.244.1.2"}
    assert evil.latencies == [2.0, 4.0]
    assert evil.served == {"forwarded": 1, "cache": 1}
    assert web.total("rcodes") == Counter({"NOERROR": 2, "NXDOMAIN": 1})
    assert web.servers() == ["10.244.1.2", "10.244.1.3"]
    assert web.ips == {"10.244.0.5"}


def test_one_query_seen_by_two_captures_or_before_and_after_dnat_counts_once():
    before = q(0, "10.244.0.5", "10.96.0.10", 1, "evil.example.com", seen="shop/web")
    after = q(0.0001, "10.244.0.5", "10.244.1.2", 1, "evil.example.com")
    agg = aggregate([(before, WEB), (after, WEB), (r(after), WEB)])
    [web] = agg.clients()
    assert web.count == 1
    assert agg.duplicates == 1
    assert web.names["evil.example.com"].observed_at == {"shop/web",
                                                         "kube-system/coredns-7db6d8ff4d-abcde"}


def test_a_response_without_its_query_still_counts_once():
    # --rcode NXDOMAIN hides queries, or the capture started mid-exchange.
    only_answer = r(q(0, "10.244.0.5", "10.244.1.2", 1, "gone.example.com"), rcode="NXDOMAIN")
    agg = aggregate([(only_answer, WEB)])
    assert agg.clients()[0].count == 1
    assert agg.clients()[0].names["gone.example.com"].rcodes == {"NXDOMAIN": 1}


def test_a_retry_with_a_new_id_is_another_query():
    a = q(0, "10.244.0.5", "10.244.1.2", 1, "evil.example.com")
    b = q(0.5, "10.244.0.5", "10.244.1.2", 2, "evil.example.com")
    assert aggregate([(a, WEB), (b, WEB)]).clients()[0].count == 2


def test_client_keys_group_pods_nodes_and_addresses():
    assert client_key(WEB) == ("pod", "shop", "web")
    assert client_key(Client(kind="node", ip="10.244.0.1", name="node-a")) == \
        client_key(Client(kind="node", ip="172.18.0.10", name="node-a"))
    assert client_key(Client(kind="external", ip="8.8.8.8")) == ("external", "8.8.8.8")


def test_nearest_rank_percentiles():
    values = sorted(float(x) for x in range(1, 101))
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) is None


def test_agent_aggregates_count_queries_and_rcodes_per_client_and_name():
    agg = Aggregator()
    agg.add_group(WEB, "10.244.0.5", "Evil.example.com", "A", None, 20311, 100.0, "cap")
    agg.add_group(WEB, "10.244.0.5", "evil.example.com", "A", "NOERROR", 20309, 100.0, "cap")
    agg.add_group(WEB, "10.244.0.5", "evil.example.com", "A", None, 5, 101.0, "cap")
    [web] = agg.clients()
    evil = web.names["evil.example.com"]
    assert (web.count, evil.count) == (20316, 20316)
    assert evil.qtypes == {"A": 20316} and evil.rcodes == {"NOERROR": 20309}
    assert (evil.first, evil.last) == (100.0, 101.0)
