"""The installed plugin as kubectl finds it: the real kubectl binary, a temporary PATH.

kubectl discovers plugins as executables named ``kubectl-*`` on PATH, runs
``kubectl-dnstrace`` for ``kubectl dnstrace``, passes its exit status through, and for
``kubectl dnstrace <TAB>`` runs ``kubectl_complete-dnstrace`` (its hidden ``__complete``
command shows what the shell would get).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kubectl_dnstrace import __version__
from kubectl_dnstrace.errors import ExitCode
from tests.conftest import IN_CI

VENV_BIN = Path(sys.executable).parent


def find_kubectl() -> str:
    kubectl = shutil.which("kubectl") or ("/usr/bin/kubectl" if os.path.exists("/usr/bin/kubectl") else None)
    if kubectl is None:
        if IN_CI:
            pytest.fail("CI=true but kubectl is not installed (.ci/run installs it)")
        pytest.skip("kubectl is not installed")
    return kubectl


@pytest.fixture
def plugin_env(tmp_path):
    """PATH = a temp dir with the two plugin executables, then kubectl's own directory."""
    kubectl = find_kubectl()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("kubectl-dnstrace", "kubectl_complete-dnstrace"):
        target = VENV_BIN / name
        assert target.exists(), f"{name} is not installed in {VENV_BIN} (pip install -e .)"
        (bin_dir / name).symlink_to(target)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": f"{bin_dir}:{os.path.dirname(kubectl)}",
        "HOME": str(home),
        "KUBECONFIG": str(home / "no-kubeconfig"),
        "LANG": "C.UTF-8",
    }
    return kubectl, bin_dir, env


def kubectl_run(plugin_env, *args: str) -> subprocess.CompletedProcess:
    kubectl, _, env = plugin_env
    return subprocess.run([kubectl, *args], capture_output=True, text=True, env=env, timeout=120)


def test_kubectl_plugin_list_finds_it(plugin_env):
    _, bin_dir, _ = plugin_env
    done = kubectl_run(plugin_env, "plugin", "list")
    assert done.returncode == 0, done.stderr
    assert str(bin_dir / "kubectl-dnstrace") in done.stdout.splitlines()
    assert "warning" not in done.stderr.lower()


def test_kubectl_dnstrace_help_shows_kubectl_usage_and_examples(plugin_env):
    done = kubectl_run(plugin_env, "dnstrace", "--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Usage: kubectl dnstrace TARGET... [OPTIONS]        capture live DNS in pods"
    assert "    kubectl dnstrace coredns --domain evil.example.com" in lines
    assert "    kubectl dnstrace analyze node7-port53.pcap --domain evil.example.com" in lines


def test_kubectl_dnstrace_version(plugin_env):
    done = kubectl_run(plugin_env, "dnstrace", "--version")
    assert (done.returncode, done.stdout) == (0, f"kubectl-dnstrace {__version__}\n")


def test_exit_status_and_stderr_pass_through_kubectl(plugin_env):
    done = kubectl_run(plugin_env, "dnstrace", "coredns", "-o", "yaml")
    assert done.returncode == ExitCode.USAGE
    assert done.stdout == ""
    assert "unknown output format 'yaml'" in done.stderr
    rbac = kubectl_run(plugin_env, "dnstrace", "rbac", "-n", "shop")
    assert rbac.returncode == 0 and "kind: RoleBinding" in rbac.stdout


def test_kubectl_tab_completion_calls_the_helper(plugin_env):
    done = kubectl_run(plugin_env, "__complete", "dnstrace", "")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == ":4"
    assert {"coredns", "dns", "analyze", "rbac", "pod/", "deploy/"} <= set(lines)
    out = kubectl_run(plugin_env, "__complete", "dnstrace", "coredns", "-o", "nd")
    assert out.stdout.splitlines() == ["ndjson", ":4"]


def test_tab_completion_offers_names_from_the_cluster(plugin_env, tmp_path):
    """Against the simulated API server: pod names, kind-prefixed names, namespaces."""
    from kubernetes import client as k8s
    from kubernetes import config

    from tests.lab.cluster import SimCluster

    kubectl, _, env = plugin_env
    cluster = SimCluster().start()
    try:
        admin = config.new_client_from_config(
            config_file=str(cluster.write_kubeconfig(tmp_path / "admin", user="admin")))
        core = k8s.CoreV1Api(admin)
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        for name in ("web-7d4b9-abcde", "web-7d4b9-fghij", "db-0"):
            core.create_namespaced_pod("shop", {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]},
            })
        env = {**env, "KUBECONFIG": str(cluster.write_kubeconfig(tmp_path / "kc", user="admin",
                                                                  namespace="shop"))}

        def complete(*words: str) -> list[str]:
            done = subprocess.run([kubectl, "__complete", "dnstrace", *words], capture_output=True,
                                  text=True, env=env, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout.splitlines()

        assert complete("pod/") == ["pod/db-0", "pod/web-7d4b9-abcde", "pod/web-7d4b9-fghij", ":4"]
        assert complete("web") == ["web-7d4b9-abcde", "web-7d4b9-fghij", ":4"]
        first = complete("")
        assert {"coredns", "analyze", "pod/", "db-0"} <= set(first)
        namespaces = complete("coredns", "--dns-namespace", "")
        assert "shop" in namespaces and namespaces[-1] == ":4"
    finally:
        cluster.stop()
