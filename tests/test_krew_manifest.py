"""The Krew manifests follow Krew's rules, and the archive installs the way Krew installs it.

Krew (krew.sigs.k8s.io) validates a plugin manifest before installing: apiVersion
``krew.googlecontainertools.github.com/v1alpha2``, kind ``Plugin``, a safe name, a
``v``-prefixed semantic version, a one-line shortDescription, and per platform a selector,
an http(s) ``uri``, a 64-hex ``sha256``, a relative ``bin`` and at least one ``files``
operation; no two platforms may match the same os/arch. Installing means: download, check
the sha256, extract, move the files named by ``files`` into the plugin's directory, and
link ``kubectl-<name>`` to ``bin`` on PATH. The install test does exactly that in a temp
dir, then runs the plugin through the real kubectl with an empty environment.

``krew-manifest.yaml`` (top level) is the manifest of the latest release: ``make
krew-manifest`` copies ``dist/dnstrace.yaml`` over it when a release is cut, so its sha256
may lag behind the code; every other field must match what the build renders.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from kubectl_dnstrace import __version__
from tests.release_build import ROOT, Release, release
from tests.test_kubectl_plugin import find_kubectl

SEMVER = re.compile(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
OSES = ("linux", "darwin", "windows")
ARCHES = ("amd64", "arm64", "386", "arm", "ppc64le", "s390x")


def load_build_module():
    spec = importlib.util.spec_from_file_location("build_dist", ROOT / "packaging" / "build_dist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def selector_matches(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions In/NotIn)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
    return True


def krew_problems(manifest: dict) -> list[str]:
    """What Krew's validation (and its index's review rules) would reject."""
    problems = []
    if manifest.get("apiVersion") != "krew.googlecontainertools.github.com/v1alpha2":
        problems.append("apiVersion")
    if manifest.get("kind") != "Plugin":
        problems.append("kind")
    name = (manifest.get("metadata") or {}).get("name", "")
    if not NAME.match(name) or name.startswith("kubectl"):
        problems.append(f"name {name!r}")
    spec = manifest.get("spec") or {}
    if not SEMVER.match(str(spec.get("version", ""))):
        problems.append(f"version {spec.get('version')!r}")
    short = spec.get("shortDescription", "")
    if not short or "\n" in short.strip() or len(short) > 50:
        problems.append("shortDescription must be one short line")
    for field in ("description", "caveats"):
        if not str(spec.get(field, "")).strip():
            problems.append(f"{field} missing")
    if not str(spec.get("homepage", "")).startswith("https://"):
        problems.append("homepage")
    platforms = spec.get("platforms") or []
    if not platforms:
        problems.append("no platforms")
    for i, platform in enumerate(platforms):
        where = f"platforms[{i}]"
        if not platform.get("selector"):
            problems.append(f"{where}: selector")
        if not re.match(r"^https?://", str(platform.get("uri", ""))):
            problems.append(f"{where}: uri")
        if not re.fullmatch(r"[0-9a-f]{64}", str(platform.get("sha256", ""))):
            problems.append(f"{where}: sha256")
        binary = str(platform.get("bin", ""))
        if not binary or binary.startswith("/") or ".." in binary.split("/"):
            problems.append(f"{where}: bin")
        files = platform.get("files") or []
        if not files:
            problems.append(f"{where}: files (Krew refuses a platform without file operations)")
        for op in files:
            if not op.get("from") or not op.get("to") or ".." in str(op.get("to")).split("/"):
                problems.append(f"{where}: file operation {op}")
        if not any(op.get("from") == "LICENSE" for op in files):
            problems.append(f"{where}: LICENSE not installed")
    for os_name, arch in itertools.product(OSES, ARCHES):
        labels = {"os": os_name, "arch": arch}
        matching = [p for p in platforms if selector_matches(p.get("selector") or {}, labels)]
        if len(matching) > 1:
            problems.append(f"selectors overlap on {os_name}/{arch}")
    return problems


def test_the_rules_reject_what_krew_rejects():
    good = yaml.safe_load((ROOT / "krew-manifest.yaml").read_text())
    assert krew_problems(good) == []
    bad = yaml.safe_load((ROOT / "krew-manifest.yaml").read_text())
    bad["spec"]["version"] = "0.1.0"
    bad["spec"]["platforms"][0]["files"] = []
    bad["spec"]["platforms"][1]["sha256"] = "abc"
    bad["spec"]["platforms"][2]["selector"] = {"matchLabels": {"os": "linux"}}
    problems = krew_problems(bad)
    assert "version '0.1.0'" in problems
    assert any("platforms[0]: files" in p for p in problems)
    assert "platforms[1]: sha256" in problems
    assert any(p.startswith("selectors overlap on linux/") for p in problems)


def test_top_level_manifest_follows_the_rules_and_the_template():
    text = (ROOT / "krew-manifest.yaml").read_text()
    manifest = yaml.safe_load(text)
    assert krew_problems(manifest) == []
    spec = manifest["spec"]
    assert manifest["metadata"]["name"] == "dnstrace"
    assert spec["version"] == f"v{__version__}"
    shas = {p["sha256"] for p in spec["platforms"]}
    assert len(shas) == 1, "one archive serves every platform"
    build = load_build_module()
    assert text == build.render_manifest(__version__, shas.pop()), \
        "krew-manifest.yaml drifted from the template: run make krew-manifest"
    caveats = spec["caveats"]
    for needed in ("3.10", "3.9", "SHIV_ROOT", "kubectl dnstrace rbac", "ephemeral", "Falco"):
        assert needed in caveats, needed
    covered = {(p["selector"]["matchLabels"]["os"], p["selector"]["matchLabels"]["arch"])
               for p in spec["platforms"]}
    assert covered == {("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64"), ("darwin", "arm64")}


@pytest.mark.slow
def test_built_manifest_matches_the_built_archive(tmp_path_factory):
    rel = release(tmp_path_factory)
    manifest = yaml.safe_load(rel.manifest.read_text())
    assert krew_problems(manifest) == []
    digest = hashlib.sha256(rel.archive.read_bytes()).hexdigest()
    for platform in manifest["spec"]["platforms"]:
        assert platform["sha256"] == digest
        assert platform["uri"].endswith(f"/v{__version__}/{rel.archive.name}")


def krew_install(rel: Release, root: Path) -> Path:
    """Install like ``kubectl krew install --manifest=... --archive=...``; returns the bin dir."""
    manifest = yaml.safe_load(rel.manifest.read_text())
    platform = next(p for p in manifest["spec"]["platforms"]
                    if selector_matches(p["selector"], {"os": "linux", "arch": "amd64"}))
    downloaded = root / "download" / rel.archive.name
    downloaded.parent.mkdir(parents=True)
    shutil.copyfile(rel.archive, downloaded)
    assert hashlib.sha256(downloaded.read_bytes()).hexdigest() == platform["sha256"]
    extracted = root / "extract"
    with tarfile.open(downloaded) as tar:
        tar.extractall(extracted, filter="data")
    install = root / "store" / manifest["metadata"]["name"] / manifest["spec"]["version"]
    install.mkdir(parents=True)
    for op in platform["files"]:
        matches = [p for p in extracted.rglob("*")
                   if fnmatch.fnmatch(str(p.relative_to(extracted)), op["from"])]
        assert matches, f"file operation {op} matched nothing in the archive"
        for path in matches:
            target = install / op["to"] / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)
    binary = install / platform["bin"]
    assert binary.is_file() and os.access(binary, os.X_OK)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / f"kubectl-{manifest['metadata']['name']}").symlink_to(binary)
    return bin_dir


def tiny_pcap(path: Path) -> None:
    """A query for evil.example.com from a pod IP to the cluster DNS, and its answer."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    query = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.244.1.7", dst="10.96.0.10") / UDP(sport=40000, dport=53)
             / DNS(id=4242, rd=1, qd=DNSQR(qname="evil.example.com", qtype="A")))
    answer = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.96.0.10", dst="10.244.1.7") / UDP(sport=53, dport=40000)
              / DNS(id=4242, qr=1, rd=1, ra=1, qd=DNSQR(qname="evil.example.com", qtype="A"),
                    an=DNSRR(rrname="evil.example.com", type="A", ttl=30, rdata="203.0.113.9")))
    benign = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.244.2.9", dst="10.96.0.10") / UDP(sport=40001, dport=53)
              / DNS(id=7, rd=1, qd=DNSQR(qname="api.shop.svc.cluster.local", qtype="A")))
    query.time, answer.time, benign.time = 1764000000.0, 1764000000.004, 1764000000.5
    wrpcap(str(path), [query, answer, benign])


