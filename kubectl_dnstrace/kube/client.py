"""The one door to the Kubernetes API: connect, get, list, watch, patch, logs, exec.

This is the only module that catches ``ApiException`` and urllib3 errors. Every failure
leaves here as a ``DnstraceError`` subclass whose message names the verb and the resource
("you may not patch pods/ephemeralcontainers in namespace shop (RBAC)") and whose hint names
the fix. The exceptions also carry ``status``, ``reason`` and ``api_message`` attributes so
callers can refine a translation (for example a Pod Security denial read from a 403 body).

Objects are plain dicts, exactly the JSON the API server sent: requests go through the
generic ``ApiClient.call_api`` with ``_preload_content=False`` and ``json.loads``, so no
generated model class (whose attribute names changed between client majors) is involved.

Surprises handled here, learnt on a real cluster (kubernetes client 36.x):
- urllib3's default retries make an unreachable server cost 12 s or more: retries are
  bounded and the connect timeout short, so a closed port or a black hole fails in seconds.
- Any HTTPS endpoint answers *something*; a non-API server answers 404 to everything. A
  ``/version`` probe first tells "not a Kubernetes API server" apart from "pod not found".
- ``KUBECONFIG`` is read by the client library once, at import; it is read here at connect.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException, kube_config

from kubectl_dnstrace import __version__
from kubectl_dnstrace.errors import (
    ApiBusy,
    ClusterUnreachable,
    Conflict,
    ContainerFailed,
    DnstraceError,
    Forbidden,
    NotFound,
    PodSecurityDenied,
    PodTooLarge,
    Unsupported,
)
from kubectl_dnstrace.model import ClusterOptions


@dataclass(frozen=True, slots=True)
class Kind:
    """Where a resource lives in the API: ``{prefix}[/namespaces/{ns}]/{plural}[/{name}]``."""

    plural: str
    prefix: str
    namespaced: bool = True


KINDS: dict[str, Kind] = {
    k.plural: k
    for k in (
        Kind("pods", "/api/v1"),
        Kind("nodes", "/api/v1", namespaced=False),
        Kind("services", "/api/v1"),
        Kind("endpoints", "/api/v1"),
        Kind("namespaces", "/api/v1", namespaced=False),
        Kind("configmaps", "/api/v1"),
        Kind("replicasets", "/apis/apps/v1"),
        Kind("deployments", "/apis/apps/v1"),
        Kind("daemonsets", "/apis/apps/v1"),
        Kind("statefulsets", "/apis/apps/v1"),
        Kind("jobs", "/apis/batch/v1"),
        Kind("cronjobs", "/apis/batch/v1"),
        Kind("endpointslices", "/apis/discovery.k8s.io/v1"),
    )
}

# Bounded connect behaviour: a refused or black-holed server must fail in a few seconds.
CONNECT_TIMEOUT = 2.5
CONNECT_RETRIES = 1

# Messages of the API that the translation relies on (see tests/fixtures/k8s-api).
_WARNING_RE = re.compile(r'\d{3} \S+ "((?:[^"\\]|\\.)*)"')
_PSA_RE = re.compile(r'violates PodSecurity "(?P<level>[a-z]+):[^"]*": (?P<detail>.*)$', re.S)


def _kind(kind: str) -> Kind:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}") from None


def resource_path(kind: str, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """The API path of a collection, an object or an object's subresource."""
    k = _kind(kind)
    path = k.prefix
    if k.namespaced and namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{k.plural}"
    if name:
        path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
    return path


def _kubeconfig_paths(opts: ClusterOptions) -> str:
    """kubectl's precedence: --kubeconfig, then $KUBECONFIG (colon list), then ~/.kube/config."""
    if opts.kubeconfig:
        return opts.kubeconfig
    env = os.environ.get("KUBECONFIG", "")
    if env.strip(":"):
        return env
    return os.path.expanduser("~/.kube/config")


# API Priority and Fairness answers 429 with Retry-After when a priority level is full: the
# request was not executed, so it is sent again after the wait, at most this often and this
# long in all, and the user is told (the trace is waiting, not hanging).
THROTTLE_RETRIES = 5
THROTTLE_MAX_WAIT = 10.0  # one wait at most, whatever Retry-After says
THROTTLE_TOTAL = 40.0  # all waits of one request

