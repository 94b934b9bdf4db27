"""The command line as a user meets it: help, version, usage errors and their exit codes.

``cli.main`` is called in-process (stdout and stderr captured apart) for most cases, and
the installed console script is run as a subprocess where the real exit status matters.
Requests are checked by replacing ``run_trace``/``run_analyze`` for one call: the CLI's job
is to turn flags into a request, and that is what these tests read.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kubectl_dnstrace import __version__
from kubectl_dnstrace.cli import main
from kubectl_dnstrace.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("kubectl-dnstrace")


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("DNSTRACE_DEBUG", raising=False)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    assert run(capsys, "--version") == (0, f"kubectl-dnstrace {__version__}\n", "")


def test_root_help_reads_like_kubectl_and_shows_both_headline_commands(capsys):
    code, out, err = run(capsys, "--help")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("Usage: kubectl dnstrace TARGET... [OPTIONS]")
    assert any(line.strip().startswith("kubectl dnstrace analyze FILE...") for line in lines[:3])
    # Examples are printed as written (click would re-wrap them without "\b").
    assert "    kubectl dnstrace coredns --domain evil.example.com" in lines
    assert "    kubectl dnstrace analyze node7-port53.pcap --domain evil.example.com" in lines
    assert "    kubectl dnstrace rbac --cluster | kubectl apply -f -" in lines
    assert "\b" not in out
    for command in ("trace", "analyze", "rbac"):
        assert re.search(rf"^  {command}\s+\S", out, re.M), command


def test_root_help_lists_every_exit_code(capsys):
    _, out, _ = run(capsys, "-h")
    exit_text = out[out.index("Exit codes:"):]
    for code in ExitCode:
        assert re.search(rf"\b{int(code)}\b", exit_text), code


def test_readme_documents_every_exit_code():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Exit codes"):]
    for code in ExitCode:
        assert re.search(rf"^\| *`?{int(code)}`? *\|", section, re.M), f"README lacks exit code {code}"


@pytest.mark.parametrize(
    ("command", "must_show"),
    [
        ("trace", ["Usage: kubectl dnstrace trace", "Targets", "deploy/NAME", "--domain NAME",
                   "kubectl dnstrace coredns --domain evil.example.com", "--pcap FILE"]),
        ("analyze", ["Usage: kubectl dnstrace analyze", "FILES...", "--offline",
                     "kubectl dnstrace analyze node7-port53.pcap --domain evil.example.com"]),
        ("rbac", ["Usage: kubectl dnstrace rbac", "--cluster", "--user",
                  "kubectl dnstrace rbac -n shop --user alice@example.com | kubectl apply -f -"]),
    ],
)
def test_command_help(capsys, command, must_show):
    code, out, err = run(capsys, command, "--help")
    assert code == 0 and err == ""
    for text in must_show:
        assert text in out, text


def test_unknown_option_is_a_usage_error_on_stderr(capsys):
    code, out, err = run(capsys, "coredns", "--no-such-flag")
    assert code == ExitCode.USAGE
    assert out == ""
    assert "No such option" in err and "--no-such-flag" in err


def test_no_arguments_prints_usage_and_fails(capsys):
    code, out, err = run(capsys)
    assert code == ExitCode.USAGE
    assert "Usage: kubectl dnstrace" in out + err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trace"], "no target given"),
        (["coredns", "-o", "yaml"], "unknown output format 'yaml'"),
        (["coredns", "--duration", "soon"], "is not a duration"),
        (["coredns", "--duration", "0s"], "must be longer than zero"),
        (["coredns", "--domain-file", "/nonexistent/names.txt"], "cannot read"),
        (["analyze"], "Missing argument"),
        (["analyze", "x.pcap", "-o", "xml"], "unknown output format"),
        # A name that can be no DNS name would match nothing and end "No DNS queries
        # matched." as if the name had not been asked.
        (["coredns", "--domain", "evil..example.com"],
         "--domain: 'evil..example.com' is not a DNS name: it has an empty label"),
        (["analyze", "x.pcap", "-d", "a" * 64 + ".example.com"],
         "is not a DNS name: a label is longer than 63 bytes"),
        (["analyze", "x.pcap", "-d", "evil example.com"], "is not a DNS name: it contains a space"),
        (["analyze", "x.pcap", "-d", "a." * 127 + "b"], "is not a DNS name: it is longer than 253"),
    ],
)
def test_usage_errors_name_the_problem_and_exit_2(capsys, args, message):
    code, out, err = run(capsys, *args)
    assert code == ExitCode.USAGE, err
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_a_bare_target_becomes_a_trace_request(capsys, monkeypatch):
    import kubectl_dnstrace.trace as trace_module

    seen = []

    def fake_run_trace(request):
        seen.append(request)
        return ExitCode.NO_MATCH

    monkeypatch.setattr(trace_module, "run_trace", fake_run_trace)
    code, _out, err = run(
        capsys, "coredns", "pod/web-1", "-n", "shop", "-d", "evil.example.com", "-d", "b.example",
        "--qtype", "a", "--rcode", "nxdomain", "--duration", "1m30s", "-o", "ndjson",
        "--kubeconfig", "/k/config", "--context", "prod", "--request-timeout", "5s",
    )
    assert code == ExitCode.NO_MATCH, err
    (request,) = seen
    assert request.targets == ["coredns", "pod/web-1"]
    assert request.cluster.namespace == "shop"
    assert request.cluster.kubeconfig == "/k/config" and request.cluster.context == "prod"
    assert request.cluster.request_timeout == 5.0
    assert request.filters.domains == ["evil.example.com", "b.example"]
    assert request.filters.qtypes == ["A"] and request.filters.rcodes == ["NXDOMAIN"]
    assert request.duration == 90.0
    assert request.output.format == "ndjson"


def test_errors_from_deep_down_become_message_hint_and_code(capsys, monkeypatch):
    import kubectl_dnstrace.trace as trace_module
    from kubectl_dnstrace.errors import Forbidden

    def denied(request):
        raise Forbidden("you may not patch pods/ephemeralcontainers in namespace shop (RBAC)",
                        "ask for: kubectl dnstrace rbac -n shop")

    monkeypatch.setattr(trace_module, "run_trace", denied)
    code, out, err = run(capsys, "pod/web-1", "-n", "shop")
    assert code == ExitCode.FORBIDDEN
    assert out == ""
    assert err == (
        "error: you may not patch pods/ephemeralcontainers in namespace shop (RBAC)\n"
        "ask for: kubectl dnstrace rbac -n shop\n"
    )


def test_installed_console_script_keeps_streams_and_status_apart():
    assert SCRIPT.exists(), f"console script not installed next to {sys.executable}"
    ok = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"kubectl-dnstrace {__version__}\n", "")
    bad = subprocess.run([str(SCRIPT), "coredns", "-o", "yaml"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == ExitCode.USAGE
    assert bad.stdout == ""
    assert bad.stderr.startswith("error: unknown output format 'yaml'\n")


def test_typer_completion_script_names_the_standalone_command():
    # Typer detects the shell from the parent process: run it from bash (the "; exit" keeps
    # bash from exec'ing the command in its own place).
    shown = subprocess.run(["bash", "-c", f'"{SCRIPT}" --show-completion; exit $?'],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "_KUBECTL_DNSTRACE_COMPLETE=complete_bash" in shown.stdout
    assert shown.stdout.rstrip().endswith("kubectl-dnstrace")
    env = {"COMP_WORDS": "kubectl-dnstrace co", "COMP_CWORD": "1",
           "_KUBECTL_DNSTRACE_COMPLETE": "complete_bash", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0
    assert done.stdout.split() == ["coredns"]


def test_readme_commands_are_what_make_and_ci_run():
    """The README's two newcomer commands exist, and CI runs the README's test command."""
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "    make demo " in readme and "    make test " in readme
    for target in ("demo", "test", "dist", "lint"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert re.search(r"^make test\b", ci, re.M)
    assert "tests/scenarios/incident.yaml" in makefile
    assert "kubectl dnstrace coredns --domain $(DEMO_DOMAIN)" in makefile


def test_a_domain_file_line_that_is_no_dns_name_is_named(capsys, tmp_path):
    names = tmp_path / "iocs.txt"
    names.write_text("# IOCs from the alert\nevil.example.com.\n\n.c2.example.net  # typo\n")
    code, out, err = run(capsys, "analyze", "x.pcap", "--domain-file", str(names))
    assert (code, out) == (ExitCode.USAGE, "")
    assert err == (f"error: --domain-file: {names} line 4: '.c2.example.net' is not a DNS name: "
                   "it has an empty label (two dots in a row, or a leading dot)\n"
                   "write names like evil.example.com (a trailing dot is fine)\n")


@pytest.mark.parametrize("name", [".", "EVIL.example.com.", "a\\.b.example", "bücher.example",
                                  "_sip._tcp.example.com", "*.example.com", "a" * 63 + ".com",
                                  "a." * 126 + "b"])
def test_names_that_can_be_dns_names_pass(name):
    from kubectl_dnstrace.agent.filters import name_fault

    assert name_fault(name) is None
