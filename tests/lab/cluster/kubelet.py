"""A "kubelet" for ephemeral containers: real processes in the pod's network namespace.

What it mirrors (recorded with a real kubelet + containerd, live/*.json):
- an added ephemeral container shows ``waiting: {reason: ContainerCreating}``, then
  ``running: {startedAt}``, then ``terminated: {exitCode, reason: Completed|Error, startedAt,
  finishedAt, containerID}``; each step is a pod status write (a MODIFIED watch event);
  statuses are sorted by name; ephemeral containers are never restarted; a container that
  exits before the next status sync goes from waiting straight to terminated (live watch,
  ``dnstrace-exits``);
- images: ``python:*`` / ``*/python:*`` run argv with python3 resolved to the host's python3;
  the project image ``ghcr.io/kubectl-dnstrace/agent:*`` runs the agent module from this
  repository; anything else never starts (ErrImagePull, then ImagePullBackOff "Back-off
  pulling image ..."; ErrImageNeverPull with imagePullPolicy Never); a command that is not
  found stays waiting/RunContainerError for good, with lastState terminated/StartError,
  exit code 128 and runc's message (as the real 1.35 kubelet reports it);
- pods/log, pods/exec and pods/attach are served from the processes' output, environment
  and stdin (see ``podlog``, ``podexec``, ``podattach``); a node without a kubelet gives the
  500 "dial tcp ...:10250";
- pods/exec runs in the same netns, environment and identity as the container;
- the process gets the container's uid and capabilities (see ``security``), so a
  restricted-profile capture container fails to open its packet socket like on containerd.
- deleting a bound pod marks it (deletionTimestamp); the kubelet stops its containers
  (SIGTERM, SIGKILL after the grace period) and then removes the pod object.
Each container gets its own process group; ``stop()`` kills them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import expansion, podattach, podexec, podlog, security
from . import status as st
from .defaults import now_rfc3339
from .faults import Faults
from .podexec import PYTHON_NAMES
from .store import Store

REPO_ROOT = Path(__file__).resolve().parents[3]
PROJECT_IMAGE = "ghcr.io/kubectl-dnstrace/agent"
STATUS_SYNC = 0.3  # the status manager reports a started container this much later


def normalize_image(image: str) -> str:
    name = image
    first = name.split("/", 1)[0]
    if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name if '/' in name else 'library/' + name}"
    if ":" not in name.rsplit("/", 1)[-1] and "@" not in name:
        name += ":latest"
    return name


def image_kind(image: str) -> str:
    """"python", "project" or "" (cannot be pulled)."""
    repo = image.split("@", 1)[0].rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image.split("@", 1)[0]
    if repo == PROJECT_IMAGE or normalize_image(image).startswith(PROJECT_IMAGE + ":"):
        return "project"
    if repo.rsplit("/", 1)[-1] == "python":
        return "python"
    return ""


@dataclass
class ContainerRun:
    namespace: str
    pod: str
    name: str
    image: str
    state: str = "waiting"
    reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int | None = None
    started: str = ""
    finished: str = ""
    container_id: str = ""
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    netns: str | None = None
    identity: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    lines: list[tuple[int, bytes]] = field(default_factory=list)
    exited_at: float | None = None
    cut_mark: int = 0  # log position of the last simulated connection break
    stdin_once: bool = False
    last_terminated: dict | None = None  # lastState.terminated (a start error)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def status(self) -> dict:
        state: dict
        if self.state == "waiting":
            state = {"waiting": {"reason": self.reason, **({"message": self.message} if self.message else {})}}
        elif self.state == "running":
            state = {"running": {"startedAt": self.started}}
        else:
            term = {"exitCode": self.exit_code, "reason": self.reason}
            if self.message:
                term["message"] = self.message
            term.update({"startedAt": self.started, "finishedAt": self.finished, "containerID": self.container_id})
            state = {"terminated": term}
        last = {"terminated": self.last_terminated} if self.last_terminated else {}
        out = {"name": self.name, "state": state, "lastState": last, "ready": False, "restartCount": 0}
        if self.container_id:
            out.update({"image": normalize_image(self.image),
                        "imageID": "sha256:" + hashlib.sha256(self.image.encode()).hexdigest(),
                        "containerID": self.container_id, "resources": {}})
        else:
            out.update({"image": self.image, "imageID": ""})
        return out


class Kubelet:
    def __init__(self, store: Store, faults: Faults):
        self.store = store
        self.faults = faults
        self.nodes_without_kubelet: set[str] = set()
        self._netns: dict[tuple[str, str], str] = {}
        self._private_netns: list[str] = []
        self._terminating: set[tuple[str, str]] = set()
        self._runs: dict[tuple[str, str, str], ContainerRun] = {}
        self._regular_logs: dict[tuple[str, str, str], ContainerRun] = {}
        self._lock = threading.Lock()
        self.stopping = False
        self.images: dict[str, str] = {}
        self.execs: set[subprocess.Popen] = set()
        self.python3 = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "python3"
        store.add_listener(self._on_event)

    # -- public ------------------------------------------------------------------------------

    def register_pod_netns(self, namespace: str, pod_name: str, netns_name: str | None) -> None:
        """Containers of that pod run inside ``ip netns exec netns_name``.

        A pod without one gets a private, empty namespace of its own when its first
        container starts: a capture agent must never run in the machine's own namespace.
        """
        with self._lock:
            if netns_name:
                self._netns[(namespace, pod_name)] = netns_name
            else:
                self._netns.pop((namespace, pod_name), None)

    def provide_image(self, image: str, kind: str = "host") -> None:
        """Pretend the node has ``image``: "host" runs argv as given with the host's tools,
        "python" like a python image, "project" like the project's agent image."""
        self.images[image] = kind

    def append_log(self, namespace: str, pod_name: str, container: str, line: str) -> None:
        """Add a log line to a regular (simulated) container of a pod."""
        run = self.regular(namespace, pod_name, container)
        with run.cond:
            run.lines.append((time.time_ns(), line.rstrip("\n").encode() + b"\n"))
            run.cond.notify_all()

    def netns_of(self, namespace: str, pod_name: str) -> str | None:
        return self._netns.get((namespace, pod_name))

    def run(self, namespace: str, pod_name: str, container: str) -> ContainerRun | None:
        return self._runs.get((namespace, pod_name, container))

    def processes(self) -> list[subprocess.Popen]:
        return [r.proc for r in list(self._runs.values()) if r.proc is not None]

    def stop(self) -> None:
        self.stopping = True
        for proc in list(self.execs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for run in list(self._runs.values()):
            self._kill(run, grace=0.5)
            with run.cond:
                run.cond.notify_all()
        for run in list(self._regular_logs.values()):
            with run.cond:
                run.cond.notify_all()
        for name in self._private_netns:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self._private_netns.clear()

    # -- lifecycle ---------------------------------------------------------------------------

    def _on_event(self, etype: str, res, old: dict | None, new: dict) -> None:
        if res.kind != "Pod" or self.stopping:
            return
        ns, name = new["metadata"].get("namespace", ""), new["metadata"]["name"]
        if etype == "DELETED":
            for key, run in list(self._runs.items()):
                if key[:2] == (ns, name):
                    threading.Thread(target=self._kill, args=(run, 2.0), daemon=True).start()
            return
        node = (new.get("spec") or {}).get("nodeName")
        if not node or node in self.nodes_without_kubelet:
            return
        if new["metadata"].get("deletionTimestamp"):
            with self._lock:
                if (ns, name) in self._terminating:
                    return
                self._terminating.add((ns, name))
            grace = float(new["metadata"].get("deletionGracePeriodSeconds") or 30)
            threading.Thread(target=self._terminate_pod, args=(ns, name, grace), daemon=True).start()
            return
        for ec in (new.get("spec") or {}).get("ephemeralContainers") or []:
            key = (ns, name, ec["name"])
            with self._lock:
                if key in self._runs:
                    continue
                run = ContainerRun(ns, name, ec["name"], ec.get("image", ""))
                self._runs[key] = run
            threading.Thread(target=self._lifecycle, args=(run, ec, new), daemon=True,
                             name=f"kubelet-{ns}-{name}-{ec['name']}").start()

    def _terminate_pod(self, namespace: str, name: str, grace: float) -> None:
        """Stop the pod's containers (SIGTERM, SIGKILL after the grace period), then remove it."""
        runs = [r for key, r in list(self._runs.items()) if key[:2] == (namespace, name)]
        threads = [threading.Thread(target=self._kill, args=(r, grace), daemon=True) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(STATUS_SYNC)  # the status manager confirms the deletion on its next sync
        with contextlib.suppress(st.ApiError):
            if self.store.get("pods", name, namespace)["metadata"].get("deletionTimestamp"):
                self.store.delete("pods", name, namespace)
        with self._lock:
            self._terminating.discard((namespace, name))

    def _publish(self, run: ContainerRun) -> None:
        def write(pod: dict) -> dict:
            statuses = [s for s in pod.setdefault("status", {}).get("ephemeralContainerStatuses") or []
                        if s["name"] != run.name]
            statuses.append(run.status())
            pod["status"]["ephemeralContainerStatuses"] = sorted(statuses, key=lambda s: s["name"])
            if "observedGeneration" in pod["status"]:  # the kubelet reports the spec generation it acted on
                generation = pod["metadata"].get("generation", 1)
                pod["status"]["observedGeneration"] = generation
                for cond in pod["status"].get("conditions") or []:
                    if "observedGeneration" in cond:
                        cond["observedGeneration"] = generation
            return pod

        with contextlib.suppress(st.ApiError):  # the pod may be gone
            self.store.mutate("pods", run.pod, run.namespace, write)

    def _lifecycle(self, run: ContainerRun, ec: dict, pod: dict) -> None:
        self._publish(run)
        time.sleep(0.2 + self.faults.start_delay)
        if self.stopping:
            return
        kind = self.images.get(run.image) or image_kind(run.image)
        if ec.get("imagePullPolicy") == "Never" and not kind:
            run.reason = "ErrImageNeverPull"
            run.message = f'Container image "{run.image}" is not present with pull policy of Never'
            self._publish(run)
            return
        if not kind or run.image in self.faults.failing_images:
            ref = normalize_image(run.image)
            run.reason = "ErrImagePull"
            run.message = (f'failed to pull and unpack image "{ref}": failed to resolve reference "{ref}": '
                           f"{ref}: not found")
            self._publish(run)
            time.sleep(1.0)
            if self.stopping:
                return
            run.reason = "ImagePullBackOff"
            run.message = f'Back-off pulling image "{run.image}"'
            self._publish(run)
            return
        self._prepare(run, ec, pod, kind)
        if not run.argv or not shutil.which(run.argv[0], path=run.env["PATH"]):
            self._start_error(run)
            return
        try:
            # stdin: true gives the process a pipe that attach writes to; stdinOnce closes it
            # after the first attach session (podattach).
            run.stdin_once = bool(ec.get("stdinOnce"))
            run.proc = subprocess.Popen(self._wrap(run, run.argv),
                                        stdin=subprocess.PIPE if ec.get("stdin") else subprocess.DEVNULL,
                                        stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=run.env, cwd=run.cwd, start_new_session=True)
        except OSError as exc:
            run.state, run.reason = "waiting", "CreateContainerError"
            run.message = f"failed to start: {exc}"
            self._publish(run)
            return
        run.container_id = "containerd://" + hashlib.sha256(f"{run.namespace}/{run.pod}/{run.name}/{time.time_ns()}".encode()).hexdigest()
        run.state, run.reason, run.message, run.started = "running", "", "", now_rfc3339()
        reader = self._pump(run)
        try:  # the status is synced a moment later: a quick exit is never reported as running
            run.proc.wait(timeout=STATUS_SYNC)
        except subprocess.TimeoutExpired:
            self._publish(run)
        code = run.proc.wait()
        reader.join(timeout=5)
        run.exit_code = code if code >= 0 else 128 - code
        run.finished = now_rfc3339()
        run.state = "terminated"
        run.reason = "Completed" if run.exit_code == 0 else "Error"
        if run.exit_code and ec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            run.message = b"".join(line for _, line in run.lines[-80:]).decode(errors="replace")[-4096:]
        with run.cond:
            run.exited_at = time.monotonic()
            run.cond.notify_all()
        if not self.stopping:
            self._publish(run)

    def _start_error(self, run: ContainerRun) -> None:
        """runc cannot exec the command. As the real 1.35 kubelet reports it: the state is
        ``waiting: RunContainerError`` for good (an ephemeral container is never retried),
        and ``lastState.terminated`` holds exit code 128, reason StartError, runc's message."""
        binary = run.argv[0] if run.argv else ""
        run.container_id = "containerd://" + hashlib.sha256(f"{run.pod}/{run.name}/{time.time_ns()}".encode()).hexdigest()
        message = ("failed to create containerd task: failed to create shim task: OCI runtime create failed: "
                   "runc create failed: unable to start container process: exec: "
                   f'"{binary}": executable file not found in $PATH: unknown')
        run.last_terminated = {"containerID": run.container_id, "exitCode": 128, "reason": "StartError",
                               "message": message, "startedAt": "1970-01-01T00:00:00Z",
                               "finishedAt": now_rfc3339()}
        run.state, run.reason, run.message = "waiting", "RunContainerError", message
        with run.cond:
            run.exited_at = time.monotonic()
            run.cond.notify_all()
        self._publish(run)

    def _prepare(self, run: ContainerRun, ec: dict, pod: dict, kind: str) -> None:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "HOSTNAME": pod["metadata"]["name"]}
        if kind == "project":
            env["PYTHONPATH"] = str(REPO_ROOT)
        declared: dict[str, str] = {}
        for item in ec.get("env") or []:
            if "value" in item:
                declared[item["name"]] = str(item["value"])
        env.update(declared)
        # Like the kubelet: $(VAR) in command and args expands from the container's declared
        # variables, $$ becomes $, anything else stays as written.
        command = expansion.expand_all(ec.get("command"), declared)
        args = expansion.expand_all(ec.get("args"), declared)
        argv = command + args
        if not command:
            entry = ["python3", "-m", "kubectl_dnstrace.agent"] if kind == "project" else ["python3"]
            argv = entry + args
        if argv and argv[0] in PYTHON_NAMES:
            argv[0] = self.python3
        run.argv, run.env, run.cwd = argv, env, ec.get("workingDir") or "/"
        run.netns = self.netns_for(run.namespace, run.pod)
        run.identity = security.wrapper(pod, ec)

    def netns_for(self, namespace: str, pod_name: str) -> str:
        """The pod's namespace; an empty one (loopback only) if the test gave it none.

        Named with the lab's prefix, so ``netns.sweep_stale`` removes it after a crash.
        """
        digest = hashlib.sha256(f"{namespace}/{pod_name}/{os.getpid()}/{id(self)}".encode()).hexdigest()[:10]
        name = f"dtlab-sim-{digest}"
        with self._lock:
            if (namespace, pod_name) in self._netns:
                return self._netns[(namespace, pod_name)]
            subprocess.run(["ip", "netns", "add", name], capture_output=True, check=True)
            subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                           capture_output=True, check=False)
            self._private_netns.append(name)
            self._netns[(namespace, pod_name)] = name
        return name

    def _wrap(self, run: ContainerRun, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", run.netns, *run.identity, *argv]

    def _pump(self, run: ContainerRun) -> threading.Thread:
        def reader() -> None:
            for line in iter(run.proc.stdout.readline, b""):
                if not line.endswith(b"\n"):
                    line += b"\n"
                with run.cond:
                    run.lines.append((time.time_ns(), line))
                    run.cond.notify_all()
            run.proc.stdout.close()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        return t

    def _kill(self, run: ContainerRun, grace: float) -> None:
        proc = run.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def regular(self, namespace: str, pod: str, container: str) -> ContainerRun:
        key = (namespace, pod, container)
        with self._lock:
            if key not in self._regular_logs:
                self._regular_logs[key] = ContainerRun(namespace, pod, container, "", state="running")
            return self._regular_logs[key]

    # -- pods/log and pods/exec -----------------------------------------------------------------

    def pick_container(self, pod: dict, requested: str | None) -> tuple[str, bool]:
        spec = pod.get("spec") or {}
        regular = [c["name"] for c in spec.get("containers") or []]
        init = [c["name"] for c in spec.get("initContainers") or []]
        eph = [c["name"] for c in spec.get("ephemeralContainers") or []]
        name = pod["metadata"]["name"]
        if not requested:
            if len(regular) == 1:
                return regular[0], False
            msg = f"a container name must be specified for pod {name}, choose one of: [{' '.join(regular)}]"
            if init:
                msg += f" or one of the init containers: [{' '.join(init)}]"
            if eph:
                msg += f" or one of the ephemeral containers: [{' '.join(eph)}]"
            raise st.bad_request(msg)
        if requested in eph:
            return requested, True
        if requested in regular or requested in init:
            return requested, False
        raise st.bad_request(f"container {requested} is not valid for pod {name}")

    def check_reachable(self, pod: dict, path: str) -> None:
        node = (pod.get("spec") or {}).get("nodeName")
        if node and node in self.nodes_without_kubelet:
            nodeobj = self.store.find("nodes", node) or {}
            addrs = (nodeobj.get("status") or {}).get("addresses") or []
            ip = next((a["address"] for a in addrs if a.get("type") == "InternalIP"), node)
            port = (((nodeobj.get("status") or {}).get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port", 10250)
            raise st.internal(f'Get "https://{ip}:{port}{path}": dial tcp {ip}:{port}: connect: connection refused')

    def serve_log(self, ex, pod: dict) -> None:
        podlog.serve_log(self, ex, pod)

    def serve_exec(self, ex, pod: dict) -> None:
        podexec.serve_exec(self, ex, pod)

    def serve_attach(self, ex, pod: dict) -> None:
        podattach.serve_attach(self, ex, pod)