LIST_CHUNK = 500  # items per list page: kubectl's default --chunk-size
LIST_ATTEMPTS = 3  # a paged list whose snapshot expired is started over this often at most


class Kube:
    """A connection to one cluster as one user. Thread-safe for requests; streams need clones.

    ``clone()`` gives a new ``ApiClient`` (own connection pool) on the same configuration:
    the client's websocket ``stream()`` helper temporarily rewires ``ApiClient.request`` of
    the client it is given, and a long-lived log stream holds a pooled connection, so each
    log stream and each exec gets its own.
    """

    def __init__(self, configuration: k8s_client.Configuration, namespace: str,
                 request_timeout: float = 10.0, user: str = "", context: str = "",
                 version: dict | None = None) -> None:
        self.configuration = configuration
        self.namespace = namespace
        self.request_timeout = request_timeout
        self.user = user
        self.context = context
        self.version: dict = version or {}
        self.api_client = k8s_client.ApiClient(configuration)
        # Audit logs name the tool that added the capture containers.
        self.api_client.user_agent = f"kubectl-dnstrace/{__version__}"
        self._lock = threading.Lock()
        self._stream_resp: Any = None  # the open watch or followed log, for ``interrupt``
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        # Where "the API server is throttling us, retrying in N s" goes (stderr in a trace).
        self.on_notice: Callable[[str], None] | None = None
        self.sleep: Callable[[float], None] = _sleep

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def connect(cls, opts: ClusterOptions, probe: bool = True) -> Kube:
        """Load the kubeconfig (or the in-cluster service account) and probe ``/version``."""
        configuration = k8s_client.Configuration()
        namespace = ""
        user = ""
        context_name = ""
        paths = _kubeconfig_paths(opts)
        existing = [p for p in paths.split(":") if p and os.path.exists(os.path.expanduser(p))]
        if not existing and not opts.kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
            from kubernetes.config import incluster_config

            try:
                incluster_config.load_incluster_config(client_configuration=configuration)
            except ConfigException as exc:
                raise ClusterUnreachable(
                    f"cannot use the in-cluster service account: {exc}",
                    "pass --kubeconfig or set KUBECONFIG",
                ) from None
            namespace = _incluster_namespace()
        else:
            if not existing:
                raise ClusterUnreachable(
                    f"no kubeconfig found (looked for {paths})",
                    "point --kubeconfig or the KUBECONFIG variable at a kubeconfig file, or "
                    "check `kubectl config view`",
                )
            try:
                contexts, current = kube_config.list_kube_config_contexts(paths)
                kube_config.load_kube_config(
                    config_file=paths, context=opts.context,
                    client_configuration=configuration, persist_config=False,
                )
            except ConfigException as exc:
                raise ClusterUnreachable(
                    f"cannot use the kubeconfig {paths}: {exc}",
                    "check it with `kubectl config view`; choose a context with --context",
                ) from None
            except (OSError, ValueError, KeyError, TypeError, AttributeError,
                    yaml.YAMLError) as exc:
                raise ClusterUnreachable(
                    f"cannot read the kubeconfig {paths}: {type(exc).__name__}: {exc}",
                    "check it with `kubectl config view`",
                ) from None
            wanted = opts.context or (current or {}).get("name", "")
            for ctx in contexts or []:
                if ctx.get("name") == wanted:
                    body = ctx.get("context") or {}
                    namespace = body.get("namespace") or ""
                    user = body.get("user") or ""
                    context_name = wanted
                    break
        configuration.retries = urllib3.Retry(
            total=CONNECT_RETRIES, connect=CONNECT_RETRIES, read=0, status=0, other=0,
            redirect=2, backoff_factor=0.2, raise_on_status=False,
        )
        kube = cls(
            configuration,
            namespace=opts.namespace or namespace or "default",
            request_timeout=opts.request_timeout or 10.0,
            user=user,
            context=context_name,
        )
        if probe:
            kube.version = kube.probe_version()
        return kube

    def clone(self) -> Kube:
        """The same cluster and user on a fresh ApiClient (own pool): one per stream."""
        twin = Kube(self.configuration, self.namespace, self.request_timeout, self.user,
                    self.context, self.version)
        twin.on_notice, twin.sleep = self.on_notice, self.sleep
        return twin

    def close(self) -> None:
        # Closing a pool must never mask the real outcome of a run.
        with contextlib.suppress(Exception):
            self.api_client.close()

    def interrupt(self) -> None:
        """End a watch or a followed log this client is reading, from another thread: its
        read returns at once instead of when the server next speaks (the reading thread can
        then be joined, instead of being left inside a TLS read when the interpreter
        exits). A response already released to the pool is left alone (urllib3 refuses)."""
        resp = self._stream_resp
        shutdown = getattr(resp, "shutdown", None)  # urllib3 >= 2.3
        if shutdown is not None:
            with contextlib.suppress(Exception):
                shutdown()

    @property
    def server(self) -> str:
        return self.configuration.host

    # ---- the generic request ---------------------------------------------------------------

    def _timeout(self, read: float | None = None) -> tuple[float, float | None]:
        connect = min(CONNECT_TIMEOUT, self.request_timeout or CONNECT_TIMEOUT)
        return (connect, self.request_timeout if read is None else read)

    def request(self, method: str, path: str, *, query: dict | None = None,
                body: Any = None, content_type: str | None = None,
                what: Action | None = None, stream: bool = False,
                read_timeout: float | None = None) -> Any:
        """Send one request; return the decoded JSON (or, ``stream=True``, the raw response).

        ``what`` names the action for error messages; it defaults to the method and path.
        """
        what = what or Action(method.lower(), path)
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        query_params = [(k, v) for k, v in (query or {}).items() if v is not None]
        waited = 0.0
        for attempt in range(THROTTLE_RETRIES + 1):
            try:
                resp = self.api_client.call_api(
                    path, method, query_params=query_params, header_params=headers, body=body,
                    auth_settings=["BearerToken"], _preload_content=False,
                    _request_timeout=self._timeout(read_timeout),
                )
                break
            except ApiException as exc:
                if exc.status != 429:
                    raise translate_api_exception(exc, what, self.server) from None
                wait = retry_after(exc, attempt)
                if attempt == THROTTLE_RETRIES or waited + wait > THROTTLE_TOTAL:
                    raise throttled(exc, what, waited) from None
                self._notice(f"the API server is busy (429 Too Many Requests) for "
                             f"{what.verb} {what.resource}{what.where()}: retrying in "
                             f"{wait:.0f}s (attempt {attempt + 2} of {THROTTLE_RETRIES + 1})")
                self.sleep(wait)
                waited += wait
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise self._unreachable(exc) from None
        self._collect_warnings(resp)
        if stream:
            return resp
        try:
            data = resp.data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unreachable(exc) from None
        finally:
            resp.release_conn()
        if not data:
            return {}
        try:
            return json.loads(data)
        except ValueError:
            return data.decode("utf-8", "replace")

    def _notice(self, text: str) -> None:
        if self.on_notice is not None:
            self.on_notice(text)

    def _collect_warnings(self, resp: Any) -> None:
        """Keep the API's ``Warning: 299 - "text"`` headers (e.g. a Pod Security warn level)."""
        headers = getattr(resp, "headers", None)
        if headers is None:
            return
        values = headers.getlist("Warning") if hasattr(headers, "getlist") else [headers.get("Warning")]
        for value in values:
            for text in _WARNING_RE.findall(value or ""):
                text = text.replace('\\"', '"')
                with self._lock:
                    if text not in self.warnings and text not in self._warned:
                        self.warnings.append(text)

    def take_warnings(self) -> list[str]:
        """Warnings not shown yet (each distinct text once per run)."""
        with self._lock:
            out, self.warnings = self.warnings, []
            self._warned.update(out)
            return out

    def _unreachable(self, exc: BaseException) -> ClusterUnreachable:
        return ClusterUnreachable(
            f"cannot reach the Kubernetes API server at {self.server}: {_why(exc)}",
            "check the cluster is up and the kubeconfig/context is right "
            "(`kubectl cluster-info`); raise --request-timeout on a slow link",
        )

    # ---- probe -----------------------------------------------------------------------------

    def probe_version(self) -> dict:
        """GET /version: fail fast when the server is down or is not a Kubernetes API server."""
        try:
            data = self.request("GET", "/version", what=Action("get", "/version"))
        except NotFound:
            raise self._not_api_server("it answers 404 to /version") from None
        if not isinstance(data, dict) or "gitVersion" not in data:
            raise self._not_api_server("its /version is not a Kubernetes version document")
        return data

    def _not_api_server(self, why: str) -> ClusterUnreachable:
        return ClusterUnreachable(
            f"{self.server} is not a Kubernetes API server: {why}",
            "check the server address of the kubeconfig context (`kubectl config view "
            "--minify`); it should be the API server, not a dashboard or an ingress",
        )

    # ---- the contract: get / list / watch --------------------------------------------------

    def get(self, kind: str, name: str, namespace: str | None = None,
            subresource: str | None = None) -> dict:
        ns = namespace if namespace is not None else self._default_ns(kind)
        res = kind + (f"/{subresource}" if subresource else "")
        return self.request("GET", resource_path(kind, ns, name, subresource),
                            what=Action("get", res, ns, name))

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict], str]:
        """List a kind in one namespace, or in all (namespace=None or "") for namespaced kinds."""
        items: list[dict] = []
        rv = ""
        for page, page_rv in self.list_pages(kind, namespace, label_selector, field_selector,
                                             on_restart=items.clear):
            items.extend(page)
            rv = page_rv
        return items, rv

    def list_pages(self, kind: str, namespace: str | None = None,
                   label_selector: str | None = None, field_selector: str | None = None,
                   *, on_restart: Callable[[], None] | None = None,
                   limit: int | None = None) -> Iterator[tuple[list[dict], str]]:
        """Yield a list page by page, ``(items, resourceVersion)``, at most ``limit`` items a
        page (LIST_CHUNK unless given; 0: all at once), as kubectl's ``--chunk-size``: a
        caller that handles each page as it comes never holds a big cluster's pods at once,
        and the API server serves them in pieces.

        The pages are one snapshot, at the first page's resourceVersion. When the server
        compacted that version before the last page was read (410 Expired: a continue token
        lives about five minutes), the list starts over (LIST_ATTEMPTS in all), after
        ``on_restart`` tells the caller to forget the pages it had.
        """
        path = resource_path(kind, namespace or None)
        what = Action("list", kind, namespace or None)
        for attempt in range(LIST_ATTEMPTS):
            token = None
            try:
                while True:
                    data = self.request("GET", path, what=what, query={
                        "labelSelector": label_selector, "fieldSelector": field_selector,
                        "limit": LIST_CHUNK if limit is None else limit, "continue": token})
                    if not isinstance(data, dict):
                        return
                    meta = data.get("metadata") or {}
                    yield data.get("items") or [], meta.get("resourceVersion") or ""
                    token = meta.get("continue")
                    if not token:
                        return
            except ListExpired:
                if token is None or attempt == LIST_ATTEMPTS - 1:
                    raise
                if on_restart is not None:
                    on_restart()

    def watch(self, kind: str, namespace: str | None = None, resource_version: str | None = None,
              label_selector: str | None = None, timeout_seconds: float | None = None,
              field_selector: str | None = None) -> Iterator[tuple[str, dict]]:
        """Yield ``(type, object)`` watch events until the server ends the watch.

        ``timeout_seconds`` is passed to the server (it closes the watch then) and bounds the
        client's read as well, so a silent connection cannot hang the caller forever.
        """
        query: dict[str, Any] = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
        }
        if timeout_seconds is not None:
            query["timeoutSeconds"] = max(1, int(timeout_seconds + 0.999))
        read = (timeout_seconds + 5.0) if timeout_seconds is not None else 300.0
        what = Action("watch", kind, namespace or None)
        resp = self._stream_resp = self.request("GET", resource_path(kind, namespace or None),
                                               query=query, what=what, stream=True,
                                               read_timeout=read)
        try:
            for line in iter_lines(resp):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                etype = event.get("type", "")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    code = obj.get("code")
                    if code == 410:  # resourceVersion too old: the caller relists
                        yield etype, obj
                        return
                    raise DnstraceError(
                        f"the watch of {kind} failed: {obj.get('message', obj)}",
                        "run the command again",
                    )
                yield etype, obj
        finally:
            self._stream_resp = None
            resp.release_conn()
            resp.close()

    def _default_ns(self, kind: str) -> str | None:
        return self.namespace if _kind(kind).namespaced else None

    # ---- what ephemeral containers, pre-flight, logs and exec need ----------------------------

    def can_i(self, verb: str, resource: str, namespace: str | None = None,
              subresource: str = "", group: str = "", name: str = "") -> tuple[bool, str]:
        """SelfSubjectAccessReview: (allowed, reason). No RBAC needed to ask about oneself."""
        attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
        if subresource:
            attrs["subresource"] = subresource
        if namespace:
            attrs["namespace"] = namespace
        if name:
            attrs["name"] = name
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs},
        }
        data = self.request(
            "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=body,
            what=Action("create", "selfsubjectaccessreviews"),
        )
        status = data.get("status") or {}
        return bool(status.get("allowed")), status.get("reason") or status.get("evaluationError") or ""

    def whoami(self) -> str:
        """The authenticated user name (SelfSubjectReview, GA in 1.28), else the kubeconfig's.

        The kubeconfig's user entry is only a local alias; the API knows the real name
        (an OIDC e-mail, an IAM role), which is what provenance in the pod spec should say.
        """
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            data = self.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                body=body, what=Action("create", "selfsubjectreviews"))
        except DnstraceError:
            return self.user
        info = ((data.get("status") or {}).get("userInfo") or {}) if isinstance(data, dict) else {}
        return info.get("username") or self.user

    def replace(self, kind: str, obj: dict) -> dict:
        """PUT the whole object. Its ``metadata.resourceVersion`` is the precondition: when
        someone wrote the object since it was read, the API answers 409 and this raises
        ``Conflict`` (nothing was written), so a read-modify-write never clobbers an edit."""
        meta = obj.get("metadata") or {}
        ns, name = meta.get("namespace"), meta.get("name")
        return self.request("PUT", resource_path(kind, ns, name), body=obj,
                            content_type="application/json",
                            what=Action("update", kind, ns, name))

    def patch_ephemeral_containers(self, namespace: str, pod: str, patch: dict) -> dict:
        """Strategic-merge patch on pods/ephemeralcontainers; returns the whole Pod.

        The body must be shaped as a pod (``{"spec": {"ephemeralContainers": [...]}}``): the
        subresource merges it into the pod, and a bare container body silently does nothing.
        """
        return self.request(
            "PATCH", resource_path("pods", namespace, pod, "ephemeralcontainers"), body=patch,
            content_type="application/strategic-merge-patch+json",
            what=Action("patch", "pods/ephemeralcontainers", namespace, pod),
        )

    def read_log(self, namespace: str, pod: str, container: str, *, follow: bool = False,
                 timestamps: bool = False, since_time: str | None = None,
                 tail_lines: int | None = None, read_timeout: float | None = None,
                 since_seconds: int | None = None) -> urllib3.response.BaseHTTPResponse:
        """Open pods/log; returns the raw streaming response (iterate with ``iter_lines``)."""
        query = {
            "container": container,
            "follow": "true" if follow else None,
            "timestamps": "true" if timestamps else None,
            "sinceTime": since_time,
            "sinceSeconds": since_seconds,
            "tailLines": tail_lines,
        }
        resp = self.request(
            "GET", resource_path("pods", namespace, pod, "log"), query=query, stream=True,
            what=Action("get", "pods/log", namespace, pod), read_timeout=read_timeout,
        )
        if follow:
            self._stream_resp = resp
        return resp

    def read_log_text(self, namespace: str, pod: str, container: str) -> str:
        """The whole log of a (usually terminated) container, as text."""
        resp = self.read_log(namespace, pod, container)
        try:
            return resp.data.decode("utf-8", "replace")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unreachable(exc) from None
        finally:
            resp.release_conn()

    def exec(self, namespace: str, pod: str, container: str, command: list[str],
             timeout: float = 10.0) -> str:
        """Run a command in a container through pods/exec (websocket) and return its output.

        Uses ``kubernetes.stream.stream``, which rewires the ApiClient it is given: callers
        should run it on a ``clone()`` when other threads share this connection.
        """
        from kubernetes.stream import stream

        api = k8s_client.CoreV1Api(self.api_client)
        what = Action("create", "pods/exec", namespace, pod)
        try:
            return stream(
                api.connect_get_namespaced_pod_exec, pod, namespace, container=container,
                command=command, stderr=True, stdin=False, stdout=True, tty=False,
                _request_timeout=timeout,
            )
        except ApiException as exc:
            raise translate_api_exception(exc, what, self.server) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unreachable(exc) from None
        except Exception as exc:  # websocket-client raises its own exception tree
            raise DnstraceError(
                f"exec in {namespace}/{pod} container {container} failed: {exc}",
                "the agent still stops at its own deadline",
            ) from None


    def attach_write(self, namespace: str, pod: str, container: str, data: bytes,
                     timeout: float = 20.0) -> None:
        """Write ``data`` to a running container's stdin through pods/attach, then hang up.

        The capture container is created with ``stdin: true, stdinOnce: true``: the runtime
        keeps its stdin open until the first attach ends, then closes it, so nobody can
        write to it afterwards. Attach is a websocket GET, authorized as ``create
        pods/attach`` (and as ``get`` by servers before 1.30). A refused handshake comes
        back from the client as a status-less ApiException naming the HTTP status.
        """
        from kubernetes.stream import stream

        api = k8s_client.CoreV1Api(self.api_client)
        what = Action("get", "pods/attach", namespace, pod)
        try:
            ws = stream(api.connect_get_namespaced_pod_attach, pod, namespace,
                        container=container, stdin=True, stdout=False, stderr=False, tty=False,
                        _preload_content=False, _request_timeout=timeout)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unreachable(exc) from None
        except Exception as exc:
            api_exc = _websocket_failure(exc)
            if api_exc is None:
                raise DnstraceError(
                    f"attaching to {namespace}/{pod} container {container} failed: {exc}",
                    "run again; DNSTRACE_DEBUG=1 shows the details",
                ) from None
            raise translate_api_exception(api_exc, what, self.server) from None
        try:
            ws.write_stdin(data)
            ws.close_channel(0)  # v5: end of stdin; v4 servers see it when we hang up
            ws.update(timeout=0.2)
        except Exception as exc:  # websocket-client raises its own exception tree
            raise DnstraceError(
                f"writing the agent program to {namespace}/{pod} container {container} "
                f"through pods/attach failed: {exc}",
                f"the container ends by itself within {timeout:.0f}s; run again",
            ) from None
        finally:
            with contextlib.suppress(Exception):
                ws.close()


