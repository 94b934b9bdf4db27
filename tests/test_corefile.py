"""corefile.py: which server block serves a name, the one ``log`` line added and taken out
again, and the Corefiles that are refused (table tests on real-world shapes)."""

from __future__ import annotations

import pytest

from kubectl_dnstrace import corefile
from kubectl_dnstrace.corefile import CorefileError, add_log_line, parse, remove_log_line

# kubeadm's Corefile (Kubernetes 1.28+), verbatim.
KUBEADM = """.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
"""

# Several zones, a helper block on another port, comments, quotes, a snippet and an import.
MIXED = """# corp DNS
(common) {
    errors
}
import common
example.org:53 example.net {
    import common
    forward . 10.0.0.1   # corp resolvers
    template IN TXT example.org {
        answer "{{ .Name }} 60 IN TXT \\"a } b\\""
    }
}
.:53 {
    forward . 8.8.8.8
    reload 10s
}
cluster.local:5301 {
    bind 127.0.0.1
    whoami
}
"""


def test_parse_finds_server_blocks_zones_and_directives() -> None:
    cf = parse(MIXED)
    assert [b.keys for b in cf.blocks] == [["example.org:53", "example.net"], [".:53"],
                                           ["cluster.local:5301"]]
    assert cf.blocks[0].zones == [("example.org.", 53), ("example.net.", 53)]
    assert [d.name for d in cf.blocks[0].directives] == ["import", "forward", "template"]
    assert cf.reloads
    assert [b.keys for b in corefile.client_blocks(cf)] == [["example.org:53", "example.net"], [".:53"]]


@pytest.mark.parametrize("name, block", [
    ("evil.example.org", "example.org:53 example.net"),
    ("example.net", "example.org:53 example.net"),
    ("evil.example.com", ".:53"),
    ("x.cluster.local", ".:53"),  # the :5301 block is reached only through a forward
])
def test_the_longest_matching_zone_serves_a_name(name, block) -> None:
    assert " ".join(corefile.serving_block(parse(MIXED), name).keys) == block


def test_log_goes_into_the_serving_block_only_with_the_domains() -> None:
    edit = add_log_line(MIXED, "a1b2c3", ["evil.example.org", "evil.example.com", "c2.example.net."])
    assert edit.changed == ["example.org:53 example.net", ".:53"]
    lines = edit.text.splitlines()
    assert lines[6] == ("    log evil.example.org c2.example.net kubectl-dnstrace-run-a1b2c3.invalid"
                        " # kubectl-dnstrace run a1b2c3")
    assert ("    log evil.example.com kubectl-dnstrace-run-a1b2c3.invalid"
            " # kubectl-dnstrace run a1b2c3") in lines
    assert len(edit.text.splitlines()) == len(MIXED.splitlines()) + 2
    assert remove_log_line(edit.text) == MIXED
    assert corefile.runs_in(edit.text) == ["a1b2c3", "a1b2c3"]


def test_without_domains_every_client_block_logs_everything() -> None:
    edit = add_log_line(KUBEADM, "ff0001", [])
    # "." logs every name; the run's own .invalid name makes the configuration its own.
    assert edit.text.splitlines()[1] == (
        "    log . kubectl-dnstrace-run-ff0001.invalid # kubectl-dnstrace run ff0001")
    assert remove_log_line(edit.text, "ff0001") == KUBEADM


def test_removal_takes_only_the_runs_line_and_keeps_other_edits() -> None:
    ours = add_log_line(KUBEADM, "aaaaaa", ["evil.example.com"]).text
    theirs = ours.replace("cache 30", "cache 300") + "# note by a colleague\n"
    back = remove_log_line(theirs, "aaaaaa")
    assert back == KUBEADM.replace("cache 30", "cache 300") + "# note by a colleague\n"
    # Another run's line stays when a run id is given.
    assert remove_log_line(ours, "bbbbbb") == ours


def test_crlf_files_stay_crlf_and_come_back_byte_identical() -> None:
    crlf = KUBEADM.replace("\n", "\r\n")
    edit = add_log_line(crlf, "c0ffee", ["evil.example.com"])
    assert "log evil.example.com kubectl-dnstrace-run-c0ffee.invalid # kubectl-dnstrace run c0ffee\r\n" in edit.text
    assert remove_log_line(edit.text) == crlf


@pytest.mark.parametrize("existing, domains, needed", [
    ("log", ["evil.example.com"], False),
    ("log .", [], False),
    ("log example.com", ["evil.example.com"], False),
    ("log example.com {combined}", ["evil.example.com"], False),
    ("log example.com", ["evil.example.org"], True),
    ("log example.com", [], True),
])
def test_a_block_that_already_logs_the_names_is_left_alone(existing, domains, needed) -> None:
    text = KUBEADM.replace("    errors\n", f"    errors\n    {existing}\n")
    edit = add_log_line(text, "abcdef", domains)
    assert edit.needed is needed
    assert (edit.text == text) is (not needed)


@pytest.mark.parametrize("text, where", [
    (".:53 {\n    errors\n", "never closed"),
    (".:53 {\n}\n}\n", "without a block to close"),
    (".:53\n    errors\n", "not followed by a '{' block"),
    ('.:53 {\n    template "unclosed\n}\n', "quoted string is not closed"),
    ("# nothing\n", "no server block"),
])
def test_unreadable_corefiles_name_the_problem(text, where) -> None:
    with pytest.raises(CorefileError, match=where):
        parse(text)


def test_a_one_line_block_cannot_take_a_line() -> None:
    with pytest.raises(CorefileError, match="written on one line"):
        add_log_line(". { whoami }\n", "abcdef", [])


def test_reload_is_detected_in_any_block() -> None:
    assert parse(KUBEADM).reloads
    assert not parse(KUBEADM.replace("    reload\n", "")).reloads


def test_two_runs_with_the_same_names_differ_in_their_tokens() -> None:
    """CoreDNS hashes the parsed tokens (comments left out): each run's configuration must
    be its own, or a run would take another's earlier reload for its own."""
    def tokens(text: str) -> list[list[str]]:
        return [[d.name, *d.args] for b in parse(text).blocks for d in b.directives]
    one = add_log_line(KUBEADM, "aaaaaa", ["evil.example.com"]).text
    two = add_log_line(KUBEADM, "bbbbbb", ["evil.example.com"]).text
    assert tokens(one) != tokens(two)
