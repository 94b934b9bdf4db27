"""Turn what the user typed (``coredns``, ``pod/x``, ``deploy/web``, ``-l app=x``) into pods.

kubectl's conventions apply: ``TYPE/NAME`` with the usual short and long type names, a bare
``NAME`` is a pod, ``-n`` beats the context's namespace which beats ``default``, and ``-A``
looks everywhere. A workload means its *running* pods, found through the workload's own
label selector (what ``kubectl logs deploy/x`` does). Pods that are not Running are reported
and skipped: an ephemeral container cannot start in them.

The cluster DNS (``coredns`` or ``dns``) is the Service ``kube-dns`` in ``kube-system``: its
selector names the DNS pods whatever their labels. NodeLocal DNSCache adds a Service
``kube-dns-upstream`` with the *same* ``k8s-app=kube-dns`` label, so services are never
looked up by label here. When the ``node-local-dns`` DaemonSet exists, its pods are traced
too: they are hostNetwork, so their capture runs in the node's network namespace and sees
the real pod IPs that CoreDNS, behind the cache, never sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubectl_dnstrace.errors import DnstraceError, Forbidden, NotFound, UsageError
from kubectl_dnstrace.kube.client import Kube
from kubectl_dnstrace.kube.follow import Follow
from kubectl_dnstrace.model import PodRef

# kubectl's names for the kinds a target may name -> our kinds table.
KIND_ALIASES: dict[str, str] = {
    "pod": "pods", "pods": "pods", "po": "pods",
    "deploy": "deployments", "deployment": "deployments", "deployments": "deployments",
    "ds": "daemonsets", "daemonset": "daemonsets", "daemonsets": "daemonsets",
    "sts": "statefulsets", "statefulset": "statefulsets", "statefulsets": "statefulsets",
    "job": "jobs", "jobs": "jobs",
    "rs": "replicasets", "replicaset": "replicasets", "replicasets": "replicasets",
    "cj": "cronjobs", "cronjob": "cronjobs", "cronjobs": "cronjobs",
}
KIND_GROUPS = {"deployments": "apps", "daemonsets": "apps", "statefulsets": "apps",
               "replicasets": "apps", "jobs": "batch", "cronjobs": "batch", "pods": ""}
DNS_ALIASES = ("coredns", "dns")
NODE_KINDS = ("node", "nodes", "no")  # node/NAME; bare "nodes" is every node (or -l)
DNS_SERVICE = "kube-dns"
DNS_FALLBACK_SELECTOR = "k8s-app=kube-dns"
NODE_LOCAL_DAEMONSET = "node-local-dns"
NODE_LOCAL_SELECTOR = "k8s-app=node-local-dns"

VALID_FORMS = (
    "coredns | dns | pod/NAME | NAME | deploy/NAME | ds/NAME | sts/NAME | job/NAME | "
    "cronjob/NAME | rs/NAME | node/NAME | nodes (long forms: pods/, deployment/, daemonset/, "
    "statefulset/, replicaset/, nodes/; cj/, no/), or -l SELECTOR"
)


@dataclass(frozen=True, slots=True)
class Target:
    """One parsed target: a kind from the kinds table (or "dns") and a name."""

    kind: str
    name: str = ""
    text: str = ""


@dataclass(slots=True)
class Resolution:
    """The pods to trace, what was skipped and why, and notes for the user (stderr)."""

    pods: list[PodRef] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # ("ns/pod", why)
    notes: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # node/NAME and nodes: captured in the node
    # The workloads and selectors behind the pods, followed for the whole run (kube/follow):
    # pod/NAME targets are not among them.
    follows: list[Follow] = field(default_factory=list)

    @property
    def namespaces(self) -> list[str]:
        return sorted({p.namespace for p in self.pods})

    def add(self, pod: dict, role: str = "pod") -> None:
        """Add a pod object if it is Running and not already chosen (one container per pod)."""
        ref = pod_ref(pod, role)
        if any(p.key == ref.key for p in self.pods) or any(k == ref.key for k, _ in self.skipped):
            return
        why = not_running_reason(pod)
        if why:
            self.skipped.append((ref.key, why))
        else:
            self.pods.append(ref)


def parse_target(text: str) -> Target:
    """Parse ``TYPE/NAME``, bare ``NAME`` or ``coredns``; anything else is a UsageError."""
    raw = text.strip()
    if raw.lower() in DNS_ALIASES:
        return Target("dns", "", raw)
    if raw.lower() == "nodes":
        return Target("nodes", "", raw)
    parts = raw.split("/")
    if len(parts) == 2 and parts[0].lower() in NODE_KINDS and _is_name(parts[1]):
        return Target("nodes", parts[1], raw)
    if len(parts) == 1 and _is_name(raw):
        return Target("pods", raw, raw)
    if len(parts) == 2 and parts[0] and _is_name(parts[1]):
        kind_word = parts[0].lower()
        # kubectl also accepts TYPE.GROUP/NAME: deployments.apps/web, jobs.batch/x
        base, _, group = kind_word.partition(".")
        kind = KIND_ALIASES.get(base)
        if kind and (not group or group == KIND_GROUPS[kind] or (group == "v1" and kind == "pods")):
            return Target(kind, parts[1], raw)
        raise UsageError(
            f"unknown target type {parts[0]!r} in {raw!r}",
            f"valid targets: {VALID_FORMS}",
        )
    raise UsageError(f"cannot read the target {raw!r}", f"valid targets: {VALID_FORMS}")


def _is_name(name: str) -> bool:
    """A DNS-1123 subdomain, what Kubernetes object names are."""
    if not name or len(name) > 253:
        return False
    return all(c.isascii() and (c.islower() or c.isdigit() or c in "-.") for c in name) and \
        name[0].isalnum() and name[-1].isalnum()


def selector_string(selector: dict | None) -> str:
    """A LabelSelector object as the string the list API takes ("a=b,c in (d,e),!f")."""
    if not selector:
        return ""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            terms.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            terms.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            terms.append(str(key))
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)


def not_running_reason(pod: dict) -> str:
    """Why a pod cannot take a capture container now ("" when it can)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "terminating"
    phase = status.get("phase") or "Unknown"
    if phase != "Running":
        return f"not running (phase {phase})"
    return ""