def _websocket_failure(exc: BaseException) -> ApiException | None:
    """The ApiException behind a failed websocket request, with its HTTP status and body.

    The client (36.x) reports a refused upgrade as status 0 with a reason like ``Handshake
    status 403 Forbidden -+-+- {headers} -+-+- {"kind":"Status",...}``, and then trips over
    its own body-less exception (``AttributeError: 'NoneType' object has no attribute
    'decode'``): the ApiException is found in the chain, its status and body read back.
    """
    seen = 0
    while exc is not None and not isinstance(exc, ApiException) and seen < 5:
        exc = exc.__context__
        seen += 1
    if not isinstance(exc, ApiException):
        return None
    if exc.status:
        return exc
    reason = str(exc.reason or "")
    m = re.search(r"Handshake status (\d{3})", reason)
    if not m:
        return exc
    parts = reason.split(" -+-+- ")
    out = ApiException(status=int(m.group(1)), reason=parts[0])
    body = parts[-1].strip() if len(parts) >= 3 else ""
    if body.startswith("b'") and body.endswith("'"):
        body = body[2:-1]
    out.body = body or None
    return out


@dataclass(frozen=True, slots=True)
class Action:
    """What a request was for, in RBAC words: verb, resource[/subresource], namespace, name."""

    verb: str
    resource: str
    namespace: str | None = None
    name: str | None = None

    def where(self) -> str:
        return f" in namespace {self.namespace}" if self.namespace else " (cluster-wide)"

    def object(self) -> str:
        base = self.resource.split("/")[0]
        if self.name:
            return f"{base} {self.name!r}" + (f" in namespace {self.namespace}" if self.namespace else "")
        return self.resource + self.where()


