"""`kubectl_complete-dnstrace`: what `kubectl dnstrace <TAB>` offers, quickly and silently.

The cluster-backed cases (pod and namespace names) live in test_kubectl_plugin.py, which
runs them against the simulated API server through the real kubectl.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubectl_dnstrace.completion import (
    COMMANDS,
    NO_FILE,
    NO_SPACE,
    OUTPUT_FORMATS,
    TARGET_KINDS,
    Words,
    complete,
    main,
)

HELPER = Path(sys.executable).with_name("kubectl_complete-dnstrace")


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch, tmp_path):
    """No kubeconfig anywhere: completion must fall back to what it knows offline."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_first_word_offers_commands_and_target_kinds():
    names, directive = complete([""])
    assert names == [*COMMANDS, "nodes", *TARGET_KINDS]
    assert "node/" in TARGET_KINDS
    assert directive == NO_FILE


def test_prefix_filters_and_kind_prefixes_keep_the_cursor_on_the_word():
    assert complete(["d"]) == (["dns", "deploy/", "ds/"], NO_FILE)
    assert complete(["an"]) == (["analyze"], NO_FILE)
    # only "pod/" matches: no space after it, the pod name comes next
    assert complete(["po"]) == (["pod/"], NO_FILE | NO_SPACE)


def test_later_targets_offer_no_subcommands():
    names, _ = complete(["coredns", ""])
    assert "analyze" not in names and "rbac" not in names
    assert "dns" in names and "pod/" in names


def test_option_values():
    assert complete(["coredns", "-o", ""]) == (list(OUTPUT_FORMATS), NO_FILE)
    assert complete(["coredns", "--output", "j"]) == (["json"], NO_FILE)
    assert complete(["coredns", "--qtype", "a"]) == (["A", "AAAA", "ANY"], NO_FILE)
    assert complete(["pod/x", "--rcode", "nx"]) == (["NXDOMAIN"], NO_FILE)
    assert complete(["pod/x", "--image-pull-policy", ""])[0] == ["Always", "IfNotPresent", "Never"]
    # a free-form value: nothing to offer, and no file names either
    assert complete(["coredns", "--domain", ""]) == ([], NO_FILE)
    # file arguments fall back to the shell's file completion (no directive)
    assert complete(["coredns", "--pcap", ""]) == ([], None)
    assert complete(["analyze", ""]) == ([], None)


def test_options_come_from_the_real_cli():
    names, directive = complete(["coredns", "--d"])
    assert directive == NO_FILE
    assert set(names) == {"--domain", "--domain-file", "--duration", "--dry-run",
                          "--dns-namespace", "--dns-selector", "--doh-resolvers"}
    analyze_opts, _ = complete(["analyze", "x.pcap", "--"])
    assert "--offline" in analyze_opts and "--dry-run" not in analyze_opts
    rbac_opts, _ = complete(["rbac", "-"])
    assert {"--cluster", "--user", "-n"} <= set(rbac_opts)
    assert "--install-completion" not in rbac_opts


def test_words_skip_option_values_when_finding_targets():
    words = Words(["-n", "shop", "--domain=evil.example.com", "pod/web", "-A"])
    assert words.subcommand == "trace" and not words.explicit
    assert words.positionals == ["pod/web"]
    assert words.value("--namespace", "-n") == "shop"
    assert words.value("--domain") == "evil.example.com"
    explicit = Words(["analyze", "a.pcap", "--offline"])
    assert explicit.subcommand == "analyze" and explicit.positionals == ["a.pcap"]


def test_main_prints_candidates_then_the_directive(capsys):
    assert main(["coredns", "-o", "w"]) == 0
    assert capsys.readouterr() == ("wide\n:4\n", "")
    assert main(["analyze", ""]) == 0
    assert capsys.readouterr() == ("", "")


def test_the_console_script_is_quick_and_silent_with_a_broken_kubeconfig(tmp_path):
    broken = tmp_path / "config"
    broken.write_text("apiVersion: v1\nclusters: [this is not: a kubeconfig\n")
    refused = tmp_path / "refused"
    refused.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    for config in (broken, refused):
        started = time.monotonic()
        done = subprocess.run(
            [str(HELPER), "pod/"], capture_output=True, text=True, timeout=30,
            env={"KUBECONFIG": str(config), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )
        elapsed = time.monotonic() - started
        assert done.returncode == 0
        assert done.stderr == ""
        assert done.stdout == ":4\n"
        assert elapsed < 10, elapsed  # the look-up budget is 3 s; generous for a busy box
