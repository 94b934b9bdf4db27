"""``node/NAME`` and ``nodes``: how a capture gets into a node's network namespace.

No SSH and no DaemonSet. Two ways, chosen by the user:

1. **Attach** the agent as an ephemeral container to a running hostNetwork pod on the node
   (kube-proxy, a CNI agent, node-local-dns — usually DaemonSet pods). Its network
   namespace *is* the node's, so the capture sees every pod's veth, the bridge and the
   node's own traffic. Static (mirror) pods are never chosen: the API server refuses any
   change to a mirror pod's spec, ephemeral containers included — they are recognised by
   the ``kubernetes.io/config.mirror`` annotation or an owner reference to the Node.
   ``--via-pod NS/NAME`` names the pod instead.
2. **Create** (``--create-pod``, explicit consent; then on every node, so that nothing is
   added to the node's own pods) a short-lived hostNetwork pod pinned to the node
   (``nodeName``: no scheduler) whose one container is the agent. Its
   ``activeDeadlineSeconds`` makes the kubelet kill it with the trace's deadline even if
   the plugin is killed; the plugin deletes it at the end, and a later run deletes
   finished leftovers of earlier ones (label ``app.kubernetes.io/managed-by``).

When neither is possible the user hears exactly why (no hostNetwork pod, RBAC, Pod
Security) and what would work. With many nodes (``nodes``), a node that cannot be covered
does not stop the others: it is listed with its reason.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from kubectl_dnstrace.errors import (
    DnstraceError,
    Forbidden,
    NotFound,
    PodSecurityDenied,
    UsageError,
)
from kubectl_dnstrace.kube.client import Action, Kube, resource_path
from kubectl_dnstrace.kube.targets import not_running_reason, pod_ref
from kubectl_dnstrace.model import PodRef

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "kubectl-dnstrace"
RUN_LABEL = "dnstrace.io/run"
NODE_ROLE = "node"
DEADLINE_MARGIN = 60  # seconds past --duration before the kubelet kills a created pod
# Pods whose job is DNS or the node's network: the least surprising hosts for a capture.
PREFERRED = ("node-local-dns", "kube-proxy", "cilium", "calico-node", "kube-flannel",
             "flannel", "weave-net", "kindnet", "aws-node", "antrea-agent")


@dataclass(slots=True)
class NodeCapture:
    """How one node is captured: through ``pod`` (attach, or the pod to create)."""

    node: str
    pod: PodRef
    why: str
    create: bool = False


@dataclass(slots=True)
class NodePlan:
    captures: list[NodeCapture] = field(default_factory=list)
    uncovered: list[tuple[str, str]] = field(default_factory=list)  # (node, why)


def is_mirror(pod: dict) -> bool:
    meta = pod.get("metadata") or {}
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return True
    return any(o.get("kind") == "Node" for o in meta.get("ownerReferences") or [])


def _owner(pod: dict) -> tuple[str, str]:
    for o in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if o.get("controller"):
            return o.get("kind") or "", o.get("name") or ""
    return "", ""


def _rank(pod: dict) -> tuple:
    meta = pod.get("metadata") or {}
    kind, owner = _owner(pod)
    text = " ".join([meta.get("name", ""), owner, *(meta.get("labels") or {}).values()])
    preferred = next((i for i, word in enumerate(PREFERRED) if word in text), len(PREFERRED))
    return (kind != "DaemonSet", preferred, meta.get("namespace") != "kube-system",
            meta.get("namespace", ""), meta.get("name", ""))


def describe_choice(pod: dict, node: str, others: int) -> str:
    meta = pod.get("metadata") or {}
    kind, owner = _owner(pod)
    what = f"{kind} {owner}" if kind else "a bare pod"
    rest = f"; {others} other hostNetwork pod(s) there" if others else ""
    return (f"node {node}: capturing through hostNetwork pod {meta.get('namespace')}/"
            f"{meta.get('name')} ({what}): it shares the node's network namespace{rest}")


def candidate_pods(pods: list[dict], node: str) -> tuple[list[dict], list[str]]:
    """The pods on ``node`` that can take the capture container, best first, and why the
    other hostNetwork pods there cannot."""
    good, refused = [], []
    for pod in pods:
        spec = pod.get("spec") or {}
        if spec.get("nodeName") != node or not spec.get("hostNetwork"):
            continue
        key = f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}"
        if is_mirror(pod):
            refused.append(f"{key} is a static (mirror) pod, which takes no ephemeral container")
            continue
        why = not_running_reason(pod)
        if why:
            refused.append(f"{key} is {why}")
            continue
        good.append(pod)
    return sorted(good, key=_rank), refused


def plan_nodes(kube: Kube, nodes: list[str], *, via_pod: str | None, create_pod: bool,
               pod_namespace: str, container_name: str) -> NodePlan:
    """Choose how each node is captured. ``via_pod`` ("NS/NAME") only with one node."""
    plan = NodePlan()
    if via_pod and create_pod:
        raise UsageError("--via-pod and --create-pod are two ways to the same node: choose one",
                         "--via-pod attaches to a pod there, --create-pod creates one")
    if via_pod:
        plan.captures.append(_via_pod(kube, nodes, via_pod))
        return plan
    pods: list[dict] = []
    if create_pod:
        pass  # every node gets its own capture pod: no need to look at theirs
    elif len(nodes) == 1:
        pods, _ = kube.list("pods", None, field_selector=f"spec.nodeName={nodes[0]}")
    else:
        pods, _ = kube.list("pods", None)
    for node in nodes:
        if create_pod:
            ref = PodRef(namespace=pod_namespace, name=f"{container_name}-{node}"[:63].rstrip("-."),
                         node=node, host_network=True, role=NODE_ROLE,
                         containers=[container_name])
            plan.captures.append(NodeCapture(
                node, ref, f"node {node}: creating capture pod {ref.key} pinned to it "
                "(--create-pod: no ephemeral container is added to the node's own pods)",
                create=True))
            continue
        good, refused = candidate_pods(pods, node)
        if good:
            chosen = good[0]
            plan.captures.append(NodeCapture(node, pod_ref(chosen, NODE_ROLE),
                                             describe_choice(chosen, node, len(good) - 1)))
        else:
            why = "no running hostNetwork pod that can take an ephemeral container"
            if refused:
                why += " (" + "; ".join(refused) + ")"
            plan.uncovered.append((node, why))
    return plan


def _via_pod(kube: Kube, nodes: list[str], text: str) -> NodeCapture:
    ns, _, name = text.partition("/")
    if not ns or not name:
        raise UsageError(f"--via-pod wants NAMESPACE/NAME, not {text!r}",
                         "for example --via-pod kube-system/kube-proxy-x7k2p")
    if len(nodes) != 1:
        raise UsageError("--via-pod names the pod of one node: give one node/NAME with it")
    try:
        pod = kube.get("pods", name, ns)
    except NotFound:
        raise NotFound(f"pod {name!r} not found in namespace {ns} (--via-pod)",
                       f"list the node's pods: kubectl get pods -A --field-selector "
                       f"spec.nodeName={nodes[0]}") from None
    spec = pod.get("spec") or {}
    problem = ""
    if spec.get("nodeName") != nodes[0]:
        problem = f"it runs on node {spec.get('nodeName') or '(none)'}, not {nodes[0]}"
    elif not spec.get("hostNetwork"):
        problem = "it is not a hostNetwork pod: its capture would see only its own traffic"
    elif is_mirror(pod):
        problem = "it is a static (mirror) pod: the API refuses ephemeral containers on those"
    elif not_running_reason(pod):
        problem = f"it is {not_running_reason(pod)}"
    if problem:
        raise UsageError(f"--via-pod {text}: {problem}",
                         "choose a running hostNetwork pod on that node (kubectl get pods -A "
                         f"-o wide --field-selector spec.nodeName={nodes[0]}), or --create-pod")
    return NodeCapture(nodes[0], pod_ref(pod, NODE_ROLE),
                       f"node {nodes[0]}: capturing through {text} (--via-pod)")


def uncovered_error(plan: NodePlan) -> DnstraceError:
    """Nothing could be covered: the reasons, and what would work."""
    reasons = "; ".join(f"node {n}: {why}" for n, why in plan.uncovered)
    return NotFound(
        f"cannot capture on {', '.join(n for n, _ in plan.uncovered)}: {reasons}",
        "name a pod with --via-pod NAMESPACE/NAME, or let kubectl dnstrace create a short-lived "
        "hostNetwork pod on the node with --create-pod [--pod-namespace NS] (it needs create "
        "and delete on pods there, and a namespace whose Pod Security level is privileged; "
        "`kubectl dnstrace rbac --nodes` prints the permissions)",
    )


# ---- creating the pod (--create-pod) ------------------------------------------------------------

def check_create(kube: Kube, namespace: str) -> list[str]:
    """Pre-flight of --create-pod in ``namespace``: RBAC (create, delete, get pods, their
    log) and Pod Security (hostNetwork is allowed only at level privileged). Raises with
    what would work; returns notes."""
    missing = []
    for verb, sub in (("create", ""), ("delete", ""), ("get", ""), ("get", "log")):
        try:
            allowed, _ = kube.can_i(verb, "pods", namespace, subresource=sub)
        except DnstraceError:
            allowed = True  # could not ask: the request itself will say
        if not allowed:
            missing.append(f"{verb} pods{'/' + sub if sub else ''}")
    if missing:
        raise Forbidden(
            f"--create-pod: you may not {', '.join(missing)} in namespace {namespace} (RBAC)",
            "apply what `kubectl dnstrace rbac --nodes -n NAMESPACE` prints, choose another "
            "namespace with --pod-namespace, or attach to a running hostNetwork pod "
            "(--via-pod) instead")
    try:
        ns = kube.get("namespaces", namespace)
    except NotFound:
        raise NotFound(f"namespace {namespace!r} not found (--pod-namespace)",
                       "check it with `kubectl get namespaces`") from None
    except DnstraceError:
        return [f"could not read namespace {namespace}: the pod creation will tell"]
    level = ((ns.get("metadata") or {}).get("labels") or {}).get(
        "pod-security.kubernetes.io/enforce", "")
    if level in ("baseline", "restricted"):
        raise PodSecurityDenied(
            f"--create-pod: namespace {namespace} enforces Pod Security level {level}, which "
            "forbids hostNetwork pods (only privileged allows them)",
            "use --pod-namespace with a namespace labelled pod-security.kubernetes.io/"
            "enforce=privileged (kube-system usually is), or attach to a running hostNetwork "
            "pod with --via-pod")
    return []


def capture_pod(ref: PodRef, container: dict, run_id: str, duration: float) -> dict:
    """The pod --create-pod creates: hostNetwork, pinned to the node, the agent its only
    container, gone by itself after the deadline (activeDeadlineSeconds)."""
    main = {k: v for k, v in container.items() if k != "targetContainerName"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": ref.name,
            "namespace": ref.namespace,
            "labels": {MANAGED_BY: MANAGED_BY_VALUE, RUN_LABEL: run_id},
            "annotations": {"dnstrace.io/purpose": "DNS capture of node " + ref.node
                            + "; deleted when the trace ends"},
        },
        "spec": {
            "nodeName": ref.node,
            "hostNetwork": True,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "restartPolicy": "Never",
            "activeDeadlineSeconds": int(duration) + DEADLINE_MARGIN,
            "terminationGracePeriodSeconds": 5,
            "automountServiceAccountToken": False,
            "tolerations": [{"operator": "Exists"}],
            "containers": [main],
        },
    }


def create_capture_pod(kube: Kube, pod: dict) -> None:
    meta = pod["metadata"]
    kube.request("POST", resource_path("pods", meta["namespace"]), body=pod,
                 what=Action("create", "pods", meta["namespace"], meta["name"]))


def delete_capture_pod(kube: Kube, ref: PodRef) -> None:
    with contextlib.suppress(NotFound):  # already gone: what we wanted
        kube.request("DELETE", resource_path("pods", ref.namespace, ref.name),
                     body={"gracePeriodSeconds": 0},
                     what=Action("delete", "pods", ref.namespace, ref.name))


def delete_leftovers(kube: Kube, namespace: str) -> list[str]:
    """Finished capture pods of earlier runs (a run killed before it could delete its pod:
    the deadline stopped it, the object stays). Returns what was deleted."""
    try:
        pods, _ = kube.list("pods", namespace,
                            label_selector=f"{MANAGED_BY}={MANAGED_BY_VALUE},{RUN_LABEL}")
    except DnstraceError:
        return []
    gone = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            ref = pod_ref(pod)
            try:
                delete_capture_pod(kube, ref)
                gone.append(ref.key)
            except DnstraceError:
                pass
    return gone
