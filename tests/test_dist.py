"""The release archive: one pure-Python zipapp with every dependency, built reproducibly.

These tests build the release once (``make dist``'s script, into a temp dir), read the
archive and the zipapp inside it, run the zipapp with an isolated interpreter (``-I -S``:
no site-packages, no user site, no PYTHONPATH, so a missing bundled dependency shows), and
build a second time from a copy of the checkout in another directory to prove the bytes
do not depend on where or when the build ran.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import types
import zipfile
from pathlib import Path

import pytest

from kubectl_dnstrace import __version__
from tests.release_build import ROOT, Release, copy_tree, release, run_build

pytestmark = pytest.mark.slow

COMPILED = (".so", ".pyd", ".dylib", ".dll")
MUST_BUNDLE = ("kubectl_dnstrace", "kubernetes", "yaml", "typer", "click", "scapy", "tabulate",
               "requests", "urllib3", "dateutil", "websocket", "certifi", "rich", "shellingham",
               "oauthlib", "requests_oauthlib", "durationpy", "six.py", "idna",
               "charset_normalizer")
MUST_NOT_BUNDLE = ("aiohttp", "pydantic", "pydantic_core", "multidict", "yarl", "frozenlist",
                   "_yaml/_yaml")


@pytest.fixture(scope="module")
def rel(tmp_path_factory) -> Release:
    return release(tmp_path_factory)


@pytest.fixture(scope="module")
def zipapp(rel, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(rel.archive) as tar:
        tar.extractall(out, filter="data")
    return out / "kubectl-dnstrace"


def modern_python() -> str:
    """A system python3 >= 3.10 to run the zipapp with, as a user's machine would."""
    for candidate in ("/usr/bin/python3", sys.executable):
        done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                              capture_output=True, text=True)
        if done.stdout.strip() == "True":
            return candidate
    pytest.fail("no python3 >= 3.10 found")


def interpreters(lo: tuple[int, int], hi: tuple[int, int]) -> list[str]:
    """Other python3.X interpreters on this machine (pyenv or PATH) with lo <= X < hi."""
    found = []
    for minor in range(lo[1], hi[1]):
        name = f"python3.{minor}"
        path = shutil.which(name)
        pyenv = sorted(Path(os.path.expanduser("~/.pyenv/versions")).glob(f"3.{minor}.*/bin/python3"))
        if pyenv:
            path = str(pyenv[-1])
        if path:
            found.append(path)
    return found


