"""The three PATCH flavours kube-apiserver accepts for built-in types.

- Strategic merge (``application/strategic-merge-patch+json``): maps merge recursively, ``null``
  deletes a key, lists declared with a patch merge key (containers, ephemeralContainers, env,
  volumes … by ``name``) merge item by item; other lists are replaced. Surprise copied from the
  recordings (49, 25): without ``$setElementOrder`` the patch's items come FIRST, then the
  items only the server had — so an added ephemeral container gets index 0. With
  ``$setElementOrder/<field>`` (what kubectl sends) that order wins. ``$patch: delete`` on an
  item removes it.
- JSON merge patch (RFC 7386, ``application/merge-patch+json``): lists are replaced whole —
  which is why a merge patch "adding" an ephemeral container removes the others (recording 21).
- JSON patch (RFC 6902, ``application/json-patch+json``): add/remove/replace/move/copy/test.
"""

from __future__ import annotations

import copy

MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "volumes": "name",
    "env": "name", "imagePullSecrets": "name", "volumeMounts": "mountPath", "ports": "containerPort",
    "conditions": "type", "addresses": "type", "ownerReferences": "uid",
}


class PatchError(ValueError):
    """A patch that cannot be applied (the server answers 422 or 400)."""


def strategic_merge(original: dict, patch: dict) -> dict:
    out = copy.deepcopy(original)
    _smp_map(out, patch)
    return out


def _smp_map(target: dict, patch: dict) -> None:
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object")
    if patch.get("$patch") == "replace":
        target.clear()
        target.update({k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"})
        return
    orders = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$setElementOrder/")}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _smp_map(target[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(target.get(key), list):
            target[key] = _smp_list(target[key], value, MERGE_KEYS[key], orders.get(key))
        elif isinstance(value, dict):
            fresh: dict = {}
            _smp_map(fresh, value)
            target[key] = fresh
        else:
            target[key] = [_strip(v) for v in value] if isinstance(value, list) else value
    for key, order in orders.items():
        if key not in patch and isinstance(target.get(key), list):
            target[key] = _smp_list(target[key], [], MERGE_KEYS.get(key, "name"), order)


def _strip(v):
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in v.items() if not k.startswith("$")}
    return copy.deepcopy(v)


def _smp_list(orig: list, patch: list, key: str, order: list | None) -> list:
    by_key = {item.get(key): copy.deepcopy(item) for item in orig if isinstance(item, dict)}
    patched: list = []
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {key}")
        k = item[key]
        if item.get("$patch") == "delete":
            by_key.pop(k, None)
            continue
        if k in by_key:
            _smp_map(by_key[k], item)
        else:
            fresh: dict = {}
            _smp_map(fresh, item)
            by_key[k] = fresh
        if k not in patched:
            patched.append(k)
    server_only = [item.get(key) for item in orig if isinstance(item, dict) and item.get(key) not in patched]
    keys = [k for k in patched + server_only if k in by_key]
    if order is not None:
        rank = {o.get(key): i for i, o in enumerate(order) if isinstance(o, dict)}
        keys.sort(key=lambda k: rank.get(k, len(rank)))
    return [by_key[k] for k in keys]


def merge_patch(original, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc, parts: list[str], path: str):
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return cur


def _get(doc, path: str):
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"doc is missing path: {path!r}")


def _add(doc, path: str, value):
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), copy.deepcopy(value))
        else:
            raise PatchError(f"add operation does not apply: doc is missing path: {path!r}")
    else:
        raise PatchError(f"add operation does not apply: doc is missing path: {path!r}")
    return doc


def _remove(doc, path: str):
    parts = _pointer(path)
    parent = _parent(doc, parts, path)
    last = parts[-1] if parts else ""
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError(f"remove operation does not apply: doc is missing path: {path!r}")


def json_patch(original, ops: list) -> dict:
    """RFC 6902."""
    if not isinstance(ops, list):
        raise PatchError("json patch must be a list of operations")
    doc = copy.deepcopy(original)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "add":
            doc = _add(doc, path, op.get("value"))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            _remove(doc, path)
            doc = _add(doc, path, op.get("value"))
        elif kind == "move":
            value = _remove(doc, op["from"])
            doc = _add(doc, path, value)
        elif kind == "copy":
            doc = _add(doc, path, _get(doc, op["from"]))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {kind}")
    return doc
