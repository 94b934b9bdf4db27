"""Build the release: one reproducible archive with a single-file zipapp, and its Krew manifest.

    python packaging/build_dist.py [--out DIR] [--source DIR] [--cache DIR]

writes ``DIR/kubectl-dnstrace_<version>.tar.gz`` (``kubectl-dnstrace``, LICENSE, README.md)
and ``DIR/dnstrace.yaml`` (the Krew manifest for that archive). ``make dist`` runs it.

The zipapp is built with shiv from a staged site-packages holding the pinned, pure-Python
dependency set of ``packaging/requirements-release.txt``, so the same file runs on Linux
and macOS, amd64 and arm64, with any python3 >= 3.10. Reproducible means byte-identical
output from the same sources, whatever the checkout path, umask or clock:

- pip records where a wheel came from (``direct_url.json``) and writes console scripts
  whose shebang names the building interpreter: both are removed, with RECORD.
- shiv adds files with their on-disk permissions: modes are normalised first, and the
  archive is rewritten with sorted entries, one timestamp and fixed modes.
- shiv's build id is a hash of the contents and its timestamps come from
  SOURCE_DATE_EPOCH (default: the time of the last commit that touched the build inputs).
- the tarball has sorted members, uid/gid 0, fixed mtimes and a gzip header without a
  name or time.

The zipapp's ``__main__.py`` checks the Python version before anything is unpacked, so an
old python3 (macOS ships 3.9) gets one clear line instead of a traceback; it also turns
the file into kubectl's completion helper when it runs as ``kubectl_complete-dnstrace``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = "dnstrace"
EXECUTABLE = "kubectl-dnstrace"
REPOSITORY = "https://github.com/kubectl-dnstrace/kubectl-dnstrace"
MIN_PYTHON = (3, 10)
ZIP_EPOCH_MIN = 315532800  # 1980-01-01: the earliest time a zip entry can carry
COMPILED_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")
# Built from source, pure: there is no py3-none-any wheel of PyYAML on PyPI.
FROM_SOURCE = {"pyyaml": {"PYYAML_FORCE_LIBYAML": "0"}}

# Runs before shiv's bootstrap, on whatever python3 the shebang found: keep it valid
# Python 2.7/3.x syntax (no f-strings) so even a very old interpreter prints the message.
MAIN_PY = """\
# -*- coding: utf-8 -*-
import sys
if sys.version_info < (%(major)d, %(minor)d):
    sys.stderr.write(
        "kubectl-dnstrace needs Python %(major)d.%(minor)d or newer, but %%s is Python %%d.%%d.\\n"
        "Install a newer python3 and put it first on PATH (macOS: brew install python),\\n"
        "or run the plugin with it: python3.12 %%s ...\\n"
        %% (sys.executable, sys.version_info[0], sys.version_info[1], sys.argv[0])
    )
    sys.exit(7)
import os
# The same file serves kubectl's completion helper when linked as kubectl_complete-dnstrace.
if os.path.basename(sys.argv[0]) == "kubectl_complete-dnstrace":
    os.environ["SHIV_ENTRY_POINT"] = "kubectl_dnstrace.completion:main"
import _bootstrap
try:
    _bootstrap.bootstrap()
except OSError as exc:
    # shiv unpacks the libraries under ~/.shiv (or $SHIV_ROOT) on first run.
    root = os.environ.get("SHIV_ROOT") or os.path.join(os.path.expanduser("~"), ".shiv")
    if not str(getattr(exc, "filename", None) or "").startswith(root):
        raise
    sys.stderr.write(
        "kubectl-dnstrace unpacks its libraries into %%s on first run and cannot write there "
        "(%%s).\\nSet SHIV_ROOT to a writable directory, for example:\\n"
        "  SHIV_ROOT=/tmp/kubectl-dnstrace-$(id -u) kubectl dnstrace ...\\n"
        %% (root, exc.strerror or exc)
    )
    sys.exit(7)