def run_app(python: str, app: Path, *args: str, home: Path, extra_env: dict | None = None):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", **(extra_env or {})}
    return subprocess.run([python, "-I", "-S", str(app), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_archive_holds_the_executable_license_and_readme_with_fixed_metadata(rel):
    assert rel.archive.name == f"kubectl-dnstrace_{__version__}.tar.gz"
    raw = rel.archive.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\0\0\0\0", "gzip header carries a timestamp"
    assert raw[3] & 0x08 == 0, "gzip header carries a file name"
    with tarfile.open(rel.archive) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["LICENSE", "README.md", "kubectl-dnstrace"]
    modes = {m.name: m.mode for m in members}
    assert modes == {"LICENSE": 0o644, "README.md": 0o644, "kubectl-dnstrace": 0o755}
    for member in members:
        assert member.isfile()
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == rel.epoch
    with tarfile.open(rel.archive) as tar:
        assert tar.extractfile("LICENSE").read() == (ROOT / "LICENSE").read_bytes()


def test_zipapp_is_pure_python_and_bundles_every_dependency(zipapp, rel):
    data = zipapp.read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(zipapp) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        main_py = zf.read("__main__.py").decode()
    assert names == sorted(names), "entries are not in a fixed order"
    compiled = [n for n in names if n.endswith(COMPILED) or ".so." in n]
    assert compiled == []
    site = {n.split("/")[1] for n in names if n.startswith("site-packages/")}
    for package in MUST_BUNDLE:
        assert package in site, f"{package} is not bundled"
    for package in MUST_NOT_BUNDLE:
        assert not any(n.startswith(f"site-packages/{package}/") for n in names), package
    assert not [n for n in names if n.endswith(("direct_url.json", "/RECORD"))]
    assert not [n for n in names if n.startswith("site-packages/bin/")]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    stamp = time.gmtime(rel.epoch)
    epoch_date = (*stamp[:5], stamp[5] // 2 * 2)  # zip times have a 2-second resolution
    for info in infos:
        assert info.external_attr >> 16 == 0o100644, info.filename
        assert info.date_time == epoch_date, info.filename
    # The version guard runs before shiv's bootstrap unpacks anything.
    assert main_py.index("sys.version_info < (3, 10)") < main_py.index("import _bootstrap")


def test_bundled_versions_are_the_pinned_release_set(zipapp):
    pins = {}
    for line in (ROOT / "packaging" / "requirements-release.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "_", name).lower()] = version
    with zipfile.ZipFile(zipapp) as zf:
        dist_infos = {n.split("/")[1] for n in zf.namelist() if ".dist-info/" in n}
    bundled = {}
    for info in dist_infos:
        name, version = info[: -len(".dist-info")].rsplit("-", 1)
        bundled[re.sub(r"[-_.]+", "_", name).lower()] = version
    assert bundled.pop("kubectl_dnstrace") == __version__
    assert bundled == pins


def test_runs_under_an_isolated_interpreter(zipapp, tmp_path):
    python = modern_python()
    home = tmp_path / "home"
    home.mkdir()
    version = run_app(python, zipapp, "--version", home=home)
    assert (version.returncode, version.stdout) == (0, f"kubectl-dnstrace {__version__}\n"), version.stderr
    assert any(p.name.startswith("kubectl-dnstrace_") for p in (home / ".shiv").iterdir())
    rbac = run_app(python, zipapp, "rbac", "--cluster", home=home)
    assert rbac.returncode == 0 and "kind: ClusterRoleBinding" in rbac.stdout, rbac.stderr
    # The trace path imports the kubernetes client (without aiohttp) and fails cleanly.
    trace = run_app(python, zipapp, "coredns", "--kubeconfig", str(tmp_path / "none"), home=home)
    assert trace.returncode == 3, trace.stderr
    assert trace.stderr.startswith("error: no kubeconfig found"), trace.stderr
    assert "Traceback" not in trace.stderr


def test_every_supported_python_here_runs_an_analyze(zipapp, tmp_path):
    """3.10 (the oldest supported) up to the newest one on this machine, each isolated."""
    from tests.test_krew_manifest import tiny_pcap

    pythons = interpreters((3, 10), (3, 15))
    if not pythons:
        pytest.skip("no python3.10+ interpreter besides the system one (pyenv or PATH)")
    pcap = tmp_path / "tiny.pcap"
    tiny_pcap(pcap)
    for python in pythons:
        done = run_app(python, zipapp, "analyze", str(pcap), "--offline", "-d", "evil.example.com",
                       "-o", "ndjson", home=tmp_path)
        assert done.returncode == 0, (python, done.stderr)
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert [r["qname"] for r in records] == ["evil.example.com", "evil.example.com"], python


def test_an_old_python_gets_one_clear_message(zipapp, tmp_path):
    olds = interpreters((3, 6), (3, 10))
    for python in olds:
        done = run_app(python, zipapp, "--version", home=tmp_path)
        assert done.returncode == 7
        assert done.stderr.startswith("kubectl-dnstrace needs Python 3.10 or newer, but "), done.stderr
        assert "Traceback" not in done.stderr
        assert not (tmp_path / ".shiv").exists(), "unpacked before checking the version"
    # Whatever this machine has: run the guard itself with an old version_info.
    with zipfile.ZipFile(zipapp) as zf:
        guard = zf.read("__main__.py").decode()
    fake_sys = types.SimpleNamespace(version_info=(3, 9, 6), executable="/usr/bin/python3",
                                     argv=["kubectl-dnstrace"], stderr=sys.stderr, exit=sys.exit)
    code = (
        "import sys, types, pickle\n"
        f"fake = types.SimpleNamespace(version_info={fake_sys.version_info!r}, "
        f"executable={fake_sys.executable!r}, argv={fake_sys.argv!r}, stderr=sys.stderr, exit=sys.exit)\n"
        "sys.modules['sys'] = fake\n"
        f"exec(compile({guard!r}, '__main__.py', 'exec'))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert done.returncode == 7
    assert "needs Python 3.10 or newer, but /usr/bin/python3 is Python 3.9." in done.stderr
    assert "brew install python" in done.stderr


def test_an_unwritable_home_asks_for_shiv_root(zipapp, tmp_path):
    python = modern_python()
    blocked = run_app(python, zipapp, "--version", home=Path("/dev/null"))
    assert blocked.returncode == 7
    assert "Set SHIV_ROOT to a writable directory" in blocked.stderr
    assert "Traceback" not in blocked.stderr
    fixed = run_app(python, zipapp, "--version", home=Path("/dev/null"),
                    extra_env={"SHIV_ROOT": str(tmp_path / "shiv")})
    assert fixed.returncode == 0 and fixed.stdout == f"kubectl-dnstrace {__version__}\n"


def test_two_builds_from_two_directories_are_byte_identical(rel, tmp_path):
    """The same sources copied elsewhere (another path, fresh mtimes) build the same bytes."""
    copy = copy_tree(rel.source, tmp_path / "elsewhere" / "checkout")
    out = tmp_path / "dist2"
    seconds = run_build(copy, out, rel.epoch)
    second = out / rel.archive.name
    if second.read_bytes() != rel.archive.read_bytes():
        pytest.fail("archive differs between builds: " + ", ".join(_differences(rel.archive, second)))
    assert (out / "dnstrace.yaml").read_text() == rel.manifest.read_text()
    print(f"first build {rel.seconds:.1f}s, second build {seconds:.1f}s, "
          f"archive {rel.archive.stat().st_size} bytes")


def _differences(a: Path, b: Path) -> list[str]:
    """Which members (and zipapp entries) differ: the first thing to read when this fails."""
    found = []
    with tarfile.open(a) as ta, tarfile.open(b) as tb:
        for ma, mb in zip(ta.getmembers(), tb.getmembers(), strict=False):
            if ma.get_info() != mb.get_info():
                found.append(f"tar header {ma.name}")
            if ta.extractfile(ma).read() != tb.extractfile(mb).read():
                found.append(f"tar member {ma.name}")
                if ma.name == "kubectl-dnstrace":
                    za = zipfile.ZipFile(io.BytesIO(ta.extractfile(ma).read()))
                    zb = zipfile.ZipFile(io.BytesIO(tb.extractfile(mb).read()))
                    names = sorted(set(za.namelist()) | set(zb.namelist()))
                    for name in names:
                        if name not in za.namelist() or name not in zb.namelist() or \
                                za.read(name) != zb.read(name):
                            found.append(name)
    return found[:20]
