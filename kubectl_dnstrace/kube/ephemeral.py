"""The capture container: build it, add it to a pod, wait until it runs.

Ephemeral containers are added with a strategic-merge patch on the pod's
``ephemeralcontainers`` subresource, shaped as a pod: ``{"spec": {"ephemeralContainers":
[container]}}`` (what ``kubectl debug`` sends). They can never be changed or removed
afterwards (the API answers 422), so one run adds exactly one container per pod, with a
name unique to the run, and the agent inside always carries its own deadline.

``targetContainerName`` is the pod's first container, like ``kubectl debug --target``: the
capture shares that container's process namespace view; the network namespace is the pod's
anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubectl_dnstrace import __version__
from kubectl_dnstrace.errors import (
    AgentFailed,
    ContainerFailed,
    DnstraceError,
    PodSecurityDenied,
)
from kubectl_dnstrace.kube.client import Kube, psa_hint
from kubectl_dnstrace.model import PodRef

CONTAINER_PREFIX = "dnstrace-"
# Each capture container stays in the pod object until the pod is recreated (the figure per
# trace is in docs/performance.md); kube/podguard refuses a trace near etcd's limit, and
# this many earlier ones get a word of warning first.
WARN_EXISTING = 50

# Waiting reasons that will not resolve by waiting longer.
FATAL_WAITING = {
    "ErrImagePull": "the image cannot be pulled",
    "ImagePullBackOff": "the image cannot be pulled",
    "ErrImageNeverPull": "the image is not on the node and imagePullPolicy is Never",
    "InvalidImageName": "the image name is invalid",
    "CreateContainerError": "the container runtime could not create the container",
    "CreateContainerConfigError": "the container configuration is invalid",
    "RunContainerError": "the container runtime could not start the container",
}


@dataclass(slots=True)
class CaptureSpec:
    """What every capture container of a run shares."""

    run_id: str
    image: str
    command: list[str]
    image_pull_policy: str | None = None
    user: str = ""
    # The agent program the bootstrap command reads from stdin (empty: the image has it).
    program: bytes = b""

    @property
    def container_name(self) -> str:
        return CONTAINER_PREFIX + self.run_id


def kubelet_literal(text: str) -> str:
    """``text`` written so that the kubelet passes it to the runtime unchanged.

    The kubelet expands ``$(NAME)`` in a container's command and args from the container's
    environment and turns ``$$`` into ``$`` (``expansion.Expand``); a ``$`` before any
    other character is kept, but which characters follow is luck (the inline agent's
    base85 text has ``$``, ``(`` and ``)`` in its alphabet). Doubling every ``$`` makes the
    whole string literal, whatever follows.
    """
    return text.replace("$", "$$")


def build_container(spec: CaptureSpec, pod: PodRef, capabilities: list[str]) -> dict:
    """The ephemeral container for one pod. Never privileged; NET_RAW only when allowed."""
    env = [
        {"name": "DNSTRACE_RUN_ID", "value": spec.run_id},
        {"name": "DNSTRACE_VERSION", "value": __version__},
    ]
    if spec.user:
        env.append({"name": "DNSTRACE_USER", "value": spec.user})
    security: dict = {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "privileged": False,
    }
    if capabilities:
        security["capabilities"] = {"add": list(capabilities)}
    container: dict = {
        "name": spec.container_name,
        "image": spec.image,
        "command": [kubelet_literal(part) for part in spec.command],
        "env": env,
        "securityContext": security,
        "tty": False,
    }
    if spec.program:
        # The runtime keeps stdin open until the first attach ends, then closes it: the
        # program is written once, by this run, and nobody can write to it afterwards.
        container["stdin"] = True
        container["stdinOnce"] = True
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if pod.containers:
        container["targetContainerName"] = pod.containers[0]
    return container


def build_patch(container: dict) -> dict:
    """The strategic-merge patch body: a pod, not a bare container (that would do nothing)."""
    return {"spec": {"ephemeralContainers": [container]}}


def our_containers(pod_obj: dict) -> list[str]:
    return [c.get("name", "") for c in (pod_obj.get("spec") or {}).get("ephemeralContainers") or []
            if c.get("name", "").startswith(CONTAINER_PREFIX)]


def existing_warning(pod: PodRef, count: int) -> str:
    return (
        f"{pod.key} already carries {count} dnstrace capture containers; each stays in "
        "the pod object for its lifetime (etcd refuses objects over ~1.5 MiB). Reset them "
        "by recreating the pod (e.g. kubectl rollout restart deployment/NAME -n "
        f"{pod.namespace}, or delete the pod if a controller recreates it)"
    )


def add_capture_container(kube: Kube, spec: CaptureSpec, pod: PodRef,
                          capabilities: list[str],
                          notice: Callable[[str], None] = lambda s: None,
                          on_patched: Callable[[dict], None] = lambda obj: None) -> dict:
    """Patch the container into the pod; returns the container actually added.

    A Pod Security denial read from the 403 body (a cluster-wide default level carries no
    namespace label) is handled like the label would have been: baseline -> retry once
    without added capabilities; restricted -> refuse with the alternatives.
    """
    if spec.container_name in pod.ephemeral_containers:
        raise ContainerFailed(
            f"{pod.key} already has a container named {spec.container_name}",
            "run again: a new run uses a new name",
        )
    existing = sum(1 for n in pod.ephemeral_containers if n.startswith(CONTAINER_PREFIX))
    if existing >= WARN_EXISTING:
        notice("warning: " + existing_warning(pod, existing))
    container = build_container(spec, pod, capabilities)
    try:
        on_patched(kube.patch_ephemeral_containers(pod.namespace, pod.name,
                                                   build_patch(container)))
    except PodSecurityDenied as exc:
        level = getattr(exc, "psa_level", "")
        if level == "baseline" and capabilities:
            notice(f"{pod.namespace} enforces Pod Security baseline (from the API's answer): "
                   "retrying without added capabilities, as root")
            container = build_container(spec, pod, [])
            on_patched(kube.patch_ephemeral_containers(pod.namespace, pod.name,
                                                       build_patch(container)))
        elif level == "restricted":
            raise PodSecurityDenied(
                f"namespace {pod.namespace} enforces Pod Security level restricted, which "
                "forbids the capture container: raw packet capture needs the NET_RAW "
                "capability, which restricted forbids (the API said: "
                f"{getattr(exc, 'api_message', '') or exc.message})",
                psa_hint("restricted", pod.namespace),
            ) from None
        else:
            raise
    return container


def send_program(kube: Kube, pod: PodRef, name: str, program: bytes) -> None:
    """Write the agent program to the running bootstrap's stdin (pods/attach)."""
    kube.attach_write(pod.namespace, pod.name, name, program)


