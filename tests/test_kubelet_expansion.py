"""What the kubelet does to a container's command, and why the plugin's command survives it.

The kubelet expands ``$(NAME)`` and ``$$`` in ``command`` and ``args`` before the runtime runs
them. The first run on a real cluster failed every default trace because the inline agent
program contained ``$(`` and ``$$``. These tests pin the kubelet's rule (the simulated kubelet
applies it) and show that every command the plugin writes reaches the process unchanged.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from kubectl_dnstrace.agent_program import agent_command, inline_program
from kubectl_dnstrace.kube.ephemeral import CaptureSpec, build_container, kubelet_literal
from kubectl_dnstrace.model import PodRef
from tests.lab.cluster.expansion import expand

ENV = {"DNSTRACE_RUN_ID": "a1b2c3", "A": "x", "B": "y"}


@pytest.mark.parametrize(("written", "runs"), [
    ("$(A)", "x"),                    # a defined variable is replaced
    ("$(NOPE)", "$(NOPE)"),           # an undefined one stays as written
    ("$$(A)", "$(A)"),                # $$ is an escaped $, and the ( after it is plain text
    ("$$$(A)", "$x"),
    ("$$", "$"),
    ("$$$$", "$$"),
    ("$(A", "$(A"),                   # no closing parenthesis: not a reference
    ("$b", "$b"),                     # $ before anything else stays
    ("end$", "end$"),                 # a $ at the very end stays
    ("$(A)$(B)", "xy"),
    ("$()", "$()"),
    ("pre$(A)post", "prexpost"),
])
def test_the_kubelets_expansion_rule(written: str, runs: str) -> None:
    assert expand(written, ENV) == runs


@settings(max_examples=500, deadline=None)
@given(text=hs.text(alphabet="$()AB-x \\'\"", max_size=40),
       env=hs.dictionaries(hs.sampled_from(["A", "B", "", "A)"]), hs.text(max_size=3)))
def test_a_kubelet_literal_reaches_the_process_unchanged(text: str, env: dict[str, str]) -> None:
    assert expand(kubelet_literal(text), env) == text


def test_every_element_of_the_container_command_is_written_literal() -> None:
    program = "print('$(DNSTRACE_RUN_ID)', '$$', '$(A', 'end$')"
    spec = CaptureSpec(run_id="a1b2c3", image="python:3.13-alpine",
                       command=["python3", "-c", program, "--domain", "$(A).example.com"])
    container = build_container(spec, PodRef("shop", "web-1", containers=["app"]), [])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DNSTRACE_RUN_ID"] == "a1b2c3"  # a reference that would resolve
    assert expand(program, env) != program     # so unescaped, the program would change
    assert [expand(part, env) for part in container["command"]] == spec.command


def test_the_inline_agent_program_survives_the_kubelet() -> None:
    command = agent_command(["--duration", "60", "--domain", "evil.example.com"], preinstalled=False)
    spec = CaptureSpec(run_id="a1b2c3", image="python:3.13-alpine", command=command)
    container = build_container(spec, PodRef("kube-system", "coredns-1", containers=["coredns"]), [])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert [expand(part, env) for part in container["command"]] == command
    assert inline_program() in command
