"""Check everything a trace needs before touching any pod.

Per namespace of the chosen pods:
- RBAC, asked with SelfSubjectAccessReview (any authenticated user may ask about itself):
  ``patch pods/ephemeralcontainers``, ``get pods/log`` and (for the inline agent, whose
  program travels over attach) ``get``/``create pods/attach`` are required; ``create pods/exec``
  (or ``get`` on servers before 1.30) is optional and only decides whether we can ask the
  agents to stop early.
- Pod Security Admission, read from the namespace's ``pod-security.kubernetes.io/enforce``
  label. ``restricted`` forbids raw capture (NET_RAW is not allowed, nor running as root);
  ``baseline`` forbids *adding* capabilities but allows root, and containerd's default
  capability set includes NET_RAW, so the container runs as root with no added
  capabilities (CRI-O's default set lacks NET_RAW: the agent's own error then says so).
  A cluster-wide default level set in the admission configuration carries no label: the
  patch's 403 body is translated then (see ``ephemeral.add_capture_container``).
- Ephemeral containers at all: the discovery document of ``/api/v1`` lists
  ``pods/ephemeralcontainers`` when the cluster serves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubectl_dnstrace.errors import DnstraceError, Forbidden, PodSecurityDenied, Unsupported
from kubectl_dnstrace.kube.client import Kube, psa_hint
from kubectl_dnstrace.model import PodRef

PSA_ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"

# (verb, resource, subresource, required)
REQUIRED_ACCESS = (
    ("patch", "pods", "ephemeralcontainers", True),
    ("get", "pods", "log", True),
    # The client's exec is a WebSocket GET: 1.30+ authorizes it as create, older servers as get.
    ("create", "pods", "exec", False),
    ("get", "pods", "exec", False),
)
# The inline agent's program is written to the capture container's stdin through attach, a
# WebSocket GET too: the real 1.35 API server checked ``get`` on the upgrade (create alone
# was refused), servers with the 1.30 create check want ``create``; both are asked for.
ATTACH_ACCESS = (
    ("get", "pods", "attach", True),
    ("create", "pods", "attach", True),
)


@dataclass(slots=True)
class NamespacePlan:
    """What the pre-flight learnt about one namespace."""

    namespace: str
    psa_level: str | None = None  # None: unknown (label unreadable); "" : no label (privileged)
    capabilities: list[str] = field(default_factory=lambda: ["NET_RAW"])
    can_exec: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Preflight:
    namespaces: dict[str, NamespacePlan] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def plan(self, namespace: str) -> NamespacePlan:
        return self.namespaces.setdefault(namespace, NamespacePlan(namespace))


def check_ephemeral_support(kube: Kube) -> None:
    """Unsupported when discovery says the cluster has no pods/ephemeralcontainers."""
    try:
        doc = kube.request("GET", "/api/v1")
    except DnstraceError:
        return  # discovery unreadable: the patch's own 404 will tell
    if not isinstance(doc, dict) or not doc.get("resources"):
        return
    names = {r.get("name") for r in doc.get("resources") or []}
    if "pods" in names and "pods/ephemeralcontainers" not in names:
        raise Unsupported(
            "this cluster does not serve pods/ephemeralcontainers: ephemeral containers are "
            f"unavailable (server {kube.version.get('gitVersion', 'unknown')})",
            "upgrade to Kubernetes >= 1.25, ask CoreDNS itself (no container: kubectl "
            "dnstrace coredns --via log --domain NAME), or analyze a tcpdump capture taken on "
            "the node: kubectl dnstrace analyze FILE.pcap",
        )


def check_access(kube: Kube, namespaces: list[str], result: Preflight,
                 attach: bool = False) -> None:
    """SelfSubjectAccessReview per namespace; one Forbidden naming every missing permission.

    ``attach``: the agent program travels through pods/attach (every image but the project's).
    """
    missing: list[str] = []
    access = REQUIRED_ACCESS + (ATTACH_ACCESS if attach else ())
    for ns in namespaces:
        plan = result.plan(ns)
        for verb, resource, sub, required in access:
            try:
                allowed, _reason = kube.can_i(verb, resource, ns, subresource=sub)
            except DnstraceError as exc:
                # Could not ask: go on, the real request will say precisely.
                result.notes.append(f"could not check {verb} {resource}/{sub} in {ns}: {exc.message}")
                allowed = True
            if not required:
                plan.can_exec = plan.can_exec or allowed
            elif not allowed:
                missing.append(f"{verb} {resource}/{sub} in namespace {ns}")
    if missing:
        verb, what, _in, _ns, ns = missing[0].split(" ")
        nss = sorted({m.rsplit(" ", 1)[1] for m in missing})
        rbac = f"kubectl dnstrace rbac -n {nss[0]}" if len(nss) == 1 else "kubectl dnstrace rbac --cluster"
        needs = "add the capture container, read its output"
        if attach:
            needs += " and hand the agent its program (pods/attach)"
        raise Forbidden(
            "you may not " + "; ".join(missing) + f" (RBAC): a trace needs to {needs}",
            f"ask a cluster admin to apply what `{rbac}` prints for you; check with "
            f"`kubectl auth can-i {verb} {what} -n {ns}`"
            + ("; the project's image (--image ghcr.io/kubectl-dnstrace/agent:VERSION) needs "
               "no attach" if attach else "")
            + ("; or, with no capture container, ask CoreDNS itself: kubectl dnstrace "
               "coredns --via log --domain NAME (needs update on its ConfigMap and pods/log)"
               if what == "pods/ephemeralcontainers" else ""),
        )


def check_pod_security(kube: Kube, namespaces: list[str], result: Preflight) -> None:
    """Read each namespace's enforce label and decide the capabilities (or refuse)."""
    for ns in namespaces:
        plan = result.plan(ns)
        try:
            obj = kube.get("namespaces", ns)
        except DnstraceError:
            plan.psa_level = None  # unreadable: the patch's 403 body decides
            continue
        labels = (obj.get("metadata") or {}).get("labels") or {}
        level = labels.get(PSA_ENFORCE_LABEL, "")
        plan.psa_level = level
        if level == "restricted":
            raise PodSecurityDenied(
                f"namespace {ns} enforces Pod Security level restricted, which forbids the "
                "capture container: raw packet capture needs the NET_RAW capability (and root), "
                "and restricted allows neither",
                psa_hint("restricted", ns),
            )
        if level == "baseline":
            plan.capabilities = []
            plan.notes.append(
                f"namespace {ns} enforces Pod Security baseline: the capture container runs as "
                "root with the runtime's default capabilities (no NET_RAW added)"
            )


def run_preflight(kube: Kube, pods: list[PodRef], attach: bool = False) -> Preflight:
    """All checks, in the order a user would want to hear about problems."""
    result = Preflight()
    namespaces = sorted({p.namespace for p in pods})
    check_ephemeral_support(kube)
    check_access(kube, namespaces, result, attach=attach)
    check_pod_security(kube, namespaces, result)
    return result
