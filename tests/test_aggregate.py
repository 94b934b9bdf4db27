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
    assert list(evil.servers) == ["10.244.1.2"]
    assert evil.latencies == [2.0, 4.0]
    assert evil.served == {"forwarded": 1, "cache": 1}
    assert web.total("rcodes") == Counter({"NOERROR": 2, "NXDOMAIN": 1})
    assert web.servers() == ["10.244.1.2", "10.244.1.3"]
    assert list(web.ips) == ["10.244.0.5"]


def test_one_query_seen_by_two_captures_or_before_and_after_dnat_counts_once():
    before = q(0, "10.244.0.5", "10.96.0.10", 1, "evil.example.com", seen="shop/web")
    after = q(0.0001, "10.244.0.5", "10.244.1.2", 1, "evil.example.com")
    agg = aggregate([(before, WEB), (after, WEB), (r(after), WEB)])
    [web] = agg.clients()
    assert web.count == 1
    assert agg.duplicates == 1
    assert set(web.names["evil.example.com"].observed_at) == {"shop/web",
                                                         "kube-system/coredns-7db6d8ff4d-abcde"}


def test_a_capture_whose_stream_lags_seconds_behind_still_counts_each_query_once():
    """The pod's own capture and CoreDNS's see the same queries; the pod's log stream
    delivers its records 3 s after CoreDNS's (a busy kubelet, a slow connection)."""
    coredns = [q(0.5 * k, "10.244.0.5", "10.244.1.2", k, "evil.example.com", sport=41000 + k)
               for k in range(13)]
    pod_side = [q(0.5 * k + 0.0001, ev.src, ev.dst, ev.id, ev.qname, sport=ev.sport,
                  seen="shop/web") for k, ev in enumerate(coredns)]
    arrivals = sorted([(ev.ts, ev) for ev in coredns] + [(ev.ts + 3, ev) for ev in pod_side],
                      key=lambda pair: pair[0])
    agg = aggregate([(ev, WEB) for _, ev in arrivals])
    [web] = agg.clients()
    assert (web.count, agg.duplicates) == (13, 13)
    assert set(web.names["evil.example.com"].observed_at) == {
        "shop/web", "kube-system/coredns-7db6d8ff4d-abcde"}


def test_a_client_asking_new_names_without_end_stays_bounded_and_keeps_every_count(
        monkeypatch):
    """A pod tunnelling data through DNS asks a new name every time. Past MAX_NAMES its
    names count under their parent domain, then (a second random label) under the last two
    labels, then under "*": the entries stay bounded, no query goes uncounted, and the
    tunnel's domain is what the summary shows."""
    from kubectl_dnstrace import aggregate as rules

    monkeypatch.setattr(rules, "MAX_NAMES", 10)
    monkeypatch.setattr(rules, "MAX_FOLDED", 2)
    names = [f"ordinary{i}.example.org" for i in range(10)]
    names += [f"c{i:04x}.t.evil.example.com" for i in range(40)]  # one random label
    names += [f"c{i:04x}.r{i}.evil.example.com" for i in range(40)]  # two random labels
    names += [f"c{i:04x}.z{i}.other.example" for i in range(20)]
    names += [f"c{i:04x}.q{i}.third.test" for i in range(10)]
    pairs = []
    for i, name in enumerate(names):
        query = q(i * 0.01, "10.244.0.5", "10.244.1.2", i, name, sport=30000 + i)
        pairs += [(query, WEB), (r(query), WEB)]
    agg = aggregate(pairs)
    [web] = agg.clients()
    assert web.count == len(names)
    assert sum(n.count for n in web.names.values()) == len(names)
    kept = {k for k in web.names if not k.startswith("*")}
    assert kept == {f"ordinary{i}.example.org" for i in range(10)}
    folded = {k: n.count for k, n in web.names.items() if k.startswith("*")}
    assert folded == {"*.t.evil.example.com": 40,  # the tunnel's domain, all of it
                      "*.r0.evil.example.com": 1,  # MAX_FOLDED parents; then ...
                      "*.example.com": 39,  # ... the last two labels,
                      "*.other.example": 20,  # up to 2 x MAX_FOLDED entries;
                      "*": 10}  # then one entry for the rest
    assert web.folded_names == len(folded) <= 2 * 2 + 1
    assert {k for k, n in web.names.items() if n.folded} == set(folded)
    assert sum(n.rcodes.get("NOERROR", 0) for n in web.names.values()) == len(names)


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


# ---- the rules spelled out plainly, against the aggregator, on mixed streams --------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kubectl_dnstrace.aggregate import DUPLICATE_WINDOW, MAX_ANSWERS, QUERY_WINDOW  # noqa: E402
from kubectl_dnstrace.model import DnsEvent  # noqa: E402


