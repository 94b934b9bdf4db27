"""Request handling of the simulated kube-apiserver, in the real server's order.

For each request: authenticate the bearer token (401) → resolve the path (404 without a name
for unknown paths) → authorize with RBAC (403, checked before any existence check, so a
denied user learns nothing about the object) → namespace/object lookup (404) → decode and
apply patches → validation (422) → Pod Security admission (403, Warning headers) → store.

The pods subresources are the interesting part: ``ephemeralcontainers`` (GET returns the
whole Pod; PATCH/PUT may only append), ``log`` and ``exec`` (both relayed to the kubelet,
which answers 400 while a container waits and 500 when the node has no kubelet).
"""

from __future__ import annotations

import base64
import copy
import json
import queue
import time

from . import defaults, protobuf, psa, resources, selectors, validation
from . import patch as patches
from . import status as st
from .faults import Faults
from .rbac import Attributes, Authorizer, User, Users, denial_text
from .resources import Resource
from .server import Exchange
from .status import ApiError
from .store import Store

VERSION = {
    "major": "1", "minor": "35", "emulationMajor": "1", "emulationMinor": "35",
    "minCompatibilityMajor": "1", "minCompatibilityMinor": "34",
    "gitVersion": "v1.35.0-sim", "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean", "buildDate": "2025-10-01T00:00:00Z", "goVersion": "go1.25.0",
    "compiler": "gc", "platform": "linux/amd64",
}
PATCH_TYPES = ("application/strategic-merge-patch+json", "application/merge-patch+json",
               "application/json-patch+json")


CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list.")


def _key(obj: dict) -> tuple[str, str]:
    """Where a list item sorts (the store lists by namespace, then name)."""
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class Route:
    """What a resource path names."""

    def __init__(self, res: Resource, namespace: str, name: str, sub: str):
        self.res, self.namespace, self.name, self.sub = res, namespace, name, sub


def parse_route(path: str) -> Route | None:
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 3 and parts[1] == "v1":
        group, version, rest = "", "v1", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    res = resources.find(group, version, rest[0])
    if res is None or (namespace and not res.namespaced):
        return None
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    if sub and sub not in {s for s, _, _ in res.subresources}:
        return None
    return Route(res, namespace, name, sub)


def _verb(ex: Exchange, route: Route) -> str:
    m = ex.method
    if route.sub == "exec":
        return "create"
    if route.sub == "attach":  # the real 1.35 server checks get on the websocket upgrade
        return "get" if m == "GET" else "create"
    if m == "GET":
        if route.name:
            return "get"
        return "watch" if ex.flag("watch") else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if route.name else "deletecollection"}.get(m, m.lower())