def iter_line_reads(resp: Any) -> Iterator[list[bytes]]:
    """Split a streaming HTTP body into lines (without the newline), across chunk borders:
    the whole lines of each read as one list (a busy agent's log arrives hundreds of lines
    a read; a quiet one's, a line a read, as soon as it is written)."""
    buf = b""
    try:
        for chunk in resp.stream(amt=65536, decode_content=True):
            if not chunk:
                continue
            *lines, buf = (buf + chunk).split(b"\n")
            if lines:
                yield lines
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise StreamBroken(str(exc)) from None
    if buf:
        yield [buf]


def iter_lines(resp: Any) -> Iterator[bytes]:
    """Split a streaming HTTP body into lines (without the newline), across chunk borders."""
    for lines in iter_line_reads(resp):
        yield from lines


class StreamBroken(ClusterUnreachable):
    """A streaming response ended with a connection error (callers may resume)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the connection to the API server broke: {detail}",
                         "check the network path to the API server and run again")


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def retry_after(exc: ApiException, attempt: int) -> float:
    """The server's Retry-After (seconds; APF sends 1 or more), else 1, 2, 4... s; capped."""
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        wait = float(value) if value is not None else float(2 ** attempt)
    except ValueError:
        wait = float(2 ** attempt)
    return min(max(wait, 1.0), THROTTLE_MAX_WAIT)


