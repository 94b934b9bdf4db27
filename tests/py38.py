"""python 3.8, the oldest python the agent promises to run on: where a test finds one, and
what stands in for it where there is none.

Debian 12 ships python 3.11 alone, and no registry this project installs from ships a 3.8
interpreter (PyPI's installers of standalone builds fetch them from elsewhere when they
run), so a fresh CI machine has no python3.8. A developer's machine may have one (pyenv).
There, tests run the agent's code on it. Where there is none, vermin — a test dependency —
is the check: it reads the files for syntax and standard-library use newer than 3.8. Such
a test skips on a laptop, saying so; under CI=true it never skips: it runs vermin on the
files it covers, fails on any violation, and warns that vermin stood in for the interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "kubectl_dnstrace"
# What the agent runs: its package, the DNS parser, the wire format, the package's __init__.
AGENT_FILES = sorted([*(PKG / "agent").glob("*.py"), PKG / "dnswire.py", PKG / "protocol.py",
                      PKG / "__init__.py"])


class VerminStoodIn(UserWarning):
    """No python3.8 here: vermin judged the code against python 3.8 instead."""


def python38() -> str | None:
    """A working python3.8: on PATH, or installed by pyenv (whose shims need a shell)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [*sorted(pyenv.glob("3.8*/bin/python3.8")), shutil.which("python3.8")]
    for candidate in filter(None, candidates):
        probe = subprocess.run([str(candidate), "-I", "-S", "-c",
                                "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 8)":
            return str(candidate)
    return None


def vermin_violations(paths: Sequence[Path]) -> str:
    """vermin's report of anything in ``paths`` that python 3.8 lacks ('' when none)."""
    vermin = ROOT / ".venv" / "bin" / "vermin"
    if not vermin.exists():
        vermin = Path(sys.executable).with_name("vermin")
    res = subprocess.run([str(vermin), "-t=3.8-", "--no-tips", "--violations",
                          "--eval-annotations", *map(str, paths)],
                         capture_output=True, text=True, timeout=120)
    return "" if res.returncode == 0 else (res.stdout + res.stderr) or f"vermin exit {res.returncode}"


def require_python38(what: str, paths: Sequence[Path] = AGENT_FILES) -> str | None:
    """The python3.8 to run ``what`` on; or, where there is none: under CI=true, None after
    vermin passed ``paths`` (the caller's test ends there, passed); elsewhere a skip."""
    python = python38()
    if python is not None:
        return python
    if not IN_CI:
        pytest.skip(f"no python3.8 on this machine for {what}; vermin is the check there "
                    "(tests/py38.py)")
    report = vermin_violations(paths)
    assert report == "", f"vermin finds code python 3.8 lacks ({what}):\n{report}"
    warnings.warn(VerminStoodIn(f"no python3.8 on this machine: vermin -t=3.8- checked "
                                f"{len(paths)} file(s) instead of running {what}"),
                  stacklevel=2)
    return None
