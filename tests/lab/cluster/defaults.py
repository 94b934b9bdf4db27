"""Defaulting kube-apiserver applies to objects on create, as seen in the recordings.

A pod created with only ``name``/``image`` comes back with ``resources: {}``,
``terminationMessagePath``, ``terminationMessagePolicy: File``, ``imagePullPolicy``
(``Always`` for ``:latest`` or untagged images, else ``IfNotPresent``), ``restartPolicy``,
``dnsPolicy``, the default service account, the two not-ready/unreachable tolerations and
``status: {phase: Pending, qosClass: BestEffort}``. Ephemeral containers get the same
container defaults when they are added through the subresource. The service-account token
volume that the ServiceAccount admission plugin injects is not simulated.
"""

from __future__ import annotations

import datetime as _dt
import uuid

_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
]


def now_rfc3339() -> str:
    """Whole-second UTC timestamp, the precision metav1.Time serialises with."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid() -> str:
    return str(uuid.uuid4())


def pull_policy(image: str) -> str:
    tail = image.rsplit("/", 1)[-1]
    if "@" in tail:
        return "IfNotPresent"
    if ":" not in tail or tail.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def container(c: dict) -> dict:
    """Container defaults (regular, init and ephemeral containers alike)."""
    for flag in ("stdin", "stdinOnce", "tty"):  # Go omitempty: false is not serialised
        if c.get(flag) is False:
            del c[flag]
    c.setdefault("resources", {})
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    if c.get("image"):
        c.setdefault("imagePullPolicy", pull_policy(c["image"]))
    return c


def pod(obj: dict) -> dict:
    spec = obj.setdefault("spec", {})
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            container(c)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    tolerations = spec.setdefault("tolerations", [])
    for tol in _TOLERATIONS:
        if not any(t.get("key") == tol["key"] for t in tolerations):
            tolerations.append(dict(tol))
    spec.setdefault("priority", 0)
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Pending")
    status.setdefault("qosClass", "BestEffort")
    return obj


def namespace(obj: dict) -> dict:
    name = obj["metadata"]["name"]
    labels = obj["metadata"].setdefault("labels", {})
    labels["kubernetes.io/metadata.name"] = name
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")
    return obj


def node(obj: dict) -> dict:
    """The TaintNodesByCondition admission taints a node that is not (yet) Ready."""
    status = obj.setdefault("status", {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    if not ready:
        taints = obj.setdefault("spec", {}).setdefault("taints", [])
        if not any(t.get("key") == "node.kubernetes.io/not-ready" for t in taints):
            taints.append({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"})
    status.setdefault("daemonEndpoints", {"kubeletEndpoint": {"Port": 0}})
    info = status.setdefault("nodeInfo", {})
    for key in ("machineID", "systemUUID", "bootID", "kernelVersion", "osImage", "containerRuntimeVersion",
                "kubeletVersion", "kubeProxyVersion", "operatingSystem", "architecture"):
        info.setdefault(key, "")
    return obj


BY_KIND = {"Pod": pod, "Namespace": namespace, "Node": node}
GENERATION_KINDS = {"Pod", "Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "Job", "CronJob"}


def apply(kind: str, obj: dict) -> dict:
    fn = BY_KIND.get(kind)
    return fn(obj) if fn else obj