def throttled(exc: ApiException, what: Action, waited: float) -> ApiBusy:
    body = status_body(exc)
    err = ApiBusy(
        f"the API server kept refusing to {what.verb} {what.resource}{what.where()} with "
        f"429 Too Many Requests (waited {waited:.0f}s in all): "
        f"{body.get('message') or exc.reason or 'too many requests'}",
        "the API server is overloaded or its priority-and-fairness limits are reached for "
        "your user; try again in a minute, or ask an admin about the FlowSchema that "
        "matches you (kubectl get flowschemas)",
    )
    err.status = 429  # type: ignore[attr-defined]
    return err


def _why(exc: BaseException) -> str:
    """The human part of a urllib3 error ("[Errno 111] Connection refused", "timed out")."""
    reason = getattr(exc, "reason", None) or exc
    args = [a for a in getattr(reason, "args", ()) if isinstance(a, str)]
    text = args[-1] if args else str(reason)
    return re.sub(r"^.*?Connection\(host=[^)]*\): ", "", text)


def status_body(exc: ApiException) -> dict:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body:
        try:
            data = json.loads(body)
            if isinstance(data, dict):
                return data
        except ValueError:
            return {"message": body.strip()[:300]}
    return {}


class ListExpired(ClusterUnreachable):
    """410 Expired on a paged list: the snapshot's resourceVersion was compacted away
    between two pages (a continue token lives about five minutes). Started over."""


