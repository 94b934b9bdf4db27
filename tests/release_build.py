"""One release build per test session, shared by test_dist.py and test_krew_manifest.py.

Building takes tens of seconds (pip, shiv, a 10 MB zipapp), so the first test that needs
the archive builds it into a session temp dir and later ones reuse it. The build runs
``packaging/build_dist.py`` as ``make dist`` does, from this checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "packaging" / "build_dist.py"
BUILD_TIMEOUT = 900


@dataclass(frozen=True)
class Release:
    source: Path  # the snapshot of the checkout the release was built from
    out: Path
    archive: Path
    manifest: Path
    epoch: int
    seconds: float


_built: dict[str, Release] = {}


def source_epoch() -> int:
    """One SOURCE_DATE_EPOCH for every build of the session (a copy has no git history)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
                             capture_output=True, text=True, check=True).stdout.strip()
        return int(out)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return 1764000000


def run_build(source: Path, out: Path, epoch: int) -> float:
    """Run the build script of ``source``; returns how long it took."""
    import time

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(source / "packaging" / "build_dist.py"), "--out", str(out)],
        cwd=source, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
        env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
    )
    assert done.returncode == 0, f"build failed:\n{done.stdout}\n{done.stderr}"
    return time.monotonic() - started


def snapshot(source: Path, dest: Path) -> Path:
    """Copy the checkout's files (tracked and new, not ignored) with fresh mtimes and modes.

    Builds run from snapshots so that edits made to the working tree while the tests run
    cannot make two builds differ.
    """
    listed = subprocess.run(["git", "-C", str(source), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.split(b"\0")
    for raw in filter(None, listed):
        rel_path = raw.decode()
        src = source / rel_path
        if src.is_file():
            target = dest / rel_path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    return dest


def copy_tree(source: Path, dest: Path) -> Path:
    """A second copy of a snapshot: another path, new mtimes, default modes."""
    for src in sorted(source.rglob("*")):
        if src.is_file():
            target = dest / src.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    return dest


def release(tmp_path_factory) -> Release:
    if "main" not in _built:
        source = snapshot(ROOT, tmp_path_factory.mktemp("snapshot") / "kubectl-dnstrace")
        out = tmp_path_factory.mktemp("dist")
        epoch = source_epoch()
        seconds = run_build(source, out, epoch)
        archives = sorted(out.glob("kubectl-dnstrace_*.tar.gz"))
        assert len(archives) == 1, archives
        _built["main"] = Release(source, out, archives[0], out / "dnstrace.yaml", epoch, seconds)
    return _built["main"]
