"""The real single-node Kubernetes of ``../shared/realk8s``, driven as a user drives it.

Everything goes through the real ``kubectl`` binary: objects are applied from the project's
manifests (``tests/real/manifests``), and the plugin runs as ``kubectl dnstrace ...``, found
by kubectl on PATH like an installed plugin. Tests assert what the user sees: exit codes,
stdout, stderr.

The cluster is one per machine (fixed ports, addresses and interface names). The session
fixture brings it up and takes it down (``realk8s down`` first, so that nothing left by an
earlier run is reused); ``REALK8S_REUSE=1`` uses a cluster that is already up and leaves it
up, for working on tests by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = Path(__file__).resolve().parent / "manifests"
VENV_BIN = Path(sys.executable).parent
# Where the plugin's default agent image is taken from: the cluster's python3 image is
# tagged with the plugin's default name, so a trace with no --image runs as for a user.
TOOLS_IMAGE = "docker.io/realk8s/tools:1"
CONTAINER_ADDED = re.compile(r"Added ephemeral container (dnstrace-[0-9a-z]+) to pod (\S+)/(\S+)")


def realk8s_script() -> Path:
    """``$REALK8S``, else ``../shared/realk8s/realk8s`` beside the checkout."""
    explicit = os.environ.get("REALK8S")
    if explicit:
        return Path(explicit)
    return REPO.parent / "shared" / "realk8s" / "realk8s"


def missing() -> str:
    """Why the real cluster cannot run here ('' when it can)."""
    script = realk8s_script()
    if not script.exists():
        return f"no real cluster script at {script} (set REALK8S=/path/to/realk8s)"
    if os.geteuid() != 0:
        return "the real cluster needs root"
    if not shutil.which("kubectl"):
        return "kubectl is not installed"
    if not (VENV_BIN / "kubectl-dnstrace").exists():
        return f"kubectl-dnstrace is not installed in {VENV_BIN} (pip install -e .)"
    return ""


@dataclass
class RealCluster:
    """A running realk8s cluster and the commands a user runs against it."""

    script: Path
    kubeconfig: str
    home: Path
    reused: bool = False
    project_image: str = ""  # the project's debug image, imported by the session fixture
    # Every capture container a plugin run of this session reported adding: (ns, pod, name).
    added: list[tuple[str, str, str]] = field(default_factory=list)

    # ---- lifecycle -----------------------------------------------------------------------

    @classmethod
    def start(cls, home: Path) -> RealCluster:
        script = realk8s_script()
        reuse = os.environ.get("REALK8S_REUSE", "") not in ("", "0")
        if reuse and subprocess.run([str(script), "status"], capture_output=True).returncode == 0:
            kubeconfig = subprocess.run([str(script), "kubeconfig"], capture_output=True,
                                        text=True, check=True).stdout.strip()
            return cls(script, kubeconfig, home, reused=True)
        subprocess.run([str(script), "down"], capture_output=True, timeout=300)
        up = subprocess.run([str(script), "up"], capture_output=True, text=True, timeout=600)
        if up.returncode != 0:
            raise RuntimeError(f"realk8s up failed ({up.returncode}):\n{up.stderr[-4000:]}")
        return cls(script, up.stdout.strip().splitlines()[-1], home)

    def stop(self) -> None:
        if not self.reused:
            subprocess.run([str(self.script), "down"], capture_output=True, timeout=300)

    def realk8s(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.script), *args], capture_output=True, text=True,
                              timeout=timeout, check=True)

    # ---- kubectl, as a user ----------------------------------------------------------------

    def env(self, kubeconfig: str | None = None, **extra: str) -> dict[str, str]:
        kubectl_dir = os.path.dirname(shutil.which("kubectl") or "/usr/bin/kubectl")
        env = {
            "PATH": f"{VENV_BIN}:{kubectl_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home),
            "KUBECONFIG": kubeconfig or self.kubeconfig,
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                              env=self.env(kubeconfig), timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): "
                                 f"{proc.stderr.strip()}")
        return proc

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def plugin(self, *args: str, timeout: float = 240, kubeconfig: str | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """``kubectl dnstrace ARGS`` to the end, as a user runs it."""
        proc = subprocess.run(["kubectl", "dnstrace", *args], capture_output=True, text=True,
                              env=self.env(kubeconfig, **(env or {})), timeout=timeout,
                              stdin=subprocess.DEVNULL)
        self.note_added(proc.stderr)
        return proc

    def plugin_popen(self, *args: str, kubeconfig: str | None = None,
                     env: dict[str, str] | None = None) -> subprocess.Popen:
        """``kubectl dnstrace ARGS`` in the background (stderr line by line, stdout kept)."""
        return subprocess.Popen(["kubectl", "dnstrace", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                env=self.env(kubeconfig, **(env or {})), start_new_session=True)

    def note_added(self, stderr: str) -> None:
        for m in CONTAINER_ADDED.finditer(stderr):
            self.added.append((m.group(2), m.group(3), m.group(1)))

    def apply(self, manifest: str, namespace: str | None = None, **values: str) -> None:
        """Apply ``manifests/NAME.yaml`` (or YAML text), with ``{key}`` placeholders filled."""
        path = MANIFESTS / manifest
        text = path.read_text() if path.suffix == ".yaml" and path.exists() else manifest
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        self.kubectl(*args, input=text)

    @contextlib.contextmanager
    def namespace(self, name: str, psa: str | None = None) -> Iterator[str]:
        """A namespace for one test (optionally with a Pod Security enforce level)."""
        self.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true",
                     timeout=180)
        self.kubectl("create", "namespace", name)
        if psa:
            self.kubectl("label", "namespace", name,
                         f"pod-security.kubernetes.io/enforce={psa}")
        try:
            yield name
        finally:
            # Gone before the next test starts: a pod still asking during another test's
            # cluster-wide trace would be a client it did not expect.
            self.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s",
                         check=False, timeout=180)

    def user(self, name: str, *groups: str) -> str:
        """A kubeconfig for an RBAC user (no rights until something is bound)."""
        return self.realk8s("user", name, *groups).stdout.strip().splitlines()[-1]

    # ---- waiting -----------------------------------------------------------------------------

    def wait_pods(self, namespace: str, selector: str, count: int = 1,
                  timeout: float = 120) -> list[dict]:
        """The pods of ``selector`` once ``count`` of them are Running and ready."""
        end = time.monotonic() + timeout
        pods: list[dict] = []
        while time.monotonic() < end:
            pods = [p for p in self.get_json("pods", "-n", namespace, "-l", selector)["items"]
                    if p["status"].get("phase") == "Running"
                    and not p["metadata"].get("deletionTimestamp")
                    and all(c.get("ready") for c in p["status"].get("containerStatuses") or [])]
            if len(pods) >= count:
                return pods
            time.sleep(1)
        raise AssertionError(f"{count} ready pods of {selector} in {namespace} not seen in "
                             f"{timeout:.0f} s (have {len(pods)})")

    def coredns_pods(self) -> list[str]:
        return sorted(p["metadata"]["name"] for p in
                      self.wait_pods("kube-system", "k8s-app=kube-dns", 2))

    # ---- what a trace leaves behind ---------------------------------------------------------

    def running_agents(self, only: list[tuple[str, str, str]] | None = None) -> list[str]:
        """``ns/pod:container`` of every capture container still running (or of ``only``)."""
        pods = self.get_json("pods", "-A")["items"]
        running = []
        for pod in pods:
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            for st in pod["status"].get("ephemeralContainerStatuses") or []:
                cname = st.get("name", "")
                if not cname.startswith("dnstrace-") or "running" not in (st.get("state") or {}):
                    continue
                if only is None or (ns, name, cname) in only:
                    running.append(f"{ns}/{name}:{cname}")
        return running

    def wait_no_agents(self, only: list[tuple[str, str, str]] | None = None,
                       timeout: float = 30) -> list[str]:
        """Wait up to ``timeout`` for those agents to stop; returns the ones still running."""
        end = time.monotonic() + timeout
        left = self.running_agents(only)
        while left and time.monotonic() < end:
            time.sleep(2)
            left = self.running_agents(only)
        return left


def clients(doc: dict) -> dict[str, set[str]]:
    """``namespace/pod`` -> the names it asked, from a ``-o json`` document's summary."""
    out: dict[str, set[str]] = {}
    for entry in doc["summary"]:
        c = entry["client"]
        key = f"{c.get('namespace', '')}/{c.get('name', '')}" if c["kind"] == "pod" else c["kind"]
        out.setdefault(key, set()).update(n["name"] for n in entry["names"])
    return out


