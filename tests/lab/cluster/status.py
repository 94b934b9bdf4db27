"""metav1.Status bodies exactly as kube-apiserver writes them.

Every failure is ``{"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
"message", "reason", "details", "code"}``. Quirks copied from the recordings:
- NotFound/Forbidden/Conflict details carry the *plural* resource as ``kind`` ("pods"), while
  Invalid details carry the object Kind ("Pod") and a ``causes`` list.
- A 404 for a pod in a namespace that does not exist says only ``pods "x" not found``.
- Errors relayed from the kubelet (pods/log while a container waits) carry no ``details``.
- An unknown path or a disabled subresource answers 404 with empty details (no name).
"""

from __future__ import annotations

from .resources import Resource


class ApiError(Exception):
    """Raised inside the server; the HTTP layer writes ``body`` with ``code``."""

    def __init__(self, body: dict, headers: dict | None = None):
        super().__init__(body.get("message", ""))
        self.body = body
        self.code = body["code"]
        self.headers = headers or {}


def failure(code: int, message: str, reason: str | None = None, details: dict | None = None) -> dict:
    body: dict = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message}
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def _details(res: Resource, name: str | None) -> dict:
    details: dict = {}
    if name:
        details["name"] = name
    if res.group:
        details["group"] = res.group
    details["kind"] = res.plural
    return details


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(failure(404, f'{res.qualified} "{name}" not found', "NotFound", _details(res, name)))


def not_found_path() -> ApiError:
    return ApiError(failure(404, "the server could not find the requested resource", "NotFound", {}))


def already_exists(res: Resource, name: str) -> ApiError:
    return ApiError(failure(409, f'{res.qualified} "{name}" already exists', "AlreadyExists", _details(res, name)))


def conflict(res: Resource, name: str) -> ApiError:
    msg = (f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been modified; '
           "please apply your changes to the latest version and try again")
    return ApiError(failure(409, msg, "Conflict", _details(res, name)))


def forbidden(res: Resource, name: str | None, reason_text: str) -> ApiError:
    subject = f'{res.qualified} "{name}"' if name else res.qualified
    return ApiError(failure(403, f"{subject} is forbidden: {reason_text}", "Forbidden", _details(res, name)))


def bad_request(message: str) -> ApiError:
    return ApiError(failure(400, message, "BadRequest"))


def internal(message: str) -> ApiError:
    return ApiError(failure(500, message))


def unauthorized() -> ApiError:
    return ApiError(failure(401, "Unauthorized", "Unauthorized"))


def method_not_allowed() -> ApiError:
    return ApiError(failure(405, "the server does not allow this method on the requested resource",
                            "MethodNotAllowed", {}))


def unsupported_media(content_type: str) -> ApiError:
    return ApiError(failure(415, f"the body of the request was in an unknown format - accepted media types include: "
                            f"application/json-patch+json, application/merge-patch+json, "
                            f"application/apply-patch+yaml, application/strategic-merge-patch+json "
                            f"(got {content_type!r})", "UnsupportedMediaType", {}))


def invalid(kind: str, name: str, errors: list[tuple[str, str, str]], group: str = "") -> ApiError:
    """422 Invalid. ``errors`` are (field, cause reason, detail) like field.ErrorList."""
    texts = [f"{fld}: {detail}" for fld, _, detail in errors]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    qualified_kind = f"{kind}.{group}" if group else kind
    details: dict = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [{"reason": r, "message": d, "field": f} for f, r, d in errors]
    return ApiError(failure(422, f'{qualified_kind} "{name}" is invalid: {joined}', "Invalid", details))


def gone(message: str) -> dict:
    return failure(410, message, "Expired")


def success() -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