"""

MANIFEST = """\
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: {name}
spec:
  version: v{version}
  homepage: {homepage}
  shortDescription: Find the pod behind a DNS query
  description: |
    Answers "which pod asked for this name?" with the Kubernetes API alone. It adds
    a small capture agent as an ephemeral container to the cluster DNS pods (or to
    the pods you name), captures port-53 traffic in their network namespace, streams
    the queries back through the pod-log API and maps every client IP to its pod,
    workload and node, including pods that are already gone. It also attributes
    existing pcap/pcapng captures (kubectl dnstrace analyze). No SSH, nothing
    installed on nodes.
  caveats: |
    * Needs python3 3.10 or newer on PATH. macOS's own /usr/bin/python3 is 3.9:
      install a newer one (brew install python) and put it first on PATH.
    * The first run unpacks its libraries under ~/.shiv. With a read-only HOME,
      point SHIV_ROOT at a writable directory.
    * It needs RBAC permissions to add ephemeral containers and read their logs.
      See what exactly, and apply them, with:
        kubectl dnstrace rbac --cluster | kubectl apply -f -
    * Ephemeral containers cannot be removed: each capture stays listed in the pod
      spec (stopped) until the pod is recreated. Raw-socket capture may raise
      alerts in runtime-security tools (for example Falco's packet socket rule).
  platforms:
{platforms}"""

PLATFORM = """\
  - selector:
      matchLabels:
        os: {os}
        arch: {arch}
    uri: {uri}
    sha256: {sha256}
    files:
    - from: {executable}
      to: .
    - from: LICENSE
      to: .
    bin: {executable}
"""

PLATFORMS = (("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64"), ("darwin", "arm64"))


def project_version(source: Path) -> str:
    text = (source / "kubectl_dnstrace" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise SystemExit("kubectl_dnstrace/__init__.py has no __version__")
    return match.group(1)


def archive_name(version: str) -> str:
    return f"{EXECUTABLE}_{version}.tar.gz"


def release_uri(version: str) -> str:
    return f"{REPOSITORY}/releases/download/v{version}/{archive_name(version)}"


def render_manifest(version: str, sha256: str) -> str:
    """The Krew manifest: one archive serves every platform (it is pure Python)."""
    platforms = "".join(
        PLATFORM.format(os=os_name, arch=arch, uri=release_uri(version), sha256=sha256,
                        executable=EXECUTABLE)
        for os_name, arch in PLATFORMS
    )
    return MANIFEST.format(name=PLUGIN, version=version, homepage=REPOSITORY, platforms=platforms)


# What the archive is built from: the time of the last commit touching these is the default
# timestamp, so committing anything else (krew-manifest.yaml, tests) keeps the bytes.
BUILD_INPUTS = ("kubectl_dnstrace", "pyproject.toml", "README.md", "LICENSE", "packaging")


def source_date_epoch(source: Path) -> int:
    """SOURCE_DATE_EPOCH if set, else the last commit of the build inputs, else the zip epoch."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return max(int(env), ZIP_EPOCH_MIN)
    try:
        out = subprocess.run(["git", "-C", str(source), "log", "-1", "--format=%ct", "--",
                              *BUILD_INPUTS],
                             capture_output=True, text=True, check=True).stdout.strip()
        return max(int(out), ZIP_EPOCH_MIN)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return ZIP_EPOCH_MIN


def read_requirements(path: Path) -> list[tuple[str, str]]:
    pins = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{path}: {line!r} is not pinned with ==")
        pins.append((name.strip(), version.strip()))
    return pins


def pip(*args: str, env: dict | None = None) -> None:
    """Run pip quietly; show its output only when it fails (or with DIST_VERBOSE=1)."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    verbose = bool(os.environ.get("DIST_VERBOSE"))
    done = subprocess.run(cmd, env={**os.environ, **(env or {})}, text=True,
                          capture_output=not verbose)
    if done.returncode != 0:
        sys.stderr.write(f"{' '.join(cmd)} failed:\n{done.stdout or ''}{done.stderr or ''}")
        raise SystemExit(done.returncode)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def fetch_wheels(pins: list[tuple[str, str]], cache: Path) -> list[Path]:
    """Pure wheels of every pin, into ``cache`` (kept between builds: wheels are immutable)."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = []
    binary = [(n, v) for n, v in pins if _normal(n) not in FROM_SOURCE]
    missing = [f"{n}=={v}" for n, v in binary if not _find_wheel(cache, n, v)]
    if missing:
        # Only wheels that any Python 3.10+ on any OS and CPU can use.
        pip("download", "--no-deps", "--only-binary=:all:", "--platform", "any",
            "--python-version", f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}", "--implementation", "py",
            "--abi", "none", "--dest", str(cache), *missing)
    for name, version in pins:
        wheel = _find_wheel(cache, name, version)
        if wheel is None and _normal(name) in FROM_SOURCE:
            pip("wheel", "--no-deps", "--no-binary", name, "--wheel-dir", str(cache),
                f"{name}=={version}", env=FROM_SOURCE[_normal(name)])
            wheel = _find_wheel(cache, name, version)
        if wheel is None or not wheel.name.endswith("-none-any.whl"):
            raise SystemExit(f"no pure wheel for {name}=={version} (got {wheel})")
        wheels.append(wheel)
    return wheels


def _find_wheel(cache: Path, name: str, version: str) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", name).lower()
    for path in sorted(cache.glob("*.whl")):
        dist, _, rest = path.name.partition("-")
        if dist.lower() == stem and rest.startswith(f"{version}-") and path.name.endswith("-none-any.whl"):
            return path
    return None