def pod_ref(pod: dict, role: str = "pod") -> PodRef:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    return PodRef(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        node=spec.get("nodeName") or "",
        host_network=bool(spec.get("hostNetwork")),
        role=role,
        containers=[c.get("name", "") for c in spec.get("containers") or []],
        ephemeral_containers=[c.get("name", "") for c in spec.get("ephemeralContainers") or []],
    )


class TargetResolver:
    """Resolves targets against one cluster; ``resolve`` returns a ``Resolution``."""

    def __init__(self, kube: Kube, namespace: str | None = None, all_namespaces: bool = False,
                 dns_namespace: str = "kube-system", dns_selector: str | None = None) -> None:
        self.kube = kube
        self.namespace = namespace or kube.namespace or "default"
        self.all_namespaces = all_namespaces
        self.dns_namespace = dns_namespace or "kube-system"
        self.dns_selector = dns_selector
        self._idle_cronjobs: list[tuple[str, str, str]] = []  # (name, namespace, why idle)

    def resolve(self, targets: list[str], selector: str | None = None) -> Resolution:
        parsed = [parse_target(t) for t in targets]  # all syntax errors before any API call
        res = Resolution()
        every_node = any(t.kind == "nodes" and not t.name for t in parsed)
        if selector and any(t.kind == "nodes" for t in parsed) and (
                not every_node or len(parsed) > 1):
            raise UsageError("-l with nodes selects nodes: give it with the bare target nodes",
                             "for example: kubectl dnstrace nodes -l topology.kubernetes.io/"
                             "zone=eu-1a")
        for target in parsed:
            if target.kind == "nodes":
                self._node(res, target, selector)
                continue
            if target.kind == "dns":
                self._cluster_dns(res)
            elif target.kind == "pods":
                self._pod(res, target)
            elif target.kind == "cronjobs":
                self._cronjob(res, target)
            else:
                self._workload(res, target)
        if selector and not every_node:
            self._selector(res, selector)
        for pod in res.pods:
            if pod.host_network and pod.role == "pod":
                res.notes.append(
                    f"{pod.key} uses the node's network (hostNetwork): its capture sees the DNS "
                    f"traffic of everything on node {pod.node or '?'}, not only this pod"
                )
        if not res.pods and res.nodes:
            return res
        if not res.pods:
            what = ", ".join(targets + ([f"-l {selector}"] if selector else []))
            if self._idle_cronjobs:
                name, ns, _ = self._idle_cronjobs[0]
                raise NotFound(
                    "no job is running now for "
                    + "; ".join(f"cronjob/{n} in namespace {n_s} ({why})"
                                for n, n_s, why in self._idle_cronjobs)
                    + "".join(f"; {k} is {why}" for k, why in res.skipped),
                    "a CronJob's pods exist only while one of its jobs runs. Trace the "
                    "cluster DNS instead (kubectl dnstrace coredns --domain NAME): a job pod "
                    "that starts and ends during the trace is still named. Or start a run "
                    f"now: kubectl create job --from=cronjob/{name} {name}-manual -n {ns}, "
                    f"then: kubectl dnstrace job/{name}-manual -n {ns}",
                )
            if res.skipped:
                raise NotFound(
                    f"no running pod behind {what}: "
                    + "; ".join(f"{k} is {why}" for k, why in res.skipped),
                    "wait for the pods to be Running (`kubectl get pods -o wide`) and run again",
                )
            raise NotFound(
                f"no pods found for {what}{self._where()}",
                "check the names and the namespace (-n NAMESPACE, or -A for all namespaces)",
            )
        return res

    def _where(self) -> str:
        return " in any namespace" if self.all_namespaces else f" in namespace {self.namespace}"

    # ---- pods and workloads ----------------------------------------------------------------

    def _pod(self, res: Resolution, target: Target) -> None:
        if self.all_namespaces:
            items, _ = self.kube.list("pods", None, field_selector=f"metadata.name={target.name}")
            if not items:
                raise NotFound(
                    f"pod {target.name!r} not found in any namespace",
                    "check the name with `kubectl get pods -A`",
                )
            for pod in items:
                res.add(pod)
            return
        try:
            pod = self.kube.get("pods", target.name, self.namespace)
        except NotFound:
            raise self._missing("pod", target.name) from None
        res.add(pod)

    def _find(self, target: Target) -> list[dict]:
        """The object(s) ``target`` names: in the namespace, or by name in every one (-A)."""
        if self.all_namespaces:
            found, _ = self.kube.list(target.kind, None,
                                      field_selector=f"metadata.name={target.name}")
        else:
            try:
                found = [self.kube.get(target.kind, target.name, self.namespace)]
            except NotFound:
                raise self._missing(_singular(target.kind), target.name) from None
        if not found:
            raise NotFound(
                f"{_singular(target.kind)} {target.name!r} not found in any namespace",
                f"check the name with `kubectl get {target.kind} -A`",
            )
        return found

    def _workload(self, res: Resolution, target: Target) -> None:
        for workload in self._find(target):
            ns = (workload.get("metadata") or {}).get("namespace") or self.namespace
            if not self._pods_of(res, workload, target.kind, ns):
                res.notes.append(f"{target.text} in namespace {ns} has no pods")

    def _pods_of(self, res: Resolution, workload: dict, kind: str, ns: str) -> bool:
        """Add the pods of one workload (its selector, then its ownerReferences); False
        when it has none."""
        selector = selector_string((workload.get("spec") or {}).get("selector"))
        if not selector:
            name = (workload.get("metadata") or {}).get("name", "")
            raise NotFound(
                f"{_singular(kind)}/{name} in namespace {ns} has no pod selector",
                "name its pods with pod/NAME or -l SELECTOR instead",
            )
        pods, _ = self.kube.list("pods", ns, label_selector=selector)
        uid = (workload.get("metadata") or {}).get("uid")
        name = (workload.get("metadata") or {}).get("name", "")
        res.follows.append(Follow(f"{_short(kind)}/{name}", ns, selector, "pod", uid, kind))
        before = len(res.pods) + len(res.skipped)
        cache: dict[str, set] = {}
        for pod in pods:
            if _owned_by(pod, uid, kind, self.kube, ns, cache):
                res.add(pod)
        return len(res.pods) + len(res.skipped) > before

    def _cronjob(self, res: Resolution, target: Target) -> None:
        """A CronJob has no pods of its own: the pods of its running Jobs are traced.

        Its Jobs are found by their owner reference to it (what the CronJob controller
        sets), not by its ``status.active``, which lags the Jobs. A finished Job keeps its
        pods (Succeeded, Failed) until it is cleaned up: those are skipped as not running.
        """
        for cronjob in self._find(target):
            meta = cronjob.get("metadata") or {}
            ns = meta.get("namespace") or self.namespace
            jobs, _ = self.kube.list("jobs", ns)
            running = len(res.pods)
            mine = []
            for job in jobs:
                owners = (job.get("metadata") or {}).get("ownerReferences") or []
                if any(o.get("uid") == meta.get("uid") for o in owners):
                    mine.append((job.get("metadata") or {}).get("name", ""))
                    self._pods_of(res, job, "jobs", ns)
            if len(res.pods) == running:
                last = (cronjob.get("status") or {}).get("lastScheduleTime")
                name = meta.get("name", target.name)
                why = (f"job {', '.join(mine)} has no running pod" if mine
                       else f"last scheduled {last}" if last else "no job yet")
                self._idle_cronjobs.append((name, ns, why))
                res.notes.append(f"{target.text} in namespace {ns} has no running job now")

    def _selector(self, res: Resolution, selector: str) -> None:
        ns = None if self.all_namespaces else self.namespace
        pods, _ = self.kube.list("pods", ns, label_selector=selector)
        res.follows.append(Follow(f"-l {selector}", ns, selector))
        if not pods:
            res.notes.append(f"no pods match -l {selector}{self._where()}")
        for pod in pods:
            res.add(pod)

    def _missing(self, kind: str, name: str) -> NotFound:
        """``pods "x" not found`` also means a missing namespace: find out which it is."""
        try:
            self.kube.get("namespaces", self.namespace)
        except NotFound:
            return NotFound(
                f"namespace {self.namespace!r} not found (looking for {kind} {name!r})",
                "check the namespace with `kubectl get namespaces`; pass it with -n",
            )
        except DnstraceError:
            pass  # may not read namespaces: say what we know
        return NotFound(
            f"{kind} {name!r} not found in namespace {self.namespace}",
            f"check the name with `kubectl get {kind}s -n {self.namespace}`, or use -A "
            "to look in every namespace",
        )

    # ---- nodes -----------------------------------------------------------------------------

    def _node(self, res: Resolution, target: Target, selector: str | None) -> None:
        """node/NAME must exist; nodes is every node, or those matching -l."""
        if target.name:
            try:
                self.kube.get("nodes", target.name)
            except NotFound:
                raise NotFound(f"node {target.name!r} not found",
                               "check the name with `kubectl get nodes`") from None
            names = [target.name]
        else:
            items, _ = self.kube.list("nodes", None, label_selector=selector)
            names = sorted((n.get("metadata") or {}).get("name", "") for n in items)
            if not names:
                raise NotFound("no nodes" + (f" match -l {selector}" if selector else ""),
                               "check with `kubectl get nodes" + (f" -l {selector}`" if selector
                                                                   else "`"))
        for name in names:
            if name not in res.nodes:
                res.nodes.append(name)

    # ---- the cluster DNS -------------------------------------------------------------------

    def _cluster_dns(self, res: Resolution) -> None:
        ns = self.dns_namespace
        selector = self.dns_selector or self._dns_service_selector(res)
        pods, _ = self.kube.list("pods", ns, label_selector=selector)
        dns_pods = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {})
                    .get("k8s-app") != "node-local-dns"]
        if not dns_pods:
            raise NotFound(
                f"no cluster DNS pods match {selector!r} in namespace {ns}",
                "name them with --dns-namespace and --dns-selector (e.g. "
                "--dns-selector k8s-app=coredns)",
            )
        res.follows.append(Follow("coredns", ns, selector, "coredns"))
        for pod in dns_pods:
            res.add(pod, role="coredns")
        if not self.dns_selector:
            self._node_local_dns(res)

    def _dns_service_selector(self, res: Resolution) -> str:
        """The selector of Service kube-dns, got by name (never by label: see module doc)."""
        try:
            svc = self.kube.get("services", DNS_SERVICE, self.dns_namespace)
        except NotFound:
            res.notes.append(
                f"no Service {DNS_SERVICE} in {self.dns_namespace}: using pods labelled "
                f"{DNS_FALLBACK_SELECTOR}"
            )
            return DNS_FALLBACK_SELECTOR
        except Forbidden:
            res.notes.append(
                f"may not read Service {DNS_SERVICE} in {self.dns_namespace}: using pods "
                f"labelled {DNS_FALLBACK_SELECTOR}"
            )
            return DNS_FALLBACK_SELECTOR
        selector = (svc.get("spec") or {}).get("selector") or {}
        if not selector:
            return DNS_FALLBACK_SELECTOR
        return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))

    def _node_local_dns(self, res: Resolution) -> None:
        try:
            ds = self.kube.get("daemonsets", NODE_LOCAL_DAEMONSET, self.dns_namespace)
        except (NotFound, Forbidden):
            return
        selector = selector_string((ds.get("spec") or {}).get("selector")) or NODE_LOCAL_SELECTOR
        pods, _ = self.kube.list("pods", self.dns_namespace, label_selector=selector)
        res.notes.append(
            "NodeLocal DNSCache detected: tracing node-local-dns pods too; they run in the "
            "node's network namespace and see the real pod IPs"
        )
        res.follows.append(Follow("node-local-dns", self.dns_namespace, selector,
                                  "node-local-dns"))
        for pod in pods:
            res.add(pod, role="node-local-dns")


