"""DnsFilter: label-boundary, case-insensitive suffix matching; types and rcodes."""

from __future__ import annotations

import pytest

from kubectl_dnstrace.agent.filters import DnsFilter


@pytest.mark.parametrize(
    ("qname", "expected"),
    [
        ("evil.example.com", True),
        ("EVIL.Example.COM", True),
        ("x.y.evil.example.com", True),
        ("notevil.example.com", False),
        ("evil.example.com.au", False),
        ("example.com", False),
        ("vil.example.com", False),
        ("x\\.evil.example.com", False),  # one label "x.evil": not a subdomain
        ("a.x\\.y.evil.example.com", True),
    ],
)
def test_domain_matches_on_label_boundaries(qname, expected):
    assert DnsFilter(domains=["evil.example.com"]).match_name(qname) is expected


def test_trailing_dot_and_case_in_filter_are_normalised():
    assert DnsFilter(domains=["Evil.Example.com."]).match_name("a.evil.example.com")


def test_no_domains_or_root_matches_everything():
    assert DnsFilter().match_name("anything.at.all")
    assert DnsFilter(domains=["."]).match_name("anything.at.all")
    assert not DnsFilter().active


def test_thousands_of_names():
    names = [f"host{i}.zone{i % 50}.example" for i in range(5000)]
    f = DnsFilter(domains=names)
    assert f.match_name("a.b.host4999.zone49.example")
    assert not f.match_name("host5000.zone0.example")
    assert f.describe()["domain_count"] == 5000
    assert len(f.describe()["domains"]) == 20


def test_qtype_filter_names_and_numbers():
    f = DnsFilter(qtypes=["aaaa", "16"])
    assert f.match_question("x.example", 28)
    assert f.match_question("x.example", 16)
    assert not f.match_question("x.example", 1)
    assert f.describe()["qtypes"] == ["AAAA", "TXT"]


def test_rcode_filter():
    f = DnsFilter(rcodes=["NXDOMAIN"])
    assert f.match_rcode(3)
    assert not f.match_rcode(0)
    assert DnsFilter().match_rcode(2)


def test_unknown_type_is_a_value_error():
    with pytest.raises(ValueError, match="unknown query type"):
        DnsFilter(qtypes=["NOPE"])
