"""The least-privilege RBAC objects a responder applies before a trace.

``kubectl dnstrace rbac`` prints them as a multi-document YAML stream that ``kubectl apply
-f -`` accepts. Two shapes:

- ``--cluster``: one ClusterRole and ClusterRoleBinding. Needed for ``coredns`` mode (the
  DNS pods live in kube-system) and for attributing client IPs to pods of every namespace.
  Plus, for ``coredns --via log``, a Role in kube-system that may read and update the one
  ConfigMap holding the Corefile (``coredns``, by name) and nothing else there.
- ``-n NS``: a Role and RoleBinding in NS for tracing pods there, plus a small ClusterRole
  for what no Role can grant: reading nodes, and reading that one namespace (its Pod
  Security labels decide how the capture container is built). Attribution lists pods in
  every namespace, which this grant does not allow: client IPs are then shown as they are.

Every rule says why it is there; the same table drives the text and the tests.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

import yaml

from kubectl_dnstrace.errors import UsageError

NAME = "kubectl-dnstrace"
DEFAULT_GROUP = "kubectl-dnstrace"
RBAC_API = "rbac.authorization.k8s.io"
RBAC_VERSION = f"{RBAC_API}/v1"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Rule:
    """One PolicyRule plus the reason it is needed, printed as a comment above it."""

    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    cluster_scoped: bool = False  # nodes, namespaces: only a ClusterRole can grant them

    def as_policy_rule(self, resource_names: tuple[str, ...] = ()) -> dict:
        rule: dict = {
            "apiGroups": [self.api_group],
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }
        if resource_names:
            rule["resourceNames"] = list(resource_names)
        return rule


RULES: tuple[Rule, ...] = (
    Rule("", ("pods",), ("get", "list", "watch"),
         "find the target pods, follow their capture containers, map client IPs to pods"),
    Rule("", ("pods/ephemeralcontainers",), ("get", "patch"),
         "add the capture agent as an ephemeral container (a strategic-merge PATCH, as kubectl debug)"),
    Rule("", ("pods/log",), ("get",),
         "stream the agent's NDJSON events home; coredns --via log: read CoreDNS's own log"),
    Rule("", ("pods/attach",), ("create", "get"),
         "hand the agent its program: the capture container's command is a one-line "
         "bootstrap that reads it from stdin, so the program does not stay in the pod object. "
         "A WebSocket GET, authorized as get (and create on servers that check it). Not "
         "needed with the project's image, which has the agent preinstalled"),
    Rule("", ("pods/exec",), ("create", "get"),
         "stop the agent cleanly on exit (touches its stop file). The client's exec is a "
         "WebSocket GET: Kubernetes 1.30+ authorizes it as create, older servers as get. "
         "Optional: without it the agent stops at its --duration deadline"),
    Rule("", ("services",), ("get", "list"),
         "find the cluster DNS behind Service kube-dns; name Service IPs"),
    Rule("apps", ("deployments", "replicasets", "daemonsets", "statefulsets"), ("get", "list"),
         "resolve a pod's owner to the workload a human knows; deploy/NAME targets; "
         "node-local-dns detection"),
    Rule("batch", ("jobs", "cronjobs"), ("get", "list"),
         "name the CronJob behind a short-lived Job pod (from the Job's owner reference); "
         "job/NAME and cronjob/NAME targets"),
    Rule("", ("nodes",), ("get", "list"),
         "map node and podCIDR gateway addresses to nodes (hostNetwork clients); node/NAME "
         "and nodes targets",
         cluster_scoped=True),
    Rule("", ("namespaces",), ("get",),
         "read the pod-security.kubernetes.io labels before adding a container",
         cluster_scoped=True),
)

# --create-pod (node/NAME, nodes): a short-lived hostNetwork pod in --pod-namespace.
CREATE_POD_RULE = Rule("", ("pods",), ("create", "delete"),
                       "--create-pod: create the short-lived hostNetwork capture pod pinned to "
                       "a node, and delete it at the end. Pod Security must be privileged "
                       "in this namespace (hostNetwork)")

# coredns --via log: the Corefile's ConfigMap only, by name, in the DNS namespace only.
DNS_NAMESPACE = "kube-system"
COREFILE_CONFIGMAP = "coredns"
LOG_ROUTE_RULE = Rule(
    "", ("configmaps",), ("get", "update", "patch"),
    "coredns --via log: add a 'log' line to the Corefile (with a record of the change in an "
    "annotation) and put it back. Only this ConfigMap; rename it if your cluster's Corefile "
    "lives in another (the CoreDNS pods' configMap volume names it)")

SSAR_NOTE = (
    "Pre-flight checks use SelfSubjectAccessReview (authorization.k8s.io, create).\n"
    "Every authenticated user may create those through the default ClusterRole\n"
    "system:basic-user, so they are not granted again here."
)

# The verbs the RBAC API knows for resources (plus "*"); anything else is a typo.
KNOWN_VERBS = frozenset(
    {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
     "use", "bind", "escalate", "impersonate", "approve", "sign", "*"}
)


def _subject(user: str | None) -> dict:
    if user:
        return {"kind": "User", "apiGroup": RBAC_API, "name": user}
    return {"kind": "Group", "apiGroup": RBAC_API, "name": DEFAULT_GROUP}


def _metadata(name: str, namespace: str | None = None) -> dict:
    meta: dict = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "rbac"}
    return meta


def _dump(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=None, width=1000)


def _document(comment: str, head: dict, rules: list[tuple[Rule, tuple[str, ...]]] | None,
              tail: dict | None = None) -> str:
    """One YAML document: comment lines, the object's head, each rule under its reason."""
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    text = "\n".join(lines) + "\n" + _dump(head)
    if rules is not None:
        text += "rules:\n"
        for rule, names in rules:
            text += "".join(f"# {line}\n" for line in textwrap.wrap(rule.why, 90))
            text += _dump([rule.as_policy_rule(names)])
    if tail:
        text += _dump(tail)
    return text