class BackgroundTrace:
    """``kubectl dnstrace ...`` running while the test makes things happen in the cluster."""

    def __init__(self, cluster: RealCluster, *args: str, kubeconfig: str | None = None,
                 env: dict[str, str] | None = None):
        import threading

        self.cluster = cluster
        self.proc = cluster.plugin_popen(*args, kubeconfig=kubeconfig, env=env)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(
            target=lambda: self._out.append(self.proc.stdout.read()), daemon=True)
        self._out_reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        """The first stderr line matching ``pattern`` (a regex), waiting for it."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                hit = next((ln for ln in self.lines if rx.search(ln)), None)
                if hit is not None:
                    return hit
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no stderr line matching {pattern!r} (exit "
                                         f"{self.proc.poll()}):\n{self.stderr[-3000:]}")
                self._changed.wait(min(left, 1.0))

    def wait_capturing(self, timeout: float = 120) -> str:
        return self.wait_for(r"^capturing in \d+ pod", timeout)

    def finish(self, timeout: float = 180) -> subprocess.CompletedProcess:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self._reader.join(timeout=10)
        self._out_reader.join(timeout=60)
        stdout = "".join(self._out)
        self.cluster.note_added(self.stderr)
        return subprocess.CompletedProcess(self.proc.args, rc, stdout, self.stderr)
