"""Fault switches a test flips to make the simulated cluster misbehave like real ones do.

- ``deny``: an RBAC denial for one user/verb/resource (answered with the exact 403 body);
- ``fail_image``: the kubelet cannot pull that image (ErrImagePull, then ImagePullBackOff);
- ``slow_start``: ephemeral containers stay in ContainerCreating this long;
- ``break_log_after``: follow streams of a container are cut (no final chunk) at log positions
  N, 2N, … ``times`` times — so a client resuming with sinceTime (which replays the whole
  second) still progresses N lines per cut, as with a real flaky connection;
- ``disable_ephemeral``: the cluster has no ephemeralcontainers subresource (404, no name);
- ``expire_continue``: the next ``times`` continued list pages are 410 Expired, as when etcd
  compacted the list's snapshot between two pages;
- ``lose_attach_input``: pods/attach sessions succeed but their stdin never reaches the
  container; ``close`` says whether the session still ends the container's stdin (the
  program cut off) or leaves it open (a program that comes too late);
- ``write_before_update``: someone else writes an object just before the client's next PUT
  of it lands, so that PUT carries a stale resourceVersion (the real 409 Conflict).
Pod Security levels are not a switch here: they are the namespace's
``pod-security.kubernetes.io/*`` labels, as on a real cluster (see ``SimCluster.set_psa``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Denial:
    user: str
    verb: str
    resource: str
    subresource: str | None = None
    namespace: str | None = None

    def matches(self, user: str, verb: str, resource: str, subresource: str | None, namespace: str | None) -> bool:
        return (self.user in (user, "*") and self.verb in (verb, "*") and self.resource in (resource, "*")
                and (self.subresource or "") == (subresource or "")
                and (self.namespace is None or self.namespace == (namespace or "")))


@dataclass
class Faults:
    denials: list[Denial] = field(default_factory=list)
    failing_images: set[str] = field(default_factory=set)
    start_delay: float = 0.0
    ephemeral_disabled: bool = False
    attach_input_lost: bool = False
    attach_input_closes: bool = True
    _continue_expiries: int = 0
    _races: list = field(default_factory=list)  # [plural, name, fn, puts to skip]
    _log_breaks: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def write_before_update(self, plural: str, name: str, fn, skip: int = 0) -> None:
        """Before the PUT of ``plural/name`` number ``skip`` (0: the next one), apply ``fn``
        (a store mutation: someone else's edit) to the stored object."""
        with self._lock:
            self._races.append([plural, name, fn, skip])

    def race(self, plural: str, name: str):
        """The edit to make before this PUT, if one is due (used once)."""
        with self._lock:
            for race in self._races:
                if race[0] == plural and race[1] == name:
                    if race[3] > 0:
                        race[3] -= 1
                        return None
                    self._races.remove(race)
                    return race[2]
        return None

    def deny(self, user: str, verb: str, resource: str, subresource: str | None = None,
             namespace: str | None = None) -> None:
        """Refuse ``verb`` on ``resource[/subresource]`` to ``user`` (``"*"`` for any user),
        in ``namespace`` (None: everywhere; ``""``: cluster-wide requests only)."""
        self.denials.append(Denial(user, verb, resource, subresource, namespace))

    def denied(self, user: str, verb: str, resource: str, subresource: str | None, namespace: str | None) -> bool:
        return any(d.matches(user, verb, resource, subresource, namespace) for d in self.denials)

    def fail_image(self, image: str) -> None:
        self.failing_images.add(image)

    def slow_start(self, seconds: float) -> None:
        self.start_delay = seconds

    def break_log_after(self, lines: int, times: int = 1) -> None:
        """Cut follow streams ``times`` times, at log positions ``lines``, 2×``lines``, …"""
        with self._lock:
            self._log_breaks.extend([lines] * times)

    def log_break(self) -> int | None:
        """N of the next pending break (None when no break is pending)."""
        with self._lock:
            return self._log_breaks[0] if self._log_breaks else None

    def used_log_break(self) -> None:
        with self._lock:
            if self._log_breaks:
                self._log_breaks.pop(0)

    def lose_attach_input(self, close: bool = True) -> None:
        self.attach_input_lost = True
        self.attach_input_closes = close

    def disable_ephemeral(self) -> None:
        self.ephemeral_disabled = True

    def expire_continue(self, times: int = 1) -> None:
        with self._lock:
            self._continue_expiries += times

    def continue_expired(self) -> bool:
        """Is this continued list page to expire (uses one expiry)?"""
        with self._lock:
            if self._continue_expiries <= 0:
                return False
            self._continue_expiries -= 1
            return True