def reference(items: list[Attributed]) -> tuple[dict, int]:
    """The aggregation rules without any of the aggregator's shortcuts: the last sighting of
    every message in plain dicts (no table generations: fine for a stream in time order), a
    client found by its key on every event, sets for sets."""
    last_seen: dict[tuple, float] = {}  # (qr, client ip, port, id, name, type) -> ts
    out: dict[tuple, dict] = {}
    duplicates = 0
    for a in items:
        ev = a.event
        query = ev.qr == "query"
        cip, port = (ev.src, ev.sport) if query else (ev.dst, ev.dport)
        lname = ev.qname.lower()
        tx = (cip, port, ev.id, lname, ev.qtype)
        prev = last_seen.get((ev.qr, *tx))
        last_seen[(ev.qr, *tx)] = ev.ts
        c = out.get(client_key(a.client))
        if prev is not None and abs(ev.ts - prev) <= DUPLICATE_WINDOW:
            duplicates += 1
            if c is not None and lname in c["names"]:
                c["names"][lname]["observed_at"].add(ev.observed_at)
            continue
        c = out.setdefault(client_key(a.client), {"count": 0, "first": ev.ts, "last": ev.ts,
                                                  "ips": set(), "names": {}})
        n = c["names"].setdefault(lname, {
            "name": ev.qname, "count": 0, "qtypes": Counter(), "rcodes": Counter(),
            "answers": [], "first": ev.ts, "last": ev.ts, "observed_at": set(),
            "servers": set(), "latencies": [], "served": Counter()})
        n["observed_at"].add(ev.observed_at)
        n["servers"].add(ev.dst if query else ev.src)
        c["ips"].add(cip)
        if query:
            counted = True
        else:  # neither its query nor an earlier response seen (copies too) within the window
            asked_at = last_seen.get(("query", *tx))
            counted = all(t is None or abs(ev.ts - t) > QUERY_WINDOW for t in (prev, asked_at))
            if ev.rcode:
                n["rcodes"][ev.rcode] += 1
            for ans in ev.answers:
                if ans not in n["answers"] and len(n["answers"]) < MAX_ANSWERS:
                    n["answers"].append(ans)
            if ev.latency_ms is not None:
                n["latencies"].append(ev.latency_ms)
            if a.served:
                n["served"][a.served] += 1
        if counted:
            n["count"] += 1
            c["count"] += 1
            n["qtypes"][ev.qtype] += 1
        for d in (n, c):
            d["first"], d["last"] = min(d["first"], ev.ts), max(d["last"], ev.ts)
    return out, duplicates


def summary(agg: Aggregator) -> dict:
    return {client_key(cs.client): {
        "count": cs.count, "first": cs.first, "last": cs.last, "ips": set(cs.ips),
        "names": {lname: {
            "name": ns.name, "count": ns.count, "qtypes": Counter(ns.qtypes),
            "rcodes": Counter(ns.rcodes), "answers": list(ns.answers), "first": ns.first,
            "last": ns.last, "observed_at": set(ns.observed_at), "servers": set(ns.servers),
            "latencies": list(ns.latencies), "served": Counter(ns.served)}
            for lname, ns in cs.names.items()}}
        for cs in agg.by_client.values()}


CLIENTS = [WEB, API, Client(kind="node", ip="10.244.0.1", name="node-a"),
           Client(kind="external", ip="8.8.8.8")]


@st.composite
def mixed_stream(draw) -> list[Attributed]:
    """Queries and responses of a few clients, seen by one or two captures, some retried,
    some answered only, names in mixed case; one pod under two Client objects, and
    ``ambiguous`` clients that are a new object on every event."""
    items = []
    ts = 0.0
    for _ in range(draw(st.integers(1, 40))):
        ts += draw(st.sampled_from([0.0, 0.0003, 0.4, 1.5, 31.0]))
        who = draw(st.integers(0, len(CLIENTS) + 1))
        if who == len(CLIENTS):
            client = Client(kind="pod", ip="10.244.0.5", namespace="shop", name="web")
        elif who == len(CLIENTS) + 1:
            client = Client(kind="ambiguous", ip="10.244.0.9", candidates=["a/x", "b/y"])
        else:
            client = CLIENTS[who]
        name = draw(st.sampled_from(["evil.example.com", "EVIL.example.com", "good.example"]))
        query = q(ts, client.ip, draw(st.sampled_from(["10.244.1.2", "10.96.0.10"])),
                  draw(st.integers(1, 3)), name, draw(st.sampled_from(["A", "AAAA"])),
                  sport=draw(st.sampled_from([40000, 40001])))
        answers = draw(st.lists(st.sampled_from([f"10.0.0.{i}" for i in range(25)]),
                                max_size=24))
        response = r(query, draw(st.sampled_from([0.0004, 0.002])),
                     draw(st.sampled_from(["NOERROR", "NXDOMAIN", ""])), answers)
        if draw(st.booleans()):
            response.latency_ms = None
        served = draw(st.sampled_from(["", "cache", "forwarded"]))
        kind = draw(st.sampled_from(["exchange", "query", "response"]))
        events = ([query] if kind != "response" else []) + ([response] if kind != "query" else [])
        for ev in events:
            items.append(Attributed(ev, client, None, served if ev is response else ""))
            if draw(st.booleans()):  # also seen by a second capture, a moment apart
                copy = DnsEvent(**{f: getattr(ev, f) for f in ev.__slots__})
                copy.observed_at, copy.ts = "shop/web", ev.ts + 0.0001
                items.append(Attributed(copy, client, None, ""))
    items.sort(key=lambda a: a.event.ts)  # stable: a copy stays after its original
    return items


@settings(max_examples=300, deadline=None)
@given(mixed_stream())
def test_the_aggregator_follows_the_plain_rules_on_a_mixed_stream(items):
    agg = Aggregator()
    for a in items:
        agg.add(a)
    want, duplicates = reference(items)
    assert summary(agg) == want
    assert agg.duplicates == duplicates
