"""The Corefile ConfigMap: find it, turn ``log`` on with a record of the change, put it back.

The promise to the cluster's owners (the Corefile serves every pod's DNS):
- the run's record — its id, its deadline, who ran it and the Corefile as it was — goes into
  an annotation of the ConfigMap *in the same write* as the change, so the change is never
  in the cluster without what undoes it (a run killed with SIGKILL leaves both; ``coredns
  --restore`` or the next ``coredns`` run reads them back);
- every write is a PUT with the resourceVersion that was read: an edit made meanwhile by
  someone else is a 409, never overwritten; the write is redone on the fresh object;
- the restore removes only the line this run added: when nobody else changed the Corefile
  the result is byte-identical to the original; when someone did, their change stays and
  the caller says so.

Which ConfigMap: the one the CoreDNS pods mount (kubeadm's ``coredns``; EKS, AKS and
RKE2 name theirs ``coredns`` or ``rke2-coredns-rke2-coredns``; the pods' volumes say it,
whatever the name), key ``Corefile``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from kubectl_dnstrace import corefile
from kubectl_dnstrace.errors import Conflict, CorefileRefused, DnstraceError, Forbidden, NotFound
from kubectl_dnstrace.kube.client import Kube

ANNOTATION = "kubectl-dnstrace.io/log-run"
COREFILE_KEY = "Corefile"
FALLBACK_NAME = "coredns"
WRITE_ATTEMPTS = 5


@dataclass(slots=True)
class CorefileSource:
    namespace: str
    name: str
    key: str = COREFILE_KEY

    @property
    def label(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"


@dataclass(slots=True)
class RunRecord:
    """What the annotation holds: enough to undo the change without this process."""

    run: str
    deadline: float  # epoch seconds: after it, the change is a leftover
    user: str
    key: str
    original: str

    def to_json(self) -> str:
        return json.dumps({"run": self.run, "deadline": iso(self.deadline), "user": self.user,
                           "key": self.key, "original": self.original}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunRecord | None:
        try:
            d = json.loads(text)
            return cls(str(d["run"]), _epoch(d["deadline"]), str(d.get("user", "")),
                       str(d.get("key", COREFILE_KEY)), str(d["original"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(slots=True)
class Enabled:
    """The outcome of ``enable_log``: the text CoreDNS is to load and what changed."""

    text: str
    changed: list[str]  # server blocks that got our line
    already: list[str]  # server blocks that already log what was asked
    resource_version: str = ""
    written_at: float = 0.0  # the API server's clock at the write (managedFields), 0: unknown


@dataclass(slots=True)
class Restored:
    run: str
    exact: bool  # the Corefile is byte-identical to the original
    others_changed: bool  # someone else edited it during the run: only our line was removed
    nothing: bool = False  # no record of a run: nothing to do


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _epoch(text: str) -> float:
    import calendar

    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def _written_at(meta: dict) -> float:
    """When the API server stored the object (the latest managedFields entry; whole
    seconds). The cluster's clock, not this machine's: it is compared with the kubelet's
    log timestamps."""
    times = [m.get("time") for m in meta.get("managedFields") or [] if m.get("time")]
    try:
        return max(_epoch(t) for t in times) if times else 0.0
    except ValueError:
        return 0.0


def find_source(kube: Kube, namespace: str, pods: list[dict]) -> CorefileSource:
    """The ConfigMap the DNS pods mount a ``Corefile`` from (their volumes name it).

    A volume that maps a key to the path ``Corefile`` says it outright (kubeadm, EKS); a
    volume that mounts a whole ConfigMap may or may not hold one (AKS mounts ``coredns`` and
    ``coredns-custom``): those are read, and the first with a ``Corefile`` key is it."""
    explicit: list[CorefileSource] = []
    whole: list[str] = []
    for pod in pods:
        for vol in (pod.get("spec") or {}).get("volumes") or []:
            cm = vol.get("configMap") or {}
            name = cm.get("name")
            if not name:
                continue
            items = cm.get("items") or []
            keys = [i.get("key") for i in items if i.get("path") == COREFILE_KEY]
            if keys:
                explicit.append(CorefileSource(namespace, name, keys[0]))
            elif not items and name not in whole:
                whole.append(name)
    if explicit:
        return explicit[0]
    for name in whole:
        try:
            data = kube.get("configmaps", name, namespace).get("data") or {}
        except DnstraceError:
            continue
        if COREFILE_KEY in data:
            return CorefileSource(namespace, name)
    return CorefileSource(namespace, whole[0] if len(whole) == 1 else FALLBACK_NAME)


def check_access(kube: Kube, src: CorefileSource) -> None:
    """Forbidden naming every permission the log route lacks, before anything is changed."""
    missing = []
    for verb, resource, sub, name in (("get", "configmaps", "", src.name),
                                      ("update", "configmaps", "", src.name),
                                      ("get", "pods", "log", "")):
        try:
            allowed, _ = kube.can_i(verb, resource, src.namespace, subresource=sub, name=name)
        except DnstraceError:
            allowed = True  # could not ask: the request itself will say
        if not allowed:
            missing.append(f"{verb} {resource}{'/' + sub if sub else ''}"
                           + (f" {name!r}" if name else ""))
    if missing:
        raise Forbidden(
            f"you may not {'; '.join(missing)} in namespace {src.namespace} (RBAC): --via log "
            f"edits the Corefile in {src.label} and reads the CoreDNS pods' logs",
            f"ask a cluster admin to apply what `kubectl dnstrace rbac --cluster` prints (it "
            f"grants configmaps get/update/patch in {src.namespace} and pods/log); check with "
            f"`kubectl auth can-i update configmaps/{src.name} -n {src.namespace}`",
        )


def read(kube: Kube, src: CorefileSource) -> tuple[dict, str]:
    """The ConfigMap and its Corefile text; NotFound says where it was looked for."""
    try:
        cm = kube.get("configmaps", src.name, src.namespace)
    except NotFound:
        raise NotFound(
            f"no {src.label}: the CoreDNS pods' Corefile was not found",
            "name the DNS pods with --dns-namespace and --dns-selector",
        ) from None
    text = (cm.get("data") or {}).get(src.key)
    if text is None:
        raise CorefileRefused(f"{src.label} has no key {src.key!r}",
                              "this cluster's CoreDNS is configured some other way; use the "
                              "capture route (--via capture)")
    return cm, text


def record_of(cm: dict) -> RunRecord | None:
    value = ((cm.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    return RunRecord.from_json(value) if value else None


def parse_or_refuse(src: CorefileSource, text: str) -> corefile.Corefile:
    try:
        return corefile.parse(text)
    except corefile.CorefileError as exc:
        raise CorefileRefused(
            f"the Corefile in {src.label} cannot be read: {exc}",
            "nothing was changed; use the capture route (--via capture), or fix the Corefile",
        ) from None


def refuse_unsafe(src: CorefileSource, text: str) -> corefile.Corefile:
    """The parsed Corefile, or CorefileRefused with what to do when editing it is unsafe."""
    cf = parse_or_refuse(src, text)
    if not cf.reloads:
        raise CorefileRefused(
            f"the Corefile in {src.label} has no 'reload' plugin: CoreDNS would only load "
            "an edit after a restart of its pods",
            "nothing was changed. Use the capture route (kubectl dnstrace coredns, the "
            "default), or add 'reload' to the Corefile's server block first (a one-time "
            "change, picked up at the next CoreDNS restart)",
        )
    return cf


def _write(kube: Kube, cm: dict, key: str, text: str, record: RunRecord | None) -> dict:
    new = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": dict(cm.get("metadata") or {}),
           "data": dict(cm.get("data") or {})}
    for field in ("binaryData", "immutable"):
        if field in cm:
            new[field] = cm[field]
    new["data"][key] = text
    annotations = dict(new["metadata"].get("annotations") or {})
    if record is None:
        annotations.pop(ANNOTATION, None)
    else:
        annotations[ANNOTATION] = record.to_json()
    if annotations:
        new["metadata"]["annotations"] = annotations
    else:
        new["metadata"].pop("annotations", None)
    return kube.replace("configmaps", new)


def enable_log(kube: Kube, src: CorefileSource, run_id: str, domains: list[str],
               deadline: float, user: str) -> Enabled:
    """Add our ``log`` line (with the record) unless the Corefile already logs the names.

    Refuses (CorefileRefused) when another run's change is still in place and its deadline
    has not passed: two runs would restore each other's originals."""
    for _ in range(WRITE_ATTEMPTS):
        cm, text = read(kube, src)
        other = record_of(cm)
        if other is not None:
            raise CorefileRefused(
                f"{src.label} carries the change of kubectl dnstrace run {other.run} "
                f"(by {other.user or 'someone'}, until {iso(other.deadline)} UTC)",
                "wait for that run to end; if it was killed, put the Corefile back with "
                "kubectl dnstrace coredns --restore",
            )
        parse_or_refuse(src, text)
        try:
            edit = corefile.add_log_line(text, run_id, domains)
        except corefile.CorefileError as exc:
            raise CorefileRefused(f"cannot add 'log' to the Corefile in {src.label}: {exc}",
                                  "nothing was changed; use the capture route (--via capture)"
                                  ) from None
        if not edit.needed:  # already logged: no change, so no reload needed either
            return Enabled(text, [], edit.already, (cm.get("metadata") or {}).get("resourceVersion", ""))
        refuse_unsafe(src, text)
        record = RunRecord(run_id, deadline, user, src.key, text)
        try:
            stored = _write(kube, cm, src.key, edit.text, record)
        except Conflict:
            continue  # changed between our read and write: read again
        meta = stored.get("metadata") or {}
        return Enabled(edit.text, edit.changed, edit.already, meta.get("resourceVersion", ""),
                       _written_at(meta))
    raise CorefileRefused(f"{src.label} kept changing while the 'log' line was being added",
                          "someone is editing the Corefile right now; try again later")


def restore(kube: Kube, src: CorefileSource, run_id: str | None = None) -> Restored:
    """Take out our ``log`` line and the record (of ``run_id``, or of whatever run left
    one). Byte-identical to the recorded original unless someone else changed the file."""
    for _ in range(WRITE_ATTEMPTS):
        cm, text = read(kube, src)
        record = record_of(cm)
        ids = corefile.runs_in(text)
        if record is None and not ids:
            return Restored(run_id or "", exact=True, others_changed=False, nothing=True)
        if run_id is not None and (record.run != run_id if record is not None
                                   else run_id not in ids):
            # Another run's change: not ours to touch (ours may be gone already).
            return Restored(run_id, exact=True, others_changed=False, nothing=True)
        rid = record.run if record is not None else (run_id or ids[0])
        new_text = corefile.remove_log_line(text, None if run_id is None else rid)
        try:
            _write(kube, cm, src.key if record is None else record.key, new_text, None)
        except Conflict:
            continue
        exact = record is not None and new_text == record.original
        return Restored(rid, exact=exact, others_changed=record is not None and not exact)
    raise DnstraceError(f"{src.label} kept changing while it was being put back",
                        "run kubectl dnstrace coredns --restore again")

