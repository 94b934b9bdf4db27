"""Network namespaces, veth pairs and bridges for tests — all inside namespaces we create.

Safety rules (see README, "Tests"): no address, route or bridge is ever added to the root
namespace; every namespace name carries a per-run prefix so a crashed run can be swept;
``Lab.close`` kills every process started through it and deletes every namespace, and it
runs on failure too (use ``with Lab() as lab`` or the ``lab`` pytest fixture).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

PREFIX = "dtlab"


def lab_missing() -> str | None:
    """Why the lab cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces)"
    for tool in ("ip", "dnsmasq", "dig"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"lab tests need {tool} (apt-get install iproute2 dnsmasq-base dnsutils)"
    probe = f"{PREFIX}probe{os.getpid()}"
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if res.returncode != 0:
        return f"cannot create network namespaces here: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run(cmd: Sequence[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, **kw)


@dataclass
class Netns:
    """One network namespace; ``exec``/``popen`` run commands inside it."""

    lab: Lab
    name: str

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return run(self.cmd(*argv), check=check, timeout=timeout, **kw)

    def popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        return self.lab.popen(self.cmd(*argv), **kw)

    def ip(self, *args: str) -> None:
        self.run("ip", *args)

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"


@dataclass
class Lab:
    """A set of namespaces and processes that are all torn down together."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: list[Netns] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    _veths: int = 0

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def netns(self, role: str) -> Netns:
        """Create a namespace with loopback up. ``role`` is a short readable part of its name."""
        name = f"{PREFIX}-{self.tag}-{role}"[:60]
        run(["ip", "netns", "add", name])
        ns = Netns(self, name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def bridge(self, ns: Netns, name: str = "br0", address: str | None = None) -> str:
        """A bridge inside ``ns`` (never the root namespace), optionally with an address."""
        ns.ip("link", "add", name, "type", "bridge")
        # No IPv6 duplicate address detection delay: tests start talking at once.
        ns.run("sysctl", "-qw", f"net.ipv6.conf.{name}.accept_dad=0", check=False)
        if address:
            ns.ip("addr", "add", address, "dev", name)
        ns.ip("link", "set", name, "up")
        return name

    def veth(self, a: Netns, a_name: str, b: Netns, b_name: str) -> None:
        """A veth pair created inside ``a`` with its peer moved straight into ``b``.

        Created in ``a`` rather than in the root namespace, so nothing ever appears there.
        """
        a.ip("link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name)
        for ns, dev in ((a, a_name), (b, b_name)):
            ns.run("sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0", check=False)
            ns.ip("link", "set", dev, "up")

    def attach(self, host: Netns, bridge: str, pod: Netns, addresses: Sequence[str],
               gateway: str | None = None, gateway6: str | None = None, ifname: str = "eth0") -> str:
        """Plug ``pod`` into ``bridge`` in ``host`` like a CNI would: veth, addresses, route.

        Returns the host-side veth name.
        """
        self._veths += 1
        host_if = f"veth{self.tag[:4]}{self._veths}"[:15]
        self.veth(host, host_if, pod, ifname)
        host.ip("link", "set", host_if, "master", bridge)
        for addr in addresses:
            pod.ip("addr", "add", addr, "dev", ifname)
        if gateway:
            pod.ip("route", "add", "default", "via", gateway)
        if gateway6:
            pod.ip("-6", "route", "add", "default", "via", gateway6)
        return host_if

    def popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(list(argv), start_new_session=True, **kw)
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.processes):
            _kill(proc)
        self.processes.clear()
        for ns in reversed(self.namespaces):
            # Any process still inside (started by someone else) dies with a kill of the ns pids.
            pids = run(["ip", "netns", "pids", ns.name], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", ns.name], check=False)
        self.namespaces.clear()


def _kill(proc: subprocess.Popen, grace: float = 2.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)


def sweep_stale() -> None:
    """Delete namespaces left by a crashed earlier run (names start with our prefix)."""
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX + "-"):
            for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", name], check=False)
