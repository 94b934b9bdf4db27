"""The agent, dnswire and protocol import only the standard library and use no syntax newer
than python 3.8: they run inside arbitrary images (DESIGN.md, "The agent")."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "kubectl_dnstrace"
AGENT_FILES = sorted(
    [*(PKG / "agent").glob("*.py"), PKG / "dnswire.py", PKG / "protocol.py", PKG / "__init__.py"]
)
ALLOWED_OWN = {"kubectl_dnstrace", "kubectl_dnstrace.agent", "kubectl_dnstrace.dnswire",
               "kubectl_dnstrace.protocol"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("kubectl_dnstrace.<relative>")
            elif node.module == "kubectl_dnstrace":
                names.update(f"kubectl_dnstrace.{a.name}" for a in node.names)
            else:
                names.add(node.module)
    return names


@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_are_stdlib_or_agent_modules(path):
    for name in imported_modules(path):
        top = name.split(".")[0]
        if top == "kubectl_dnstrace":
            ok = name in ALLOWED_OWN or name.startswith("kubectl_dnstrace.agent.")
            assert ok, f"{path.name} imports {name}"
        else:
            assert top in sys.stdlib_module_names or top == "__future__", f"{path.name} imports {name}"


def test_agent_runs_isolated_with_stdlib_only():
    """``python3 -I -S``: no site-packages; every module the agent loads is stdlib or ours."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "import kubectl_dnstrace.agent.main\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert res.returncode == 0, res.stderr
    loaded = res.stdout.split()
    ours = {m for m in loaded if m.split(".")[0] == "kubectl_dnstrace"}
    assert ours <= ALLOWED_OWN | {m for m in ours if m.startswith("kubectl_dnstrace.agent.")}
    foreign = [m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names
               and m.split(".")[0] != "kubectl_dnstrace" and not m.startswith("_")]
    assert foreign == []


def test_python38_syntax_and_apis():
    vermin = ROOT / ".venv" / "bin" / "vermin"
    if not vermin.exists():
        vermin = Path(sys.executable).with_name("vermin")
    res = subprocess.run([str(vermin), "-t=3.8-", "--no-tips", "--violations",
                          "--eval-annotations", *map(str, AGENT_FILES)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
