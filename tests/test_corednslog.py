"""corednslog.py: CoreDNS log lines (as the real CoreDNS 1.13 of ../shared/realk8s writes
them, with the kubelet's timestamps) into events; reload lines classified; the rest counted."""

from __future__ import annotations

import pytest

from kubectl_dnstrace.corednslog import (
    COMBINED_FORMAT,
    DEFAULT_FORMAT,
    LogParser,
    events,
    log_format,
    seconds,
)

TS = "2026-12-07T02:01:32.905608027Z "
# Recorded on the real cluster (test_via_log_real.py) and from its README.
QUERY = '[INFO] 10.244.0.5:42286 - 44600 "A IN evil.example.test. udp 35 false 512" NOERROR qr,aa,rd,ra 68 0.000567379s'


def test_default_format_line_becomes_a_query_and_its_response() -> None:
    line = LogParser().parse(TS + QUERY)
    assert line.kind == "query"
    q, r = events(line, "10.244.0.3", "kube-system/coredns-1", seq=7)
    assert (q.qr, q.src, q.sport, q.dst, q.dport, q.id, q.qname, q.qtype, q.proto) == (
        "query", "10.244.0.5", 42286, "10.244.0.3", 53, 44600, "evil.example.test", "A", "udp")
    assert (r.qr, r.src, r.dst, r.dport, r.rcode, r.answers) == (
        "response", "10.244.0.3", "10.244.0.5", 42286, "NOERROR", [])
    assert r.latency_ms == pytest.approx(0.567379)
    assert r.ts - q.ts == pytest.approx(0.000567379, abs=1e-6)
    assert q.observed_at == "kube-system/coredns-1" and q.seq == 7 and q.iface == "log"


@pytest.mark.parametrize("text, kind", [
    ("[INFO] Reloading", "reloading"),
    ("[INFO] plugin/reload: Running configuration SHA512 = 63e8861cf4b74ed0", "config"),
    ("[INFO] Reloading complete", "reloaded"),
    ("[ERROR] plugin/reload: Corefile changed but reload failed: /etc/coredns/Corefile:24 - "
     "Error during parsing: Unknown directive 'x'", "reload_failed"),
    ("[ERROR] Restart failed: /etc/coredns/Corefile:24 - Error during parsing: Unknown directive 'x'", "other"),
    ("2026/12/07 02:01:32 [INFO] Starting node-cache image: UNKNOWN", "other"),
    (".:53", "other"),
    ("CoreDNS-1.13.2", "other"),
    ("[ERROR] plugin/errors: 2 evil.example.test. A: read udp 10.244.0.3:5 i/o timeout", "other"),
    ("", "other"),
])
def test_lines_are_classified_never_crash(text, kind) -> None:
    parser = LogParser()
    line = parser.parse(TS + text)
    assert line.kind == kind
    assert events(line, "10.0.0.1", "x") == []
    if kind == "config":
        assert line.sha == "63e8861cf4b74ed0"
    if kind == "reload_failed":
        assert line.text.startswith("/etc/coredns/Corefile:24")


def test_unknown_lines_are_counted() -> None:
    parser = LogParser()
    for text in (QUERY, "garbage", "[INFO] half \"A IN", QUERY):
        parser.parse(text)
    assert parser.counts == {"query": 2, "other": 2}


@pytest.mark.parametrize("args, fmt", [
    ([], DEFAULT_FORMAT),
    (["example.com"], DEFAULT_FORMAT),
    (["example.com", "{common}"], DEFAULT_FORMAT),
    (["example.com", "{combined}"], COMBINED_FORMAT),
    (["{remote} {name} {type} {rcode}"], "{remote} {name} {type} {rcode}"),
])
def test_the_format_of_a_log_directive(args, fmt) -> None:
    assert log_format(args) == fmt


def test_combined_and_custom_formats() -> None:
    combined = LogParser(COMBINED_FORMAT).parse(TS + QUERY + ' "QUERY"')
    assert combined.kind == "query" and combined.fields["opcode"] == "QUERY"
    custom = LogParser("{remote} asked {name} {type} -> {rcode} in {duration} ({/meta/x})")
    line = custom.parse(TS + "[INFO] 10.244.0.9 asked c2.evil.test. TXT -> NXDOMAIN in 2ms (-)")
    q, r = events(line, "10.244.0.3", "p")
    assert (q.src, q.sport, q.id, q.qname, q.qtype) == ("10.244.0.9", 0, 0, "c2.evil.test", "TXT")
    assert r.rcode == "NXDOMAIN" and r.latency_ms == pytest.approx(2.0)
    # Our own line (default format) is still read beside a custom one.
    assert custom.parse(TS + QUERY).kind == "query"


def test_ipv6_clients_and_tcp() -> None:
    line = LogParser().parse(TS + '[INFO] [fd00::5]:5353 - 1 "AAAA IN a.b. tcp 35 true 1232" SERVFAIL qr,rd 35 1.5s')
    q, r = events(line, "fd00::3", "p")
    assert (q.src, q.proto, q.qtype, r.rcode, r.latency_ms) == ("fd00::5", "tcp", "AAAA", "SERVFAIL", 1500.0)


def test_a_format_without_the_client_gives_no_event() -> None:
    line = LogParser("{name} {type}").parse(TS + "[INFO] a.b. A")
    assert line.kind == "query" and events(line, "1.1.1.1", "p") == []


@pytest.mark.parametrize("text, value", [("0.000567379s", 0.000567379), ("1.2ms", 0.0012),
                                         ("15µs", 1.5e-5), ("2", 2.0), ("x", None)])
def test_durations(text, value) -> None:
    assert seconds(text) == (pytest.approx(value) if value is not None else None)