PODS_JSON = {
    "apiVersion": "v1", "kind": "List",
    "items": [{
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "report-29123-abcde", "namespace": "batch",
                     "creationTimestamp": "2025-11-24T00:00:00Z",
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                          "name": "report-29123", "controller": True,
                                          "uid": "u-1"}]},
        "spec": {"nodeName": "node-7", "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}]},
    }],
}


@pytest.mark.slow
def test_krew_style_install_runs_through_kubectl_with_an_empty_environment(tmp_path_factory, tmp_path):
    kubectl = find_kubectl()
    rel = release(tmp_path_factory)
    bin_dir = krew_install(rel, tmp_path / "krew")
    home = tmp_path / "home"
    home.mkdir()
    # What a user's shell has at most: the plugin's bin dir and the system's. No venv, no
    # PYTHONPATH, nothing inherited: a dependency missing from the zipapp fails here.
    env = {"PATH": f"{bin_dir}:{os.path.dirname(kubectl)}:/usr/bin:/bin", "HOME": str(home),
           "PYTHONNOUSERSITE": "1", "KUBECONFIG": str(home / "none")}

    def kubectl_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()), kubectl, *args],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    listed = kubectl_run("plugin", "list")
    assert str(bin_dir / "kubectl-dnstrace") in listed.stdout, listed.stderr
    version = kubectl_run("dnstrace", "--version")
    assert (version.returncode, version.stdout) == (0, f"kubectl-dnstrace {__version__}\n"), version.stderr

    # The same file is kubectl's completion helper when linked under that name.
    (bin_dir / "kubectl_complete-dnstrace").symlink_to((bin_dir / "kubectl-dnstrace").resolve())
    completed = kubectl_run("__complete", "dnstrace", "co")
    assert completed.stdout.splitlines() == ["coredns", ":4"], completed.stderr

    pcap = tmp_path / "node7-port53.pcap"
    tiny_pcap(pcap)
    pods = tmp_path / "pods.json"
    pods.write_text(json.dumps(PODS_JSON))
    done = kubectl_run("dnstrace", "analyze", str(pcap), "--pods", str(pods),
                       "--domain", "evil.example.com", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    text = json.dumps(report)
    assert "evil.example.com" in text
    assert "report-29123-abcde" in text
    assert "api.shop.svc.cluster.local" not in text


@pytest.mark.lab
@pytest.mark.slow
def test_the_installed_release_traces_the_incident(tmp_path_factory, tmp_path):
    """The Krew-installed single file, not the development install, runs a live trace:
    kubeconfig loading, watches, log streams and the exec that stops the agents all come
    from the bundled libraries."""
    from tests.conftest import require_lab
    from tests.lab.scenario import ScenarioLab

    require_lab()
    kubectl = find_kubectl()
    rel = release(tmp_path_factory)
    bin_dir = krew_install(rel, tmp_path / "krew")
    home = tmp_path / "home"
    home.mkdir()
    with ScenarioLab(ROOT / "tests" / "scenarios" / "incident.yaml") as sl:
        env = {"PATH": f"{bin_dir}:{os.path.dirname(kubectl)}:/usr/bin:/bin", "HOME": str(home),
               "KUBECONFIG": str(sl.kubeconfig), "PYTHONNOUSERSITE": "1"}
        done = subprocess.run(
            [kubectl, "dnstrace", "coredns", "--domain", "evil.example.com", "--duration", "8s",
             "-o", "json"],
            env=env, capture_output=True, text=True, timeout=240,
        )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert "no pods/exec permission" not in done.stderr
    report = json.loads(done.stdout)
    pods = {s["client"].get("name") for s in report["summary"]}
    assert "checkout-84d6c7b9f-tw7pn" in pods, report["summary"]
