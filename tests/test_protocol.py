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