def translate_api_exception(exc: ApiException, what: Action, server: str = "") -> DnstraceError:
    """Turn an API failure into the user's error: cause (verb, resource, namespace) and fix."""
    status = exc.status or 0
    body = status_body(exc)
    api_message = body.get("message") or (exc.reason or "")
    details = body.get("details") or {}
    err: DnstraceError
    if status == 0:
        err = ClusterUnreachable(
            f"cannot talk to the Kubernetes API server at {server}: {exc.reason}",
            "check the server address and its certificate in the kubeconfig "
            "(`kubectl cluster-info`)",
        )
    elif status == 401:
        err = ClusterUnreachable(
            f"the API server at {server} rejected the credentials (401 Unauthorized) "
            f"while trying to {what.verb} {what.resource}",
            "log in again or refresh the kubeconfig's token (`kubectl get --raw /version` "
            "should work first)",
        )
    elif status == 403:
        m = _PSA_RE.search(api_message)
        if m:
            err = PodSecurityDenied(
                f"Pod Security Admission (enforce={m.group('level')}) refused to {what.verb} "
                f"{what.resource}{what.where()}: {m.group('detail')}",
                psa_hint(m.group("level"), what.namespace),
            )
            err.psa_level = m.group("level")  # type: ignore[attr-defined]
        else:
            err = Forbidden(
                f"you may not {what.verb} {what.resource}{what.where()} (RBAC): {api_message}",
                f"ask a cluster admin for it (check with `kubectl auth can-i {what.verb} "
                f"{what.resource}{' -n ' + what.namespace if what.namespace else ''}`); "
                "`kubectl dnstrace rbac` prints a least-privilege Role for this plugin",
            )
    elif status == 404:
        if not details.get("name") and what.resource == "pods/ephemeralcontainers":
            # A 404 without a name on the subresource: the server does not serve it at all
            # (how kubectl debug detects it too); a missing pod names itself in details.
            err = Unsupported(
                f"this cluster does not serve {what.resource} ({api_message}): ephemeral "
                "containers are unavailable (Kubernetes < 1.23 or the feature is disabled)",
                "ask CoreDNS itself instead (its log plugin, no container: kubectl dnstrace "
                "coredns --via log --domain NAME), or analyze a tcpdump capture taken on the "
                "node: kubectl dnstrace analyze FILE.pcap",
            )
        elif not details.get("name") and what.name and "/" in what.resource:
            err = Unsupported(
                f"this cluster does not serve {what.resource} ({api_message})",
                "this plugin needs Kubernetes >= 1.25 with the standard pod subresources",
            )
        else:
            err = NotFound(
                f"{what.object()} not found ({api_message})",
                "check the name and namespace (`kubectl get "
                f"{what.resource.split('/')[0]}{' -n ' + what.namespace if what.namespace else ''}`)",
            )
    elif status == 410 and what.verb == "list":
        err = ListExpired(
            f"the API server expired the list of {what.resource}{what.where()} while it was "
            f"read in pages ({api_message})",
            "run the command again; on a very busy cluster, from closer to the API server",
        )
    elif status == 409 and what.verb == "update":
        err = Conflict(
            f"{what.object()} changed since it was read ({api_message})",
            "read it again and redo the change",
        )
    elif status in (409, 422):
        err = ContainerFailed(
            f"the API server refused to {what.verb} {what.resource} of {what.object()} "
            f"({status} {body.get('reason') or exc.reason}): {api_message}",
            "run the command again; if it persists the pod changed under us "
            "(check `kubectl get pod -o yaml`)",
        )
    elif status == 400:
        err = ContainerFailed(
            f"the API server refused to {what.verb} {what.resource} of {what.object()}: {api_message}",
            "check the container is running (`kubectl describe pod`)",
        )
    elif status == 413 or "request is too large" in api_message:
        # etcd refuses a write over its --max-request-bytes (1.5 MiB by default): the API
        # server passes "etcdserver: request is too large" on (as a 500 on 1.35).
        err = PodTooLarge(
            f"the API server could not store the change to {what.object()}: the object is "
            f"too large for etcd ({api_message})",
            "the pod has reached etcd's size limit (about 1.5 MiB); earlier ephemeral "
            "containers fill it and stay until the pod is recreated (e.g. kubectl rollout "
            "restart, or delete the pod if a controller recreates it). Until then no change "
            "to it is accepted, not even the kubelet's status updates",
        )
    elif status >= 500:
        err = ClusterUnreachable(
            f"the API server failed to {what.verb} {what.resource}{what.where()} "
            f"({status}): {api_message}",
            "the API server or the node's kubelet is unhealthy; check `kubectl get nodes` "
            "and try again",
        )
    else:
        err = DnstraceError(
            f"the API server answered {status} to {what.verb} {what.resource}{what.where()}: "
            f"{api_message}",
            "run again with DNSTRACE_DEBUG=1 and report it",
        )
    err.status = status  # type: ignore[attr-defined]
    err.reason = body.get("reason") or ""  # type: ignore[attr-defined]
    err.api_message = api_message  # type: ignore[attr-defined]
    err.details = details  # type: ignore[attr-defined]
    return err