# ---- waiting ---------------------------------------------------------------------------------

@dataclass(slots=True)
class ContainerState:
    """Where a capture container is: waiting (reason), running, or terminated (exit code)."""

    phase: str  # "pending" | "waiting" | "running" | "terminated"
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    started_at: str = ""
    last_reason: str = ""  # lastState.terminated.reason: "StartError" when runc could not start it

    @property
    def never_starts(self) -> bool:
        """Ended for good without running: ephemeral containers are never restarted. The
        real kubelet shows ``waiting: RunContainerError`` with the StartError in lastState."""
        return self.reason == "StartError" or self.last_reason == "StartError"


def container_state(pod_obj: dict, name: str) -> ContainerState:
    status = pod_obj.get("status") or {}
    # A pod created for a node capture (kube/nodes.py) runs the agent as a regular container.
    for st in (status.get("ephemeralContainerStatuses") or []) + (
            status.get("containerStatuses") or []):
        if st.get("name") != name:
            continue
        state = st.get("state") or {}
        last = ((st.get("lastState") or {}).get("terminated") or {}).get("reason", "")
        if "waiting" in state and last:
            w = state["waiting"] or {}
            return ContainerState("waiting", w.get("reason", ""), w.get("message", ""),
                                  last_reason=last)
        if "running" in state:
            return ContainerState("running", started_at=(state["running"] or {}).get("startedAt", ""))
        if "terminated" in state:
            t = state["terminated"] or {}
            return ContainerState("terminated", t.get("reason", ""), t.get("message", ""),
                                  t.get("exitCode"), t.get("startedAt", ""))
        if "waiting" in state:
            w = state["waiting"] or {}
            return ContainerState("waiting", w.get("reason", ""), w.get("message", ""))
    return ContainerState("pending")