def _short(kind: str) -> str:
    """The short form a user types: deploy, ds, sts, job, rs."""
    return {"deployments": "deploy", "daemonsets": "ds", "statefulsets": "sts",
            "jobs": "job", "replicasets": "rs"}.get(kind, kind)


def _singular(kind: str) -> str:
    return {"deployments": "deployment", "daemonsets": "daemonset",
            "statefulsets": "statefulset", "jobs": "job", "replicasets": "replicaset",
            "cronjobs": "cronjob", "pods": "pod"}.get(kind, kind)


def _owned_by(pod: dict, uid: str | None, kind: str, kube: Kube, namespace: str,
              cache: dict[str, set]) -> bool:
    """Keep pods the selector matches unless their owners say they belong to someone else.

    A selector can overlap another workload's pods; ownerReferences settle it. A pod with
    no owner reference (or a workload without uid) is kept, as kubectl would.
    """
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    if not uid or not owners:
        return True
    owner_uids = {o.get("uid") for o in owners}
    if uid in owner_uids:
        return True
    if kind == "deployments":
        # Pod -> ReplicaSet -> Deployment: ReplicaSets of this Deployment carry its uid.
        for o in owners:
            if o.get("kind") == "ReplicaSet":
                name = o.get("name", "")
                if name not in cache:
                    try:
                        rs = kube.get("replicasets", name, namespace)
                    except DnstraceError:
                        return True
                    cache[name] = {r.get("uid") for r in
                                   (rs.get("metadata") or {}).get("ownerReferences") or []}
                return uid in cache[name]
    return False


def resolve_targets(kube: Kube, targets: list[str], selector: str | None = None, *,
                    namespace: str | None = None, all_namespaces: bool = False,
                    dns_namespace: str = "kube-system",
                    dns_selector: str | None = None) -> Resolution:
    """Resolve every target of one run into the running pods to trace (deduplicated)."""
    return TargetResolver(kube, namespace, all_namespaces, dns_namespace,
                          dns_selector).resolve(targets, selector)
