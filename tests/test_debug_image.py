"""debug-image/: the Dockerfile, its ignore file and the CI workflow stay consistent with the code.

No container engine runs here, so the image itself is not built. What can be checked is:
the label and repository path the plugin recognises, the entrypoint, that every file the
Dockerfile copies is in the build context (and not ignored), and that the package alone —
what the image installs, with ``--no-deps`` — is enough to start the agent.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubectl_dnstrace import agent_program
from kubectl_dnstrace.trace import is_project_image

ROOT = Path(__file__).resolve().parents[1]
IMAGE_DIR = ROOT / "debug-image"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (IMAGE_DIR / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or (
            pattern.startswith("**/") and fnmatch.fnmatch(parts[-1], pattern[3:])
        ):
            result = not negate
    return result


def test_label_entrypoint_and_base_image():
    instructions = dockerfile_instructions()
    args = [rest for kw, rest in instructions if kw == "ARG"]
    assert "PYTHON_IMAGE=docker.io/library/python:3.13-slim" in args
    labels = " ".join(rest for kw, rest in instructions if kw == "LABEL")
    assert f'{agent_program.PROJECT_IMAGE_LABEL}="1"' in labels
    for key in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    (entrypoint,) = [rest for kw, rest in instructions if kw == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python3", "-m", "kubectl_dnstrace.agent"]
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "tcpdump" in runs and "--no-deps" in runs


def test_every_copied_path_is_in_the_context_and_not_ignored():
    patterns = [line.strip() for line in (IMAGE_DIR / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    link = IMAGE_DIR / "Dockerfile.dockerignore"
    assert link.is_symlink() and link.resolve() == (IMAGE_DIR / ".dockerignore").resolve()
    copies = [rest for kw, rest in dockerfile_instructions() if kw == "COPY" and "--from" not in rest]
    assert copies
    for copy in copies:
        *sources, _dest = copy.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not ignored(source, patterns), f"{source} is excluded by .dockerignore"
    for module in ("kubectl_dnstrace/agent/main.py", "kubectl_dnstrace/protocol.py"):
        assert not ignored(module, patterns), module
    for junk in ("tests/conftest.py", ".venv/bin/python", "dist/x.tar.gz",
                 "kubectl_dnstrace/__pycache__/cli.cpython-311.pyc"):
        assert ignored(junk, patterns), junk


def test_the_plugin_recognises_the_published_and_mirrored_image():
    assert agent_program.project_image().startswith("ghcr.io/kubectl-dnstrace/agent:")
    for image in ("ghcr.io/kubectl-dnstrace/agent:0.1.0",
                  "registry.local/kubectl-dnstrace/agent:0.1.0",
                  "registry.local:5000/mirror/kubectl-dnstrace/agent@sha256:" + "0" * 64):
        assert is_project_image(image), image
    assert not is_project_image("docker.io/library/python:3.13-alpine")


def test_workflow_builds_both_platforms_on_a_tag():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "debug-image.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["push"]["tags"] == ["v*.*.*"]
    steps = workflow["jobs"]["build-push"]["steps"]
    build = next(s for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action"))
    assert build["with"]["file"] == "debug-image/Dockerfile"
    assert build["with"]["context"] == "."
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert workflow["permissions"]["packages"] == "write"


@pytest.mark.slow
def test_the_package_alone_starts_the_agent(tmp_path):
    """What the image installs (the wheel, --no-deps) is all the agent needs."""
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
         "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    code = (f"import sys, runpy; sys.path.insert(0, {str(target)!r}); "
            "sys.argv = ['agent', '--help']; runpy.run_module('kubectl_dnstrace.agent', run_name='__main__')")
    helped = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert helped.returncode == 0, helped.stderr
    assert "--duration" in helped.stdout
