"""The agent's wire format on the kubectl side: what ``protocol.decode`` accepts and refuses.

Every line a live trace receives goes through ``decode``, so ``dns`` records take a fast
check (exact JSON types, one pass) and everything else the full check. The two must agree:
the fast check may only say "valid" where the full check does, and ``validate`` as a whole
must refuse exactly what the full check refuses — on hand-built faults and on
hypothesis-generated mutations of real records.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubectl_dnstrace import protocol
from kubectl_dnstrace.protocol import ProtocolError

QUERY = {"type": "dns", "seq": 2, "ts": 1795704421.9726098, "qr": "query", "proto": "udp",
         "src": "10.244.0.101", "sport": 49559, "dst": "10.244.0.53", "dport": 53,
         "id": 40163, "qname": "www.example.com", "qtype": "A", "iface": "eth0"}
RESPONSE = dict(QUERY, seq=3, ts=1795704421.9728622, qr="response", src="10.244.0.53",
                sport=53, dst="10.244.0.101", dport=49559, rcode="NOERROR",
                answers=["10.0.0.7", "10.0.0.8"], latency_ms=0.252)
OTHERS = [
    protocol.hello(1, "0.1.0", ["lo", "eth0"], {"domains": []}, capture="tpacket_v3"),
    protocol.stats(4, 10, 2, 2, 0),
    protocol.error(5, "no CAP_NET_RAW"),
    protocol.bye(6, "deadline"),
    {"type": "agg", "seq": 7, "ts": 1.5, "interval": 1.0, "groups": []},
]


def full_check_refuses(record) -> bool:
    try:
        protocol._check_record(record)
    except ProtocolError:
        return True
    return False


def validate_refuses(record) -> bool:
    try:
        protocol.validate(record)
    except ProtocolError:
        return True
    return False


# ---- valid lines ------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [QUERY, RESPONSE, *OTHERS], ids=lambda r: r["type"])
def test_every_record_the_agent_writes_decodes_to_itself(record):
    line = protocol.encode(record)
    assert protocol.decode(line) == record
    assert protocol.decode(line.encode() + b"\n") == record  # as the log stream yields it


def test_the_fast_check_takes_the_agents_dns_records():
    assert protocol._check_dns_fast(QUERY)
    assert protocol._check_dns_fast(RESPONSE)
    assert protocol._check_dns_fast(dict(RESPONSE, latency_ms=None, answers=[]))
    assert protocol._check_dns_fast(dict(QUERY, ts=1795704421))  # an int is a number too


def test_extra_fields_are_allowed_so_a_newer_agent_can_add_some():
    rec = dict(RESPONSE, tc=True, raw="RQAAHA==", future={"x": 1})
    assert protocol.decode(json.dumps(rec)) == rec


def test_the_shedding_fields_are_extras_both_ways():
    """stats' shed_records, shed_packets, ungrouped, peak_rss_kb and agg's ungrouped and
    behind came later (docs/protocol.md): a record with them decodes, and so does one from
    an older agent without them."""
    new_stats = protocol.stats(9, 100, 90, 10, 3, shed_records=80, shed_packets=7,
                               ungrouped=5, peak_rss_kb=30000)
    new_agg = {"type": "agg", "seq": 10, "ts": 1.5, "interval": 1.0, "threshold": 1560,
               "groups": [{"client": "10.0.0.1", "qname": "a.example", "qtype": "A",
                           "rcode": None, "count": 1}],
               "total": 6, "other_groups": 0, "other_count": 5, "ungrouped": 5, "behind": True}
    for rec in (new_stats, new_agg, protocol.stats(9, 100, 90, 10, 3)):
        assert protocol.decode(protocol.encode(rec)) == rec
    assert protocol.decode(protocol.encode(dict(new_stats, peak_rss_kb=None)))["peak_rss_kb"] is None


def test_whitespace_around_a_record_is_ignored():
    assert protocol.decode("  " + json.dumps(QUERY) + " \r\n") == QUERY


# ---- refused lines ----------------------------------------------------------------------------

BAD_DNS = [
    ("seq is a bool", dict(QUERY, seq=True)),
    ("seq is negative", dict(QUERY, seq=-1)),
    ("seq is a float", dict(QUERY, seq=2.0)),
    ("ts is a string", dict(QUERY, ts="1795704421.97")),
    ("ts is a bool", dict(QUERY, ts=False)),
    ("sport is a float", dict(QUERY, sport=49559.0)),
    ("id is null", dict(QUERY, id=None)),
    ("qname is missing", {k: v for k, v in QUERY.items() if k != "qname"}),
    ("qname is a list", dict(QUERY, qname=["www"])),
    ("qr is unknown", dict(QUERY, qr="answer")),
    ("proto is unknown", dict(QUERY, proto="sctp")),
    ("response without rcode", {k: v for k, v in RESPONSE.items() if k != "rcode"}),
    ("latency is a string", dict(RESPONSE, latency_ms="0.2")),
    ("answers is a string", dict(RESPONSE, answers="10.0.0.7")),
    ("an answer is a number", dict(RESPONSE, answers=["10.0.0.7", 7])),
    ("an answer is an object", dict(RESPONSE, answers=[{"a": 1}])),
    # Times every clock can show; a latency that is a length of time.
    ("ts is NaN", dict(QUERY, ts=float("nan"))),
    ("ts is infinite", dict(QUERY, ts=float("inf"))),
    ("ts is before 1970", dict(QUERY, ts=-1.0)),
    ("ts is past the year 10000", dict(QUERY, ts=253402300800.0)),
    ("latency is NaN", dict(RESPONSE, latency_ms=float("nan"))),
    ("latency is infinite", dict(RESPONSE, latency_ms=float("inf"))),
    ("latency is negative", dict(RESPONSE, latency_ms=-0.5)),
]


@pytest.mark.parametrize("record", [r for _, r in BAD_DNS], ids=[w for w, _ in BAD_DNS])
def test_a_malformed_dns_record_is_refused_by_both_checks(record):
    assert not protocol._check_dns_fast(record)
    with pytest.raises(ProtocolError):
        protocol.decode(json.dumps(record))


@pytest.mark.parametrize("line", [
    "", "   ", "not json", "[1, 2]", '"dns"', "null",
    json.dumps(QUERY) + "x", json.dumps(QUERY) + json.dumps(QUERY),
    "\ufeff" + json.dumps(QUERY), json.dumps(QUERY)[:-1],
    b"\xff\xfe" + json.dumps(QUERY).encode(),
    json.dumps(dict(QUERY, type="dnss")), json.dumps(dict(QUERY, type=["dns"])),
    json.dumps(protocol.hello(1, "0.0.1", [], {}, protocol=2)),
    json.dumps(protocol.bye(9, "tired")),
], ids=repr)
def test_lines_that_are_not_records_raise_protocol_error(line):
    with pytest.raises(ProtocolError):
        protocol.decode(line)


@pytest.mark.parametrize(("line", "fault"), [
    (json.dumps(QUERY).replace('"ts": 1795704421.9726098', '"ts": 1e400'),
     "dns record has a bad 'ts': inf (seconds since 1970, before the year 10000)"),
    (json.dumps(QUERY).replace('"ts": 1795704421.9726098', '"ts": NaN'),
     "not JSON: NaN is not a JSON number"),
    (json.dumps(dict(QUERY, tc=True)).replace("true", "-Infinity"),
     "not JSON: -Infinity is not a JSON number"),
    (json.dumps(RESPONSE).replace('"latency_ms": 0.252', '"latency_ms": -1e400'),
     "dns response record has a bad 'latency_ms': -inf"),
], ids=["ts 1e400", "ts NaN", "Infinity elsewhere", "latency -1e400"])
def test_numbers_json_has_not_and_times_no_clock_shows_are_named(line, fault):
    """A hostile or broken agent line; once let through, "ts": NaN made an ndjson line of
    invalid JSON, and 1e400 ended a table trace where its clock is drawn."""
    with pytest.raises(ProtocolError) as err:
        protocol.decode(line)
    assert str(err.value) == fault


AGG = {"type": "agg", "seq": 8, "ts": 1795704500.001, "interval": 1.0,
       "groups": [{"client": "10.244.0.101", "qname": "www.example.com", "qtype": "A",
                   "rcode": None, "count": 20311}]}
BAD_GROUPS = [
    ("count is text", {"count": "x"}, "agg group record has a bad 'count': 'x'"),
    ("count is a list", {"count": [1]}, "agg group record has a bad 'count': [1]"),
    ("count is a float", {"count": 1e300}, "agg group record has a bad 'count': 1e+300"),
    ("count is negative", {"count": -5}, "agg group record has a bad 'count': -5"),
    ("client is a list", {"client": ["x"]}, "agg group record has a bad 'client': ['x']"),
    ("qname is a list", {"qname": ["a"]}, "agg group record has a bad 'qname': ['a']"),
    ("rcode is a list", {"rcode": ["x"]}, "agg group record has a bad 'rcode': ['x']"),
    ("qtype is missing", {"qtype": None}, "agg group record has a bad 'qtype': None"),
]


@pytest.mark.parametrize(("change", "fault"), [(c, f) for _, c, f in BAD_GROUPS],
                         ids=[w for w, _, _ in BAD_GROUPS])
def test_an_agg_group_is_checked_field_by_field(change, fault):
    """Groups become counts, keys and text: each of these ended a live trace with an
    internal error (int("x"), an unhashable client) before the check."""
    protocol.decode(json.dumps(AGG))  # the agent's own shape passes
    bad = dict(AGG, groups=[dict(AGG["groups"][0], **change)])
    with pytest.raises(ProtocolError) as err:
        protocol.decode(json.dumps(bad))
    assert str(err.value) == fault


@pytest.mark.parametrize(("record", "fault"), [
    (dict(AGG, groups=["10.244.0.101"]), "agg record has a group that is not an object"),
    (dict(AGG, interval=-1.0), "agg record has a bad 'interval': -1.0"),
    (dict(AGG, total="x"), "agg record has a bad 'total': 'x'"),
    (dict(AGG, total=1e400), "agg record has a bad 'total': inf"),
    (dict(AGG, ts=float("inf")), "agg record has a bad 'ts': inf"),
])
def test_an_agg_record_s_groups_interval_and_time_are_checked(record, fault):
    with pytest.raises(ProtocolError) as err:
        protocol._check_record(record)
    assert str(err.value).startswith(fault)


# ---- the fast check against the full check, on mutations -------------------------------------

ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70000), st.floats(allow_nan=False),
    st.text(max_size=4), st.sampled_from(["query", "response", "udp", "tcp", "dns"]),
    st.lists(st.one_of(st.text(max_size=3), st.integers(), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
FIELDS = sorted(set(RESPONSE) | {"tc", "raw"})


@st.composite
def mutated_dns(draw):
    rec = dict(draw(st.sampled_from([QUERY, RESPONSE])))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()):
            rec.pop(name, None)
        else:
            rec[name] = draw(ODD_VALUES)
    return rec


@settings(max_examples=1500, deadline=None)
@given(mutated_dns())
def test_validate_refuses_exactly_what_the_full_check_refuses(record):
    if record.get("type") == "dns" and protocol._check_dns_fast(record):
        assert not full_check_refuses(record)
    assert validate_refuses(record) == full_check_refuses(record)
    # And through the wire: the line json would carry.
    line = json.dumps(record)
    try:
        json.dumps(record, allow_nan=False)
    except ValueError:  # an infinity: Python writes it, and it is not JSON
        refused = True
    else:
        refused = full_check_refuses(json.loads(line))
    try:
        protocol.decode(line)
    except ProtocolError:
        assert refused
    else:
        assert not refused


class Str(str):
    """Not what json gives: the fast check leaves it to the full check."""


def test_subclasses_of_the_json_types_go_to_the_full_check():
    rec = dict(QUERY, qname=Str("www.example.com"))
    assert not protocol._check_dns_fast(rec)
    protocol.validate(rec)  # accepted, by the full check


@pytest.mark.parametrize("raw", [7, None, ["AAAA"], "A", "AAAAA", "Zm9v\u00e4"])
def test_a_raw_packet_that_is_not_base64_text_is_refused(raw):
    from kubectl_dnstrace.model import DnsEvent

    good = {"type": "dns", "seq": 1, "ts": 1.5, "qr": "query", "proto": "udp", "src": "10.0.0.1",
            "sport": 4000, "dst": "10.0.0.2", "dport": 53, "id": 1, "qname": "a.example.com",
            "qtype": "A", "iface": "eth0", "raw": "RQAAHA=="}
    assert DnsEvent.from_record(protocol.decode(json.dumps(good))).raw == b"E\x00\x00\x1c"
    with pytest.raises(ProtocolError, match="bad raw packet"):
        protocol.decode(json.dumps(dict(good, raw=raw)))
    with pytest.raises(ProtocolError, match="bad raw packet"):
        protocol.validate(dict(good, raw=raw, extra=True, ts=1))  # the full check too