class Api:
    def __init__(self, store: Store, users: Users, faults: Faults, kubelet, server_address: str = ""):
        self.store = store
        self.users = users
        self.faults = faults
        self.kubelet = kubelet
        self.authz = Authorizer(store, faults)
        self.server_address = server_address
        self.bookmark_interval = 5.0
        self.stopping = False

    # -- entry -------------------------------------------------------------------------------

    def handle(self, ex: Exchange) -> None:
        path = ex.path
        if path in ("/healthz", "/livez", "/readyz"):
            ex.send_text(200, b"ok")
            return
        if path == "/version" and not ex.headers.get("Authorization"):
            ex.send_json(200, VERSION)  # system:public-info-viewer lets anonymous read it
            return
        user = self._authenticate(ex)
        if path in ("/version", "/api", "/apis") or (path.startswith(("/api/", "/apis/")) and self._discovery(path)):
            allowed, _ = self.authz.decide(user, Attributes(verb="get", path=path))
            if not allowed:
                raise ApiError(st.failure(403, f'forbidden: User "{user.name}" cannot get path "{path}"', "Forbidden", {}))
            ex.send_json(200, self._discovery(path) if path not in ("/version",) else VERSION)
            return
        route = parse_route(path)
        if route is None:
            raise st.not_found_path()
        verb = _verb(ex, route)
        if route.sub == "ephemeralcontainers" and self.faults.ephemeral_disabled:
            raise st.not_found_path()
        attrs = Attributes(verb=verb, group=route.res.group, resource=route.res.plural, subresource=route.sub,
                           namespace=route.namespace, name=route.name)
        allowed, _ = self.authz.decide(user, attrs)
        if not allowed:
            raise st.forbidden(route.res, route.name or None, denial_text(user, attrs))
        if verb not in route.res.verbs and not route.sub:
            raise st.method_not_allowed()
        self._dispatch(ex, route, verb, user)

    def _authenticate(self, ex: Exchange) -> User:
        auth = ex.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            user = self.users.by_token(auth[7:].strip())
            if user:
                user = self._impersonate(ex, user)
                ex.user = user.name
                return user
        raise st.unauthorized()

    def _impersonate(self, ex: Exchange, user: User) -> User:
        """``Impersonate-User``/``-Group`` headers (kubectl --as): only admins may impersonate."""
        name = ex.headers.get("Impersonate-User")
        if not name:
            return user
        if not user.is_admin:
            raise ApiError(st.failure(403, f'users "{name}" is forbidden: User "{user.name}" cannot impersonate '
                                      'resource "users" in API group "" at the cluster scope', "Forbidden",
                                      {"name": name, "kind": "users"}))
        groups = tuple(ex.headers.get_all("Impersonate-Group") or ())
        base = self.users.get(name)
        return User(name, groups or base.groups, base.token) if groups else base

    def _discovery(self, path: str):
        if path == "/api":
            return resources.api_versions(self.server_address)
        if path == "/apis":
            return resources.api_group_list()
        parts = path.strip("/").split("/")
        if parts == ["api", "v1"]:
            return resources.resource_list("", "v1")
        if parts[0] == "apis" and len(parts) == 2:
            return resources.api_group(parts[1])
        if parts[0] == "apis" and len(parts) == 3:
            return resources.resource_list(parts[1], parts[2])
        return None

    # -- dispatch ----------------------------------------------------------------------------

    def _dispatch(self, ex: Exchange, route: Route, verb: str, user: User) -> None:
        res, sub = route.res, route.sub
        if res.kind == "SelfSubjectAccessReview":
            self._ssar(ex, user)
            return
        if sub == "log":
            self._check_ns(route)
            self.kubelet.serve_log(ex, self.store.get(res, route.name, route.namespace))
            return
        if sub == "exec":
            self._check_ns(route)
            self.kubelet.serve_exec(ex, self.store.get(res, route.name, route.namespace))
            return
        if sub == "attach":
            self._check_ns(route)
            self.kubelet.serve_attach(ex, self.store.get(res, route.name, route.namespace))
            return
        if sub == "ephemeralcontainers":
            self._ephemeral(ex, route, verb, user)
            return
        if verb == "get":
            ex.send_json(200, self.store.get(res, route.name, route.namespace))
        elif verb in ("list", "watch"):
            match = self._selector(ex, res)
            if verb == "watch":
                self._watch(ex, res, route.namespace, match)
            else:
                # A list in a namespace that does not exist is empty, not a 404.
                items, meta = self._page(ex, res, route.namespace or None, match)
                for item in items:  # list items carry no kind/apiVersion on the wire
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                ex.send_json(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                                   "metadata": meta, "items": items})
        elif verb == "create":
            obj = ex.json_body()
            body_ns = (obj.get("metadata") or {}).get("namespace")
            if res.namespaced and body_ns and body_ns != route.namespace:
                raise st.bad_request("the namespace of the provided object does not match the namespace sent on "
                                     "the request")
            if res.kind == "Pod":
                obj["status"] = {}  # PrepareForCreate: a new pod's status is the server's, not the client's
            headers = self._admit_create(res, route.namespace, obj)
            ex.send_json(201, self.store.create(obj, res, route.namespace or None), headers)
        elif verb == "update":
            self._update(ex, route)
        elif verb == "patch":
            self._patch(ex, route)
        elif verb == "delete":
            if res.kind == "Pod":
                ex.send_json(200, self._delete_pod(ex, route))
            else:
                ex.send_json(200, self.store.delete(res, route.name, route.namespace))
        else:
            raise st.method_not_allowed()

    def _page(self, ex: Exchange, res: Resource, namespace: str | None,
              match) -> tuple[list[dict], dict]:
        """A list as the API server pages it: at most ``limit`` items, and while more remain
        a ``continue`` token (the snapshot's version and the key to start after) and
        ``remainingItemCount``. A token whose version the history no longer holds (or the
        ``expire_continue`` fault) is 410 Expired with the server's text. Simplified: a
        continued page lists the objects as they are now, after the token's key, under the
        token's version."""
        token = ex.query.get("continue")
        after = snapshot = None
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
                snapshot, after = int(state["rv"]), tuple(state["start"])
            except (ValueError, KeyError, TypeError):
                raise st.bad_request(f"continue key is not valid: {token}") from None
            if self.faults.continue_expired() or snapshot < self.store.oldest_version():
                raise ApiError(st.gone(CONTINUE_EXPIRED))
        try:
            limit = max(0, int(ex.query.get("limit") or 0))
        except ValueError:
            limit = 0
        items, rv, more = self.store.page(res, namespace, match, after, limit)
        meta: dict = {"resourceVersion": str(snapshot) if snapshot is not None else rv}
        if more:
            state = {"v": "meta.k8s.io/v1", "rv": int(meta["resourceVersion"]),
                     "start": list(_key(items[-1]))}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")
            meta["remainingItemCount"] = more
        return items, meta

    def _check_ns(self, route: Route) -> None:
        """A missing namespace reads as the pod missing, like recording 27."""
        if route.namespace and not self.store.namespace_exists(route.namespace):
            raise st.not_found(route.res, route.name)

    def _selector(self, ex: Exchange, res: Resource):
        lab = selectors.label_selector(ex.query.get("labelSelector"))
        fld = selectors.field_selector(ex.query.get("fieldSelector"), res.plural)
        return lambda obj: lab(obj) and fld(obj)

    # -- watch -------------------------------------------------------------------------------

    def _watch(self, ex: Exchange, res: Resource, namespace: str, match) -> None:
        since = ex.query.get("resourceVersion") or None
        timeout = float(ex.query.get("timeoutSeconds") or 1800)
        bookmarks = ex.flag("allowWatchBookmarks")
        w = self.store.watch(res, namespace or None, match, since)
        deadline = time.monotonic() + timeout
        last_rv = since or self.store.resource_version
        ex.start_stream(200, "application/json")
        try:
            while not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = w.events.get(timeout=min(left, self.bookmark_interval))
                except queue.Empty:
                    if bookmarks:
                        rv = self.store.resource_version
                        mark = {"kind": res.kind, "apiVersion": res.api_version,
                                "metadata": {"resourceVersion": rv, "creationTimestamp": None}}
                        if res.kind == "Pod":
                            mark.update({"spec": {"containers": None}, "status": {}})
                        if not ex.write_chunk(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n"):
                            return
                    continue
                if item is None:
                    break
                etype, obj = item
                last_rv = obj.get("metadata", {}).get("resourceVersion", last_rv)
                if not ex.write_chunk(json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode() + b"\n"):
                    return
            ex.end_stream()
        finally:
            self.store.unwatch(w)

    # -- writes ------------------------------------------------------------------------------

    def _delete_pod(self, ex: Exchange, route: Route) -> dict:
        """Graceful deletion: a bound pod is only marked (deletionTimestamp); its kubelet stops
        the containers and then removes it. Unbound pods and gracePeriodSeconds=0 go at once."""
        cur = self.store.get(route.res, route.name, route.namespace)
        options = json.loads(ex.body() or b"{}") if ex.body().strip() else {}
        grace = options.get("gracePeriodSeconds", ex.query.get("gracePeriodSeconds"))
        grace = int(grace) if grace not in (None, "") else int(cur["spec"].get("terminationGracePeriodSeconds", 30))
        if not cur["spec"].get("nodeName") or grace == 0:
            return self.store.delete(route.res, route.name, route.namespace)
        if cur["metadata"].get("deletionTimestamp"):
            return cur

        def mark(pod: dict) -> dict:
            deadline = time.time() + grace
            pod["metadata"]["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline))
            pod["metadata"]["deletionGracePeriodSeconds"] = grace
            return pod

        return self.store.mutate(route.res, route.name, route.namespace, mark)

    def _admit_create(self, res: Resource, namespace: str, obj: dict) -> dict:
        if res.kind != "Pod":
            return {}
        name = (obj.get("metadata") or {}).get("name", "")
        return self._pod_security(namespace, name, obj)

    def _pod_security(self, namespace: str, name: str, pod: dict) -> dict:
        nsobj = self.store.find("namespaces", namespace)
        labels = ((nsobj or {}).get("metadata") or {}).get("labels") or {}
        verdict = psa.admit(labels, pod)
        if verdict.denied:
            raise st.forbidden(resources.by_plural("pods"), name, verdict.denied)
        return {"Warning": verdict.warnings} if verdict.warnings else {}

    # Read-modify-write happens under the store lock: like the real GuaranteedUpdate loop, a
    # PATCH never fails with 409 because the kubelet wrote the pod status meanwhile.

    def _update(self, ex: Exchange, route: Route) -> None:
        res = route.res
        obj = ex.json_body()
        race = self.faults.race(res.plural, route.name)
        if race is not None:  # someone else's write lands first
            self.store.mutate(res, route.name, route.namespace, race)
        with self.store.lock:
            cur = self.store.get(res, route.name, route.namespace)
            new = self._merge_update(res, route.sub, cur, obj)
            self._validate(res, route.sub, cur, new)
            new["metadata"]["resourceVersion"] = (obj.get("metadata") or {}).get("resourceVersion", "")
            stored = self.store.update(new, res, check_rv=True)
        ex.send_json(200, stored)

    def _patch(self, ex: Exchange, route: Route) -> None:
        res = route.res
        with self.store.lock:
            cur = self.store.get(res, route.name, route.namespace)
            patched = self._apply_patch(ex, cur)
            new = self._merge_update(res, route.sub, cur, patched)
            self._validate(res, route.sub, cur, new)
            new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            stored = self.store.update(new, res, check_rv=True)
        ex.send_json(200, stored)

    def _apply_patch(self, ex: Exchange, cur: dict) -> dict:
        ctype = ex.content_type
        if ctype not in PATCH_TYPES:
            raise st.unsupported_media(ctype)
        body = ex.json_body()
        try:
            if ctype == "application/strategic-merge-patch+json":
                return patches.strategic_merge(cur, body)
            if ctype == "application/merge-patch+json":
                return patches.merge_patch(cur, body)
            return patches.json_patch(cur, body)
        except patches.PatchError as exc:
            raise ApiError(st.failure(422, str(exc), "Invalid")) from None

    def _merge_update(self, res: Resource, sub: str, cur: dict, new: dict) -> dict:
        """What a write may change: /status only status; the main resource everything but status."""
        new = copy.deepcopy(new)
        new.setdefault("metadata", {})
        if sub == "status":
            out = copy.deepcopy(cur)
            out["status"] = new.get("status", {})
            return out
        if sub == "ephemeralcontainers":
            out = copy.deepcopy(cur)
            out["spec"]["ephemeralContainers"] = (new.get("spec") or {}).get("ephemeralContainers") or []
            if not out["spec"]["ephemeralContainers"]:
                del out["spec"]["ephemeralContainers"]
            return out
        if "status" in cur and res.kind in ("Pod", "Node", "Namespace", "Service"):
            new["status"] = copy.deepcopy(cur["status"])
        return new

    def _validate(self, res: Resource, sub: str, cur: dict, new: dict) -> None:
        if res.kind != "Pod":
            return
        if sub == "ephemeralcontainers":
            validation.ephemeral_update(cur, new)
        elif sub != "status":
            validation.pod_update(cur, new)

    # -- pods/ephemeralcontainers ---------------------------------------------------------------

    def _ephemeral(self, ex: Exchange, route: Route, verb: str, user: User) -> None:
        self._check_ns(route)
        if verb == "get":
            ex.send_json(200, self.store.get(route.res, route.name, route.namespace))
            return
        with self.store.lock:
            stored, headers = self._ephemeral_write(ex, route, verb)
        ex.send_json(200, stored, headers)

    def _ephemeral_write(self, ex: Exchange, route: Route, verb: str) -> tuple[dict, dict]:
        cur = self.store.get(route.res, route.name, route.namespace)
        if verb == "update":
            body = ex.json_body()
            new = self._merge_update(route.res, "ephemeralcontainers", cur, body)
            want_rv = (body.get("metadata") or {}).get("resourceVersion", "")
        elif verb == "patch":
            new = self._merge_update(route.res, "ephemeralcontainers", cur, self._apply_patch(ex, cur))
            want_rv = cur["metadata"]["resourceVersion"]
        else:
            raise st.method_not_allowed()
        for c in new["spec"].get("ephemeralContainers") or []:
            defaults.container(c)
        if want_rv and want_rv != cur["metadata"]["resourceVersion"]:
            raise st.conflict(route.res, route.name)
        validation.ephemeral_update(cur, new)
        headers = self._pod_security(route.namespace, route.name, new) \
            if new["spec"].get("ephemeralContainers") != cur["spec"].get("ephemeralContainers") else {}
        new["metadata"]["resourceVersion"] = want_rv
        return self.store.update(new, route.res, check_rv=bool(want_rv)), headers

    # -- authorization review ------------------------------------------------------------------

    def _ssar(self, ex: Exchange, user: User) -> None:
        if ex.content_type == "application/vnd.kubernetes.protobuf":
            try:
                body = protobuf.decode_ssar(ex.body())
            except (ValueError, IndexError):
                raise ApiError(st.failure(400, "the object provided is unrecognized (protobuf)", "BadRequest")) from None
        else:
            body = ex.json_body()
        spec = body.get("spec") or {}
        ra = spec.get("resourceAttributes")
        nra = spec.get("nonResourceAttributes")
        if ra:
            attrs = Attributes(verb=ra.get("verb", ""), group=ra.get("group", ""), resource=ra.get("resource", ""),
                               subresource=ra.get("subresource", ""), namespace=ra.get("namespace", ""),
                               name=ra.get("name", ""))
        elif nra:
            attrs = Attributes(verb=nra.get("verb", ""), path=nra.get("path", ""))
        else:
            raise st.invalid("SelfSubjectAccessReview", "", [(
                "spec.resourceAttributes", "FieldValueRequired",
                "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified")],
                group="authorization.k8s.io")
        allowed, reason = self.authz.decide(user, attrs)
        result: dict = {"allowed": allowed}
        if reason:
            result["reason"] = reason
        ex.send_json(201, {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                           "metadata": {}, "spec": spec, "status": result})
