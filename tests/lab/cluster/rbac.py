"""Authentication by bearer token and RBAC authorization over the Roles/bindings in the store.

Mirrors kube-apiserver with ``--authorization-mode=Node,RBAC``:
- members of ``system:masters`` may do everything (admin); everybody authenticated may read
  discovery/version and create SelfSubjectAccessReviews (system:basic-user, system:discovery);
- a rule matches on apiGroups, resources (``pods/log`` is its own resource, ``*`` and
  ``*/sub`` wildcards), verbs and resourceNames; RoleBindings grant within their namespace,
  ClusterRoleBindings everywhere; subjects are User, Group or ServiceAccount;
- ServiceAccount tokens authenticate as ``system:serviceaccount:NS:NAME`` with the groups
  ``system:serviceaccounts``, ``system:serviceaccounts:NS``;
- the denial reads exactly ``User "dev-user" cannot patch resource "pods/ephemeralcontainers"
  in API group "" in the namespace "dnstrace-fx"`` (``at the cluster scope`` without one).
Fault switches (``Faults.deny``) are checked first and refuse even admin.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from .faults import Faults
from .store import Store


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]
    token: str

    @property
    def is_admin(self) -> bool:
        return "system:masters" in self.groups


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""            # non-resource requests (/version, /api)

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


class Users:
    """Bearer-token users. ``admin``, ``dev-user`` and ``limited-sa`` exist from the start."""

    def __init__(self) -> None:
        self._by_token: dict[str, User] = {}
        self._by_name: dict[str, User] = {}
        self.add("admin", ("system:masters", "system:authenticated"))
        self.add("dev-user", ("dev-group", "system:authenticated"))
        self.add_service_account("dnstrace-fx", "limited-sa")

    def add(self, name: str, groups: tuple[str, ...] = ("system:authenticated",)) -> User:
        if "system:authenticated" not in groups:
            groups = (*groups, "system:authenticated")
        user = User(name, tuple(groups), secrets.token_hex(16))
        self._by_token[user.token] = user
        self._by_name[name] = user
        return user

    def add_service_account(self, namespace: str, name: str) -> User:
        user = self.add(f"system:serviceaccount:{namespace}:{name}",
                        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))
        self._by_name.setdefault(name, user)
        return user

    def by_token(self, token: str) -> User | None:
        return self._by_token.get(token)

    def get(self, name: str) -> User:
        """A user by name (``limited-sa`` also finds its ServiceAccount); unknown names are created."""
        if name not in self._by_name:
            if name.startswith("system:serviceaccount:"):
                _, _, ns, sa = name.split(":", 3)
                return self.add_service_account(ns, sa)
            return self.add(name)
        return self._by_name[name]


def _rule_matches(rule: dict, attrs: Attributes) -> bool:
    if attrs.path:
        urls = rule.get("nonResourceURLs") or []
        return any(u == "*" or u == attrs.path or (u.endswith("*") and attrs.path.startswith(u[:-1])) for u in urls) \
            and any(v in ("*", attrs.verb) for v in rule.get("verbs") or [])
    if not any(g in ("*", attrs.group) for g in rule.get("apiGroups") or []):
        return False
    want = attrs.full_resource
    ok = False
    for r in rule.get("resources") or []:
        if r in ("*", want) or (r.startswith("*/") and attrs.subresource and r[2:] == attrs.subresource) or (r.endswith("/*") and attrs.subresource and r[:-2] == attrs.resource):
            ok = True
    if not ok:
        return False
    if not any(v in ("*", attrs.verb) for v in rule.get("verbs") or []):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _subject_matches(subject: dict, user: User) -> str | None:
    kind = subject.get("kind")
    if kind == "User" and subject.get("name") == user.name:
        return f'User "{user.name}"'
    if kind == "Group" and subject.get("name") in user.groups:
        return f'Group "{subject["name"]}"'
    if kind == "ServiceAccount":
        ns = subject.get("namespace", "")
        if user.name == f"system:serviceaccount:{ns}:{subject.get('name')}":
            return f'ServiceAccount "{subject["name"]}/{ns}"'
    return None


class Authorizer:
    def __init__(self, store: Store, faults: Faults):
        self.store = store
        self.faults = faults

    def decide(self, user: User, attrs: Attributes) -> tuple[bool, str]:
        """(allowed, reason) — the reason is what a SelfSubjectAccessReview reports."""
        if not attrs.path and self.faults.denied(user.name, attrs.verb, attrs.resource, attrs.subresource or None,
                                                 attrs.namespace or None):
            return False, ""
        if user.is_admin:
            return True, ""
        if attrs.path:
            return True, 'RBAC: allowed by ClusterRoleBinding "system:discovery" of ClusterRole "system:discovery" to Group "system:authenticated"'
        if attrs.group == "authorization.k8s.io" and attrs.resource in ("selfsubjectaccessreviews", "selfsubjectrulesreviews"):
            return True, 'RBAC: allowed by ClusterRoleBinding "system:basic-user" of ClusterRole "system:basic-user" to Group "system:authenticated"'
        crbs, _ = self.store.list("clusterrolebindings")
        for b in crbs:
            found = self._binding_allows(b, user, attrs, namespace=None)
            if found:
                return True, found
        if attrs.namespace:
            rbs, _ = self.store.list("rolebindings", attrs.namespace)
            for b in rbs:
                found = self._binding_allows(b, user, attrs, namespace=attrs.namespace)
                if found:
                    return True, found
        return False, ""

    def _binding_allows(self, binding: dict, user: User, attrs: Attributes, namespace: str | None) -> str:
        who = next((w for w in (_subject_matches(s, user) for s in binding.get("subjects") or []) if w), None)
        if not who:
            return ""
        ref = binding.get("roleRef") or {}
        role = (self.store.find("roles", ref.get("name", ""), namespace) if ref.get("kind") == "Role" and namespace
                else self.store.find("clusterroles", ref.get("name", "")) if ref.get("kind") == "ClusterRole" else None)
        if not role or not any(_rule_matches(r, attrs) for r in role.get("rules") or []):
            return ""
        bname = binding["metadata"]["name"]
        if namespace:
            return f'RBAC: allowed by RoleBinding "{bname}/{namespace}" of {ref["kind"]} "{ref["name"]}" to {who}'
        return f'RBAC: allowed by ClusterRoleBinding "{bname}" of ClusterRole "{ref["name"]}" to {who}'


def denial_text(user: User, attrs: Attributes) -> str:
    where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    return f'User "{user.name}" cannot {attrs.verb} resource "{attrs.full_resource}" in API group "{attrs.group}" {where}'