def policy_documents(cluster: bool, namespace: str | None, user: str | None) -> list[dict]:
    """The objects themselves, as the API would receive them (tests apply these)."""
    return [doc for doc in yaml.safe_load_all(render_rbac(cluster, namespace, user)) if doc]


def _check(cluster: bool, namespace: str | None, user: str | None) -> str:
    if cluster and namespace:
        raise UsageError(
            "--cluster and --namespace exclude each other",
            "use --cluster for coredns mode and every namespace, or -n NS for pods in NS",
        )
    ns = namespace or "default"
    if not _DNS1123_LABEL.match(ns) or len(ns) > 63:
        raise UsageError(f"{ns!r} is not a valid namespace name", "lower-case letters, digits and '-'")
    if user is not None and not user.strip():
        raise UsageError("--user is empty", "name the user as the API server knows it")
    return ns


def render_rbac(cluster: bool, namespace: str | None, user: str | None,
                nodes: bool = False) -> str:
    """Multi-document YAML for ``kubectl apply -f -``: role(s) first, then binding(s).

    ``nodes``: node traces (node/NAME, nodes) need the ClusterRole (pods on any node, in any
    namespace) plus, for --create-pod, create/delete of pods in ``namespace``."""
    if nodes:
        return _render_nodes(namespace, user)
    ns = _check(cluster, namespace, user)
    subject = _subject(user)
    who = f"user {user}" if user else f"members of group {DEFAULT_GROUP}"
    docs: list[str] = []
    if cluster:
        docs.append(_document(
            f"kubectl-dnstrace, every namespace (coredns mode, attribution everywhere).\n"
            f"Apply: kubectl dnstrace rbac --cluster | kubectl apply -f -\n\n{SSAR_NOTE}",
            {"apiVersion": RBAC_VERSION, "kind": "ClusterRole", "metadata": _metadata(NAME)},
            [(rule, ()) for rule in RULES],
        ))
        docs.append(_document(
            f"Grants the ClusterRole above to {who}.",
            {"apiVersion": RBAC_VERSION, "kind": "ClusterRoleBinding", "metadata": _metadata(NAME)},
            None,
            {"roleRef": {"apiGroup": RBAC_API, "kind": "ClusterRole", "name": NAME},
             "subjects": [subject]},
        ))
        docs.append(_document(
            f"kubectl-dnstrace coredns --via log: the Corefile's ConfigMap in {DNS_NAMESPACE}, "
            "nothing else\nthere (reading the CoreDNS pods' logs is pods/log above).",
            {"apiVersion": RBAC_VERSION, "kind": "Role",
             "metadata": _metadata(f"{NAME}-corefile", DNS_NAMESPACE)},
            [(LOG_ROUTE_RULE, (COREFILE_CONFIGMAP,))],
        ))
        docs.append(_document(
            f"Grants the Role above to {who}.",
            {"apiVersion": RBAC_VERSION, "kind": "RoleBinding",
             "metadata": _metadata(f"{NAME}-corefile", DNS_NAMESPACE)},
            None,
            {"roleRef": {"apiGroup": RBAC_API, "kind": "Role", "name": f"{NAME}-corefile"},
             "subjects": [subject]},
        ))
        return "---\n".join(docs)

    cluster_name = f"{NAME}-{ns}"
    docs.append(_document(
        f"kubectl-dnstrace, pods in namespace {ns} only. Client IPs are not mapped to pods\n"
        f"(that lists pods in every namespace); use --cluster for that and for coredns mode.\n"
        f"Apply: kubectl dnstrace rbac -n {ns} | kubectl apply -f -\n\n{SSAR_NOTE}",
        {"apiVersion": RBAC_VERSION, "kind": "Role", "metadata": _metadata(NAME, ns)},
        [(rule, ()) for rule in RULES if not rule.cluster_scoped],
    ))
    docs.append(_document(
        f"Grants the Role above to {who}.",
        {"apiVersion": RBAC_VERSION, "kind": "RoleBinding", "metadata": _metadata(NAME, ns)},
        None,
        {"roleRef": {"apiGroup": RBAC_API, "kind": "Role", "name": NAME}, "subjects": [subject]},
    ))
    docs.append(_document(
        f"What a Role cannot grant: nodes, and namespace {ns} itself (its Pod Security labels).",
        {"apiVersion": RBAC_VERSION, "kind": "ClusterRole", "metadata": _metadata(cluster_name)},
        [(rule, (ns,) if rule.resources == ("namespaces",) else ())
         for rule in RULES if rule.cluster_scoped],
    ))
    docs.append(_document(
        f"Grants the ClusterRole above to {who}.",
        {"apiVersion": RBAC_VERSION, "kind": "ClusterRoleBinding",
         "metadata": _metadata(cluster_name)},
        None,
        {"roleRef": {"apiGroup": RBAC_API, "kind": "ClusterRole", "name": cluster_name},
         "subjects": [subject]},
    ))
    return "---\n".join(docs)


def _render_nodes(namespace: str | None, user: str | None) -> str:
    ns = _check(False, namespace, user)
    subject = _subject(user)
    role = f"{NAME}-create-pod"
    docs = [render_rbac(True, None, user).rstrip("\n") + "\n"]
    docs.append(_document(
        f"kubectl-dnstrace node traces with --create-pod --pod-namespace {ns}.\n"
        f"Apply: kubectl dnstrace rbac --nodes -n {ns} | kubectl apply -f -",
        {"apiVersion": RBAC_VERSION, "kind": "Role", "metadata": _metadata(role, ns)},
        [(CREATE_POD_RULE, ())],
    ))
    docs.append(_document(
        "Grants the Role above.",
        {"apiVersion": RBAC_VERSION, "kind": "RoleBinding", "metadata": _metadata(role, ns)},
        None,
        {"roleRef": {"apiGroup": RBAC_API, "kind": "Role", "name": role},
         "subjects": [subject]},
    ))
    return "---\n".join(docs)