_VIA_LOG = "kubectl dnstrace coredns --via log --domain NAME"


def psa_hint(level: str, namespace: str | None) -> str:
    """What to do instead when Pod Security forbids the capture container."""
    ns = namespace or "NAMESPACE"
    if level == "restricted":
        return (
            "raw packet capture needs the NET_RAW capability, which the restricted level "
            "forbids. Instead: ask CoreDNS itself, with no capture container at all (its log "
            f"plugin, turned on and off again for you: {_VIA_LOG}), analyze a tcpdump "
            "capture taken on the node (kubectl dnstrace analyze FILE.pcap), or ask an admin to "
            f"relabel the namespace (kubectl label ns {ns} "
            "pod-security.kubernetes.io/enforce=baseline --overwrite)"
        )
    return (
        "baseline forbids adding capabilities: the capture container runs as root with the "
        "runtime's default set (containerd's includes NET_RAW, CRI-O's may not); if the "
        f"agent then reports no permission, ask an admin to relabel the namespace "
        f"(kubectl label ns {ns} pod-security.kubernetes.io/enforce=privileged --overwrite) or "
        "analyze a node capture instead"
    )


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


__all__ = [
    "KINDS",
    "Action",
    "Kube",
    "StreamBroken",
    "iter_line_reads",
    "iter_lines",
    "psa_hint",
    "resource_path",
    "translate_api_exception",
]
