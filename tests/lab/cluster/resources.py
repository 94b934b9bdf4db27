"""The API resources the simulated server knows, and the discovery documents built from them.

Mirrors kube-apiserver's resource table: a resource is addressed by (group, version, plural);
it is namespaced or cluster-scoped; its subresources are separate RBAC resources
("pods/ephemeralcontainers", "pods/log"). Discovery (/api, /api/v1, /apis, /apis/G/V) is
generated from this table, shaped like the recorded ``01-discovery-core-v1.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

READ = ["get", "list", "watch"]
CRUD = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = tuple(CRUD)
    short_names: tuple[str, ...] = ()
    subresources: tuple[tuple[str, str, tuple[str, ...]], ...] = field(default=())  # (name, kind, verbs)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How error messages name the resource: ``pods``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)


_POD_SUBS = (
    ("attach", "PodAttachOptions", ("create", "get")),
    ("binding", "Binding", ("create",)),
    ("ephemeralcontainers", "Pod", ("get", "patch", "update")),
    ("eviction", "Eviction", ("create",)),
    ("exec", "PodExecOptions", ("create", "get")),
    ("log", "Pod", ("get",)),
    ("portforward", "PodPortForwardOptions", ("create", "get")),
    ("proxy", "PodProxyOptions", ("create", "delete", "get", "head", "options", "patch", "post", "put")),
    ("status", "Pod", ("get", "patch", "update")),
)

RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", False, tuple(c for c in CRUD if c != "deletecollection"), ("ns",),
             (("finalize", "Namespace", ("update",)), ("status", "Namespace", ("get", "patch", "update")))),
    Resource("", "v1", "nodes", "Node", False, short_names=("no",),
             subresources=(("proxy", "NodeProxyOptions", ("create", "delete", "get", "head", "options", "patch", "post", "put")),
                           ("status", "Node", ("get", "patch", "update")))),
    Resource("", "v1", "pods", "Pod", True, short_names=("po",), subresources=_POD_SUBS),
    Resource("", "v1", "services", "Service", True, short_names=("svc",),
             subresources=(("status", "Service", ("get", "patch", "update")),)),
    Resource("", "v1", "endpoints", "Endpoints", True, short_names=("ep",)),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True, short_names=("sa",),
             subresources=(("token", "TokenRequest", ("create",)),)),
    Resource("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
    Resource("apps", "v1", "deployments", "Deployment", True, short_names=("deploy",),
             subresources=(("status", "Deployment", ("get", "patch", "update")),)),
    Resource("apps", "v1", "replicasets", "ReplicaSet", True, short_names=("rs",),
             subresources=(("status", "ReplicaSet", ("get", "patch", "update")),)),
    Resource("apps", "v1", "daemonsets", "DaemonSet", True, short_names=("ds",),
             subresources=(("status", "DaemonSet", ("get", "patch", "update")),)),
    Resource("apps", "v1", "statefulsets", "StatefulSet", True, short_names=("sts",),
             subresources=(("status", "StatefulSet", ("get", "patch", "update")),)),
    Resource("batch", "v1", "jobs", "Job", True, subresources=(("status", "Job", ("get", "patch", "update")),)),
    Resource("batch", "v1", "cronjobs", "CronJob", True, short_names=("cj",),
             subresources=(("status", "CronJob", ("get", "patch", "update")),)),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    Resource("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False, ("create",)),
)

GROUP_ORDER = ("apps", "batch", "authorization.k8s.io", "rbac.authorization.k8s.io")


def find(group: str, version: str, plural: str) -> Resource | None:
    for res in RESOURCES:
        if res.group == group and res.version == version and res.plural == plural:
            return res
    return None


def by_kind(kind: str) -> Resource:
    for res in RESOURCES:
        if res.kind == kind:
            return res
    raise KeyError(kind)


def by_plural(plural: str, group: str | None = None) -> Resource:
    for res in RESOURCES:
        if res.plural == plural and (group is None or res.group == group):
            return res
    raise KeyError(plural)


def resource_list(group: str, version: str) -> dict | None:
    """The APIResourceList served at /api/v1 or /apis/G/V (None when the group is unknown)."""
    gv = f"{group}/{version}" if group else version
    items = []
    for res in RESOURCES:
        if res.group != group or res.version != version:
            continue
        entry = {"name": res.plural, "singularName": res.kind.lower(), "namespaced": res.namespaced,
                 "kind": res.kind, "verbs": list(res.verbs)}
        if res.short_names:
            entry["shortNames"] = list(res.short_names)
        items.append(entry)
        for sub, kind, verbs in res.subresources:
            items.append({"name": f"{res.plural}/{sub}", "singularName": "", "namespaced": res.namespaced,
                          "kind": kind, "verbs": list(verbs)})
    if not items:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": items}


def api_group(group: str) -> dict | None:
    versions = sorted({r.version for r in RESOURCES if r.group == group})
    if not group or not versions:
        return None
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list() -> dict:
    groups = [g for g in (api_group(name) for name in GROUP_ORDER) if g]
    for g in groups:
        del g["kind"], g["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_versions(server_address: str) -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}