def wait_running(kube: Kube, pod: PodRef, name: str, deadline: float,
                 on_state: Callable[[PodRef, ContainerState], None] = lambda p, s: None,
                 cancel: threading.Event | None = None) -> ContainerState:
    """Watch one pod (fieldSelector metadata.name) until the container runs or cannot.

    Returns the running (or already terminated) state; raises ContainerFailed on a waiting
    reason that will not resolve, and on the deadline.
    """
    cancel = cancel or threading.Event()
    field = f"metadata.name={pod.name}"
    last = ContainerState("pending")
    while not cancel.is_set():
        items, rv = kube.list("pods", pod.namespace, field_selector=field)
        if not items:
            raise ContainerFailed(
                f"{pod.key} disappeared while its capture container was starting",
                "the pod was deleted or replaced; run again",
            )
        last = _check(pod, name, container_state(items[0], name), on_state, last)
        if last.phase in ("running", "terminated"):
            return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for etype, obj in kube.watch("pods", pod.namespace, resource_version=rv,
                                     field_selector=field,
                                     timeout_seconds=min(remaining, 30.0)):
            if cancel.is_set():
                break
            if etype == "DELETED":
                raise ContainerFailed(
                    f"{pod.key} was deleted while its capture container was starting",
                    "run again",
                )
            if etype not in ("ADDED", "MODIFIED"):
                continue
            last = _check(pod, name, container_state(obj, name), on_state, last)
            if last.phase in ("running", "terminated"):
                return last
            if time.monotonic() >= deadline:
                break
        if time.monotonic() >= deadline:
            break
    if cancel.is_set():
        return last
    raise ContainerFailed(
        f"the capture container {name} in {pod.key} did not start within the timeout "
        f"(last state: {last.phase}{' ' + last.reason if last.reason else ''})",
        "raise --timeout (image pulls on a cold node can be slow) or pre-pull the image; "
        f"`kubectl describe pod {pod.name} -n {pod.namespace}` shows the events",
    )


def _check(pod: PodRef, name: str, state: ContainerState,
           on_state: Callable[[PodRef, ContainerState], None],
           last: ContainerState) -> ContainerState:
    if (state.phase, state.reason) != (last.phase, last.reason):
        on_state(pod, state)
    if state.never_starts:
        raise start_error(pod, name, state)
    if state.phase == "waiting" and state.reason in FATAL_WAITING:
        raise ContainerFailed(
            f"the capture container {name} in {pod.key} cannot start: {state.reason} "
            f"({FATAL_WAITING[state.reason]}){': ' + state.message if state.message else ''}",
            image_hint(state.reason),
        )
    return state


# What the bootstrap writes (to the pod log) when the program came incomplete.
PROGRAM_CUT = "the agent program did not arrive complete"


def start_error(pod: PodRef, name: str, state: ContainerState) -> ContainerFailed:
    """runc could not start the command (no python3 on the image's PATH, say)."""
    return ContainerFailed(
        f"the capture container {name} in {pod.key} could not start (StartError"
        + (f": {state.message}" if state.message else "")
        + "); it has ended and will never start again (ephemeral containers are not restarted)",
        "use an image with python3 (>= 3.8) on its PATH: pass --image",
    )


def image_hint(reason: str) -> str:
    if reason in ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"):
        return ("pass --image with an image the nodes can pull that has python3 (for "
                "air-gapped clusters, a mirror of python:3-alpine in your registry), and "
                "--image-pull-policy IfNotPresent if it is pre-loaded")
    return ("check the node's container runtime (`kubectl describe pod`); try --image with "
            "another image that has python3")


def early_exit_error(kube: Kube, pod: PodRef, name: str, state: ContainerState,
                     decode_error: Callable[[str], str | None]) -> DnstraceError:
    """The container ended before we streamed it: show the agent's own ``error`` record."""
    try:
        text = kube.read_log_text(pod.namespace, pod.name, name)
    except DnstraceError:
        text = ""
    if state.never_starts:
        return start_error(pod, name, state)
    if PROGRAM_CUT in text:
        return ContainerFailed(
            f"the agent program did not reach the capture container {name} in {pod.key} "
            "complete (pods/attach); it ended without capturing",
            "run again; if it persists, the connection to the API server cuts long "
            "WebSocket messages: use the project's image (--image "
            "ghcr.io/kubectl-dnstrace/agent:VERSION), which needs no program",
        )
    agent_message = decode_error(text)
    if agent_message:
        return AgentFailed(
            f"the capture agent in {pod.key} failed: {agent_message}",
            agent_hint(agent_message),
        )
    tail = " | ".join(text.strip().splitlines()[-3:])
    return ContainerFailed(
        f"the capture container {name} in {pod.key} exited with code {state.exit_code} "
        f"({state.reason or 'no reason'}) before it could report"
        + (f"; its last output: {tail}" if tail else ""),
        "check that the image has python3 (>= 3.8) on its PATH, or pass --image",
    )


def agent_hint(message: str) -> str:
    low = message.lower()
    if "net_raw" in low or "permission" in low or "operation not permitted" in low:
        return ("the container lacks CAP_NET_RAW: under Pod Security baseline this depends on "
                "the runtime's default capabilities (CRI-O's omit NET_RAW); ask an admin to "
                "label the namespace pod-security.kubernetes.io/enforce=privileged, ask CoreDNS "
                "itself with no capture at all (kubectl dnstrace coredns --via log --domain "
                "NAME), or analyze a node capture: kubectl dnstrace analyze FILE.pcap")
    return "run again with --image pointing at another python3 image; report it if it persists"
