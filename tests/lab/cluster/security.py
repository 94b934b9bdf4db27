"""What a container runtime grants a container's process: uid/gid and capabilities.

Mirrors containerd + runc (the runtime of the recordings): the default capability set
includes NET_RAW (CRI-O's does not); ``capabilities.drop`` (``ALL`` too) and ``add`` edit it;
``privileged`` grants everything; ``runAsUser``/``runAsGroup`` come from the container or
else the pod securityContext (default root); a non-root process gets no effective
capabilities (no ambient set); ``allowPrivilegeEscalation: false`` sets no_new_privs.
This is why a restricted-profile capture container is admitted but its packet socket fails
with EPERM (live-psa/10), while a root container with no added capabilities under baseline
captures fine (live-psa/05).
Applied with ``setpriv`` after ``ip netns exec``, so pods/exec gets the same identity.
"""

from __future__ import annotations

import shutil

CONTAINERD_DEFAULT_CAPS = ("AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                           "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT")


def _normalize(cap: str) -> str:
    cap = cap.upper()
    return cap[4:] if cap.startswith("CAP_") else cap


def capabilities(pod: dict, container: dict) -> set[str] | None:
    """The bounding set for the container (None: everything, i.e. privileged)."""
    sc = container.get("securityContext") or {}
    if sc.get("privileged"):
        return None
    caps = sc.get("capabilities") or {}
    drop = {_normalize(c) for c in caps.get("drop") or []}
    out = set() if "ALL" in drop else set(CONTAINERD_DEFAULT_CAPS) - drop
    return out | {_normalize(c) for c in caps.get("add") or []}


def run_as(pod: dict, container: dict) -> tuple[int, int]:
    psc = (pod.get("spec") or {}).get("securityContext") or {}
    sc = container.get("securityContext") or {}
    uid = sc.get("runAsUser", psc.get("runAsUser", 0))
    gid = sc.get("runAsGroup", psc.get("runAsGroup", 0))
    return int(uid), int(gid)


def wrapper(pod: dict, container: dict) -> list[str]:
    """argv prefix that gives the process the container's identity ([] if setpriv is missing)."""
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return []
    uid, gid = run_as(pod, container)
    caps = capabilities(pod, container)
    argv = [setpriv]
    if caps is not None:
        bounding = "-all" + "".join(f",+{c.lower()}" for c in sorted(caps))
        argv += ["--bounding-set", bounding, "--inh-caps", "-all"]
    if uid != 0 or gid != 0:
        argv += ["--regid", str(gid), "--reuid", str(uid), "--clear-groups"]
    if (container.get("securityContext") or {}).get("allowPrivilegeEscalation") is False:
        argv.append("--no-new-privs")
    return argv
