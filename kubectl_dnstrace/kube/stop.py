"""Ask capture agents to stop early, and tell the user what stays behind.

Ephemeral containers cannot be stopped or removed through the API: the agent stops itself
at its deadline, on a signal, or when its stop file appears. Creating that file through
``pods/exec`` is the only way to end it early from outside, so it needs ``create
pods/exec``; without it the agents run until their own ``--duration`` deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kubectl_dnstrace.errors import DnstraceError, Forbidden
from kubectl_dnstrace.kube.client import Kube
from kubectl_dnstrace.model import PodRef

STOP_ATTEMPTS = 2


def stop_file_path(run_id: str) -> str:
    return f"/tmp/dnstrace-{run_id}.stop"


def stop_command(path: str) -> list[str]:
    """Works in any image with python3 (no shell, no touch needed)."""
    return ["python3", "-c", f"open({path!r},'w').close()"]


def request_stop(kube: Kube, pods: list[PodRef], container: str, path: str,
                 timeout: float = 10.0,
                 notice: Callable[[str], None] = lambda s: None) -> list[str]:
    """Exec the stop command in every pod's capture container, in parallel.

    Returns the keys of the pods where the request failed (their agents stop at the deadline).
    """
    failed: list[str] = []
    lock = threading.Lock()

    def one(pod: PodRef) -> None:
        k = kube.clone()
        try:
            for attempt in range(STOP_ATTEMPTS):
                try:
                    k.exec(pod.namespace, pod.name, container, stop_command(path),
                           timeout=timeout)
                    return
                except Forbidden as exc:  # asking again will not help
                    error = exc
                    break
                except DnstraceError as exc:  # a busy kubelet or API server: once more
                    error = exc
                    if attempt + 1 < STOP_ATTEMPTS:
                        time.sleep(1.0)
            with lock:
                failed.append(pod.key)
            notice(f"could not ask the agent in {pod.key} to stop: {error.message}")
        finally:
            k.close()

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in pods]
    for t in threads:
        t.start()
    for t in threads:
        t.join(STOP_ATTEMPTS * (timeout + 1.0) + 2.0)
    return failed


def leftovers_message(added: list[tuple[PodRef, str]],
                      sizes: dict[str, tuple[int, int]] | None = None) -> str:
    """What the user must know after a run: containers stay in the pod spec, and what each
    costs the pod object (``sizes``: pod key -> (bytes added, pod bytes now))."""
    if not added:
        return ""
    lines = []
    for pod, name in added:
        added_bytes, pod_bytes = (sizes or {}).get(pod.key, (0, 0))
        size = (f" (+{added_bytes / 1024:.1f} KB to the pod object, now "
                f"{pod_bytes / 1024:.0f} KB of etcd's 1.5 MiB limit)" if added_bytes else "")
        lines.append(f"Added ephemeral container {name} to pod {pod.key}{size}")
    lines.append(
        "Kubernetes keeps ephemeral containers in the pod spec (stopped) until the pod is "
        "recreated; they cannot be removed through the API. Packet-socket alerts (e.g. "
        "Falco's) may fire for them: they are this trace."
    )
    return "\n".join(lines)
