"""Label and field selectors as kube-apiserver parses them.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``,
comma-separated (all must hold). ``a!=b`` and ``notin`` also match objects without the label.
Field selectors: ``=``, ``==``, ``!=`` on the fields each resource declares (pods support
``spec.nodeName``, ``status.phase``, ``status.podIP`` …, every resource ``metadata.name`` and
``metadata.namespace``); any other field is a 400 like the real server's.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .status import bad_request

Predicate = Callable[[dict], bool]

_SET_RE = re.compile(r"^\s*(!?)([A-Za-z0-9./_-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(==|!=|=)\s*([A-Za-z0-9._-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def _requirement(text: str) -> Predicate:
    m = _SET_RE.match(text)
    if m and not m.group(1):
        key, op = m.group(2), m.group(3)
        values = {v.strip() for v in m.group(4).split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    m = _EQ_RE.match(text)
    if m:
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: key in labels and labels[key] == value
    m = _EXISTS_RE.match(text)
    if m:
        neg, key = m.groups()
        if neg:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f"unable to parse requirement: found '{text.strip()}', expected: in, notin, =, ==, !=, gt, lt")


def label_selector(selector: str | None) -> Predicate:
    """A predicate on an object from a labelSelector query value (None or "" matches all)."""
    if not selector:
        return lambda obj: True
    reqs = [_requirement(part) for part in _split(selector)]

    def match(obj: dict) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(req(labels) for req in reqs)

    return match


def _dig(obj: dict, path: str):
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy",
              "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
              "status.podIP", "status.podIPs", "status.nominatedNodeName")
FIELDS_BY_PLURAL = {
    "pods": POD_FIELDS,
    "nodes": ("metadata.name", "spec.unschedulable"),
    "namespaces": ("metadata.name", "status.phase"),
    "services": ("metadata.name", "metadata.namespace", "spec.clusterIP", "spec.type"),
    "replicasets": ("metadata.name", "metadata.namespace", "status.replicas"),
    "jobs": ("metadata.name", "metadata.namespace", "status.successful"),
}


def _field_value(obj: dict, path: str) -> str:
    if path == "spec.hostNetwork":
        return "true" if _dig(obj, path) else "false"
    if path == "status.podIPs":
        return ",".join(p.get("ip", "") for p in (_dig(obj, path) or []))
    value = _dig(obj, path)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_selector(selector: str | None, plural: str) -> Predicate:
    """A predicate from a fieldSelector query value, validated against the resource's fields."""
    if not selector:
        return lambda obj: True
    allowed = FIELDS_BY_PLURAL.get(plural, ("metadata.name", "metadata.namespace"))
    reqs = []
    for part in _split(selector):
        m = re.match(r"^\s*([A-Za-z0-9._]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not m:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{part}'")
        path, op, value = m.groups()
        if path not in allowed:
            raise bad_request(f'field label not supported: {path}')
        reqs.append((path, op == "!=", value))

    def match(obj: dict) -> bool:
        for path, negate, value in reqs:
            got = _field_value(obj, path)
            if (got == value) == negate:
                return False
        return True

    return match