def copy_sources(source: Path, dest: Path) -> None:
    """Only what the project's wheel is built from: no caches, no checkout metadata."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(source / name, dest / name)
    for path in sorted((source / "kubectl_dnstrace").rglob("*.py")):
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def stage_site_packages(source: Path, wheels: list[Path], work: Path) -> Path:
    src = work / "src"
    copy_sources(source, src)
    built = work / "wheels"
    pip("wheel", "--no-deps", "--wheel-dir", str(built), str(src))
    stage = work / "site-packages"
    pip("install", "--no-deps", "--no-compile", "--no-index", "--target", str(stage),
        *map(str, wheels), *map(str, sorted(built.glob("*.whl"))))
    scrub(stage)
    return stage


def scrub(stage: Path) -> None:
    """Remove what depends on the build machine; refuse compiled code; normalise modes."""
    shutil.rmtree(stage / "bin", ignore_errors=True)  # console scripts: shebang = build python
    for pattern in ("*.dist-info/RECORD", "*.dist-info/direct_url.json", "*.dist-info/INSTALLER",
                    "*.dist-info/REQUESTED"):
        for path in stage.glob(pattern):
            path.unlink()
    for cache in sorted(stage.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    compiled = [p for p in stage.rglob("*") if p.suffix in COMPILED_SUFFIXES or ".so." in p.name]
    if compiled:
        raise SystemExit("compiled files would make the release per-platform: "
                         + ", ".join(str(p.relative_to(stage)) for p in compiled))
    aio = [p for p in stage.iterdir() if _normal(p.name.split("-")[0]) in ("aiohttp", "pydantic-core")]
    if aio:
        raise SystemExit(f"unexpected compiled-chain packages in the release: {aio}")
    for path in stage.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    stage.chmod(0o755)


def build_zipapp(stage: Path, target: Path, epoch: int, work: Path) -> None:
    """shiv builds it; the result is then rewritten so nothing of this machine remains."""
    raw = work / "shiv.pyz"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    subprocess.run(
        [sys.executable, "-m", "shiv", "--site-packages", str(stage), "--console-script", EXECUTABLE,
         "--python", "/usr/bin/env python3", "--output-file", str(raw), "--reproducible",
         "--compressed"],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )
    normalise_zip(raw, target, epoch)


def normalise_zip(raw: Path, target: Path, epoch: int) -> None:
    date_time = time.gmtime(epoch)[:6]
    with zipfile.ZipFile(raw) as src:
        entries = {info.filename: src.read(info) for info in src.infolist() if not info.is_dir()}
    entries["__main__.py"] = (MAIN_PY % {"major": MIN_PYTHON[0], "minor": MIN_PYTHON[1]}).encode()
    buffer = io.BytesIO()
    buffer.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buffer, "w") as out:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix: the mode below is meaningful
            info.external_attr = (0o100644 << 16)
            out.writestr(info, entries[name], compresslevel=9)
    target.write_bytes(buffer.getvalue())
    target.chmod(0o755)


def build_tarball(members: list[tuple[str, Path, int]], target: Path, epoch: int) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, path, mode in sorted(members):
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = epoch
            info.mode = mode
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    with target.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                 compresslevel=9) as gz:
        gz.write(buffer.getvalue())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(source: Path, out: Path, cache: Path) -> Path:
    version = project_version(source)
    epoch = source_date_epoch(source)
    pins = read_requirements(HERE / "requirements-release.txt")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dnstrace-dist-") as tmp:
        work = Path(tmp)
        wheels = fetch_wheels(pins, cache)
        stage = stage_site_packages(source, wheels, work)
        app = work / EXECUTABLE
        build_zipapp(stage, app, epoch, work)
        tarball = out / archive_name(version)
        build_tarball(
            [(EXECUTABLE, app, 0o755), ("LICENSE", source / "LICENSE", 0o644),
             ("README.md", source / "README.md", 0o644)],
            tarball, epoch,
        )
    manifest = out / f"{PLUGIN}.yaml"
    manifest.write_text(render_manifest(version, sha256_of(tarball)))
    return tarball


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--source", type=Path, default=HERE.parent, help="project checkout")
    parser.add_argument("--out", type=Path, default=None, help="output directory (SOURCE/dist)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="wheel cache (default: $XDG_CACHE_HOME/kubectl-dnstrace/release-wheels)")
    args = parser.parse_args(argv)
    source = args.source.resolve()
    out = (args.out or source / "dist").resolve()
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = (args.cache or cache_root / "kubectl-dnstrace" / "release-wheels").resolve()
    tarball = build(source, out, cache)
    print(f"{tarball}  {tarball.stat().st_size} bytes  sha256 {sha256_of(tarball)}")
    print(f"{out / (PLUGIN + '.yaml')}  (Krew manifest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
