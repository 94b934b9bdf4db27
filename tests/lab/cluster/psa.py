"""Pod Security admission (the built-in PodSecurity plugin), per namespace labels.

Reads ``pod-security.kubernetes.io/enforce`` / ``warn`` (levels privileged, baseline,
restricted; versions ignored — "latest") and evaluates the whole pod, ephemeral containers
included, exactly like the real plugin does for a pods/ephemeralcontainers write:
- enforce violations refuse the write: ``pods "web-1" is forbidden: violates PodSecurity
  "baseline:latest": non-default capabilities (container "x" must not include "NET_RAW" in
  securityContext.capabilities.add)``;
- warn violations are sent as ``Warning: 299 - "would violate PodSecurity ..."`` headers.
Checks appear in the real order: baseline checks by ID, then the restricted ones
(allowPrivilegeEscalation, unrestricted capabilities, runAsNonRoot, runAsUser=0, seccompProfile).
Containers are named ``container "a"`` or ``containers "a", "b"`` as the real messages do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LEVELS = ("privileged", "baseline", "restricted")
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                 "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


@dataclass
class Verdict:
    denied: str | None = None
    warnings: list[str] = field(default_factory=list)


def _q(names) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _containers(names: list[str]) -> str:
    return f"{'container' if len(names) == 1 else 'containers'} {_q(names)}"


def _all_containers(pod: dict) -> list[dict]:
    spec = pod.get("spec") or {}
    return (spec.get("initContainers") or []) + (spec.get("containers") or []) + (spec.get("ephemeralContainers") or [])


def _sc(c: dict) -> dict:
    return c.get("securityContext") or {}


def _baseline(pod: dict) -> list[tuple[str, str]]:
    """(check title, detail) for baseline violations, in check-ID order."""
    spec = pod.get("spec") or {}
    cs = _all_containers(pod)
    out = []
    adds = [c for c in cs if set((_sc(c).get("capabilities") or {}).get("add") or []) - BASELINE_CAPS]
    if adds:
        caps = sorted(set().union(*[set((_sc(c).get("capabilities") or {}).get("add") or []) - BASELINE_CAPS for c in adds]))
        out.append(("non-default capabilities",
                    f"{_containers([c['name'] for c in adds])} must not include {_q(caps)} in securityContext.capabilities.add"))
    host = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if host:
        out.append(("host namespaces", ", ".join(host)))
    hostpath = [v["name"] for v in spec.get("volumes") or [] if "hostPath" in v]
    if hostpath:
        out.append(("hostPath volumes", f"{'volume' if len(hostpath) == 1 else 'volumes'} {_q(hostpath)}"))
    ports = [c["name"] for c in cs if any(p.get("hostPort") for p in c.get("ports") or [])]
    if ports:
        out.append(("hostPort", f"{_containers(ports)} uses hostPorts"))
    priv = [c["name"] for c in cs if _sc(c).get("privileged")]
    if priv:
        out.append(("privileged", f"{_containers(priv)} must not set securityContext.privileged=true"))
    return out


def _restricted(pod: dict) -> list[tuple[str, str]]:
    psc = (pod.get("spec") or {}).get("securityContext") or {}
    cs = _all_containers(pod)
    names = [c["name"] for c in cs]
    out = _baseline(pod)
    out = [o for o in out if o[0] != "non-default capabilities"]
    ape = [c["name"] for c in cs if _sc(c).get("allowPrivilegeEscalation") is not False]
    if ape:
        out.append(("allowPrivilegeEscalation != false",
                    f"{_containers(ape)} must set securityContext.allowPrivilegeEscalation=false"))
    caps_details = []
    nodrop = [c["name"] for c in cs if "ALL" not in ((_sc(c).get("capabilities") or {}).get("drop") or [])]
    if nodrop:
        caps_details.append(f'{_containers(nodrop)} must set securityContext.capabilities.drop=["ALL"]')
    bad_add = [c for c in cs if set((_sc(c).get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}]
    if bad_add:
        caps = sorted(set().union(*[set((_sc(c).get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}
                                    for c in bad_add]))
        caps_details.append(f"{_containers([c['name'] for c in bad_add])} must not include {_q(caps)} in "
                            "securityContext.capabilities.add")
    if caps_details:
        out.append(("unrestricted capabilities", "; ".join(caps_details)))
    # runAsNonRoot: explicit false anywhere is named; otherwise containers not covered.
    nonroot_details = []
    if psc.get("runAsNonRoot") is False:
        nonroot_details.append("pod must not set securityContext.runAsNonRoot=false")
    explicit_false = [c["name"] for c in cs if _sc(c).get("runAsNonRoot") is False]
    if explicit_false:
        nonroot_details.append(f"{_containers(explicit_false)} must not set securityContext.runAsNonRoot=false")
    if psc.get("runAsNonRoot") is not True:
        implicit = [c["name"] for c in cs if _sc(c).get("runAsNonRoot") is None]
        if implicit and psc.get("runAsNonRoot") is None:
            nonroot_details.append(f"pod or {_containers(implicit)} must set securityContext.runAsNonRoot=true")
    if nonroot_details:
        out.append(("runAsNonRoot != true", "; ".join(nonroot_details)))
    root_details = []
    if psc.get("runAsUser") == 0:
        root_details.append("pod must not set runAsUser=0")
    root = [c["name"] for c in cs if _sc(c).get("runAsUser") == 0]
    if root:
        root_details.append(f"{_containers(root)} must not set runAsUser=0")
    if root_details:
        out.append(("runAsUser=0", "; ".join(root_details)))
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    sec_details = []
    if pod_seccomp == "Unconfined":
        sec_details.append('pod must not set securityContext.seccompProfile.type to "Unconfined"')
    unconfined = [c["name"] for c in cs if (_sc(c).get("seccompProfile") or {}).get("type") == "Unconfined"]
    if unconfined:
        sec_details.append(f'{_containers(unconfined)} must not set securityContext.seccompProfile.type to "Unconfined"')
    if pod_seccomp not in ("RuntimeDefault", "Localhost"):
        unset = [c["name"] for c in cs if not (_sc(c).get("seccompProfile") or {}).get("type")]
        if unset and pod_seccomp is None:
            sec_details.append(f'pod or {_containers(unset)} must set securityContext.seccompProfile.type to '
                               '"RuntimeDefault" or "Localhost"')
    if sec_details:
        out.append(("seccompProfile", "; ".join(sec_details)))
    del names
    return out


def violations(level: str, pod: dict) -> list[tuple[str, str]]:
    if level == "baseline":
        return _baseline(pod)
    if level == "restricted":
        return _restricted(pod)
    return []


def _text(level: str, found: list[tuple[str, str]]) -> str:
    return f'PodSecurity "{level}:latest": ' + ", ".join(f"{title} ({detail})" for title, detail in found)


def level_of(labels: dict, mode: str) -> str:
    value = labels.get(f"pod-security.kubernetes.io/{mode}", "privileged")
    return value if value in LEVELS else "privileged"


def admit(ns_labels: dict, pod: dict) -> Verdict:
    verdict = Verdict()
    enforce = level_of(ns_labels, "enforce")
    found = violations(enforce, pod)
    if found:
        verdict.denied = "violates " + _text(enforce, found)
        return verdict
    warn = level_of(ns_labels, "warn")
    found = violations(warn, pod)
    if found:
        text = ("would violate " + _text(warn, found)).replace("\\", "\\\\").replace('"', '\\"')
        verdict.warnings.append(f'299 - "{text}"')
    return verdict
