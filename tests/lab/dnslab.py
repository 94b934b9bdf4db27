"""A DNS "pod" for the lab: dnsmasq serving a local test zone inside a network namespace,
plus client namespaces on the same bridge that query it with dig.

Layout (everything inside namespaces the lab creates; see tests/lab/netns.py)::

    node ns:  br0 10.244.0.1/24 fd00:244::1/64
      ├── veth ── dns ns:    eth0 10.244.0.53  fd00:244::53   (dnsmasq)
      ├── veth ── client ns: eth0 10.244.0.101 fd00:244::101
      └── ...     more clients, attachable at any time

dnsmasq runs with no upstream at all (``--no-resolv --no-hosts``, no ``--server``), bound
to its own addresses only, answering from ``Zone`` records; names under a local zone that
have no record get NXDOMAIN. Its query log goes to a file in the test's temporary
directory. The simulated cluster builds on ``DnsServer`` and ``DnsLab.add_client``.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.netns import Lab, Netns

DNSMASQ = "/usr/sbin/dnsmasq"
NET4 = ipaddress.ip_network("10.244.0.0/24")
NET6 = ipaddress.ip_network("fd00:244::/64")
GATEWAY4 = "10.244.0.1"
GATEWAY6 = "fd00:244::1"
DNS_HOST = 53  # host part of the DNS server's addresses
FIRST_CLIENT_HOST = 101


def host_addrs(host: int) -> tuple[str, str]:
    """The IPv4 and IPv6 address with host part ``host`` on the lab's pod network; the
    IPv6 one reads the same (``fd00:244::53`` for host 53)."""
    return str(NET4.network_address + host), str(ipaddress.ip_address(f"fd00:244::{host}"))


@dataclass
class Zone:
    """Local data dnsmasq serves. ``local`` zones answer NXDOMAIN for unknown names."""

    local: list[str] = field(default_factory=lambda: ["example.com", "lab.test"])
    a: dict[str, list[str]] = field(default_factory=dict)
    aaaa: dict[str, list[str]] = field(default_factory=dict)
    cname: dict[str, str] = field(default_factory=dict)
    txt: dict[str, str] = field(default_factory=dict)

    @classmethod
    def default(cls) -> Zone:
        return cls(
            a={
                "www.example.com": ["10.0.0.7", "10.0.0.8"],
                "evil.example.com": ["10.66.6.6"],
                "x.evil.example.com": ["10.66.6.7"],
                "notevil.example.com": ["10.0.0.9"],
                "api.lab.test": ["10.0.1.1"],
            },
            aaaa={"www.example.com": ["2001:db8::7"]},
            cname={"alias.example.com": "www.example.com"},
            txt={"txt.example.com": "hello lab"},
        )

    def args(self, workdir: Path, tag: str) -> list[str]:
        """dnsmasq arguments; addresses go to a hosts file (the only way to give a name
        several A records), which ``--no-hosts`` leaves alone (it skips /etc/hosts only)."""
        hosts = workdir / f"zone-{tag}.hosts"
        lines = [f"{addr} {name}" for name, addrs in sorted(self.a.items()) for addr in addrs]
        lines += [f"{addr} {name}" for name, addrs in sorted(self.aaaa.items()) for addr in addrs]
        hosts.write_text("\n".join(lines) + "\n")
        out = [f"--local=/{z}/" for z in self.local]
        out.append(f"--addn-hosts={hosts}")
        out += [f"--cname={alias},{target}" for alias, target in sorted(self.cname.items())]
        out += [f"--txt-record={name},{text}" for name, text in sorted(self.txt.items())]
        return out


@dataclass
class DnsServer:
    """A running dnsmasq in ``ns``; ``log_lines()`` reads its query log."""

    ns: Netns
    addresses: list[str]
    proc: subprocess.Popen
    log_path: Path

    @property
    def ip4(self) -> str:
        return next(a for a in self.addresses if ":" not in a)

    @property
    def ip6(self) -> str:
        return next(a for a in self.addresses if ":" in a)

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text().splitlines()
        except FileNotFoundError:
            return []


def start_dnsmasq(lab: Lab, ns: Netns, addresses: Sequence[str], workdir: Path,
                  zone: Zone | None = None, log_queries: bool = True,
                  extra: Sequence[str] = ()) -> DnsServer:
    """Start dnsmasq in ``ns`` on ``addresses`` and wait until it answers."""
    zone = zone or Zone.default()
    log_path = workdir / f"dnsmasq-{ns.name}.log"
    argv = [
        DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
        "--bind-interfaces", "--except-interface=lo", "--pid-file=", "--user=root",
        "--port=53", f"--log-facility={log_path}",
        *[f"--listen-address={a}" for a in addresses],
        *zone.args(workdir, ns.name),
    ]
    if log_queries:
        argv.append("--log-queries")
    argv += list(extra)
    proc = lab.popen(ns.cmd(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = DnsServer(ns, list(addresses), proc, log_path)
    wait_listening(ns, server.ip4, proc)
    return server


def wait_listening(ns: Netns, address: str, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Wait until something in ``ns`` listens on ``address`` port 53 (UDP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {proc.stderr.read().decode(errors='replace')}")
        out = ns.run("ss", "-Hlun", f"src {address}:53", check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"dnsmasq did not listen on {address}:53 within {timeout}s")


@dataclass
class DnsLab:
    """A node namespace with a bridge, a DNS namespace running dnsmasq, and clients."""

    lab: Lab
    node: Netns
    dns: Netns
    server: DnsServer
    bridge: str = "br0"
    clients: list[Netns] = field(default_factory=list)

    def add_client(self, role: str | None = None) -> tuple[Netns, str, str]:
        """Attach a new client namespace (any time, even while a capture runs).

        Returns the namespace and its IPv4 and IPv6 address.
        """
        host = FIRST_CLIENT_HOST + len(self.clients)
        ns = self.lab.netns(role or f"client{len(self.clients) + 1}")
        ip4, ip6 = host_addrs(host)
        self.lab.attach(self.node, self.bridge, ns, [f"{ip4}/24", f"{ip6}/64"],
                        gateway=GATEWAY4, gateway6=GATEWAY6)
        self.clients.append(ns)
        return ns, ip4, ip6


def dns_lab(lab: Lab, workdir: Path, zone: Zone | None = None, log_queries: bool = True,
            dnsmasq_extra: Sequence[str] = ()) -> DnsLab:
    """Build the node/bridge/DNS-namespace layout above and start dnsmasq."""
    node = lab.netns("node")
    lab.bridge(node, "br0", None)
    node.ip("addr", "add", f"{GATEWAY4}/24", "dev", "br0")
    node.ip("addr", "add", f"{GATEWAY6}/64", "dev", "br0")
    dns = lab.netns("dns")
    ip4, ip6 = host_addrs(DNS_HOST)
    lab.attach(node, "br0", dns, [f"{ip4}/24", f"{ip6}/64"], gateway=GATEWAY4, gateway6=GATEWAY6)
    server = start_dnsmasq(lab, dns, [ip4, ip6], workdir, zone, log_queries, dnsmasq_extra)
    return DnsLab(lab, node, dns, server)


def dig(ns: Netns, server: str, name: str, qtype: str = "A", tcp: bool = False,
        timeout: float = 2.0) -> subprocess.CompletedProcess:
    """One query with dig from ``ns``, no retries (so each call is exactly one query)."""
    argv = ["dig", f"@{server}", name, qtype, "+tries=1", f"+time={int(timeout)}", "+noall",
            "+answer", "+comments"]
    if tcp:
        argv.append("+tcp")
    return ns.run(*argv, check=False, timeout=timeout + 5)


def tcp_exchange(ns: Netns, server: str, chunks: Sequence[bytes], read_responses: int,
                 timeout: float = 5.0) -> list[bytes]:
    """Send ``chunks`` as separate TCP writes (no coalescing) from ``ns`` to ``server``:53
    and return ``read_responses`` length-framed responses. Runs a small python client in
    the namespace, so tests can split one DNS message across segments or put several in
    one segment."""
    script = (
        "import socket,sys,time,binascii\n"
        "chunks=[binascii.unhexlify(c) for c in sys.argv[3:]]\n"
        f"s=socket.create_connection((sys.argv[1],53),timeout={timeout!r})\n"
        "s.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n"
        "for c in chunks:\n"
        "    s.sendall(c); time.sleep(0.05)\n"
        "buf=b''; out=[]\n"
        "while len(out)<int(sys.argv[2]):\n"
        "    d=s.recv(65535)\n"
        "    if not d: break\n"
        "    buf+=d\n"
        "    while len(buf)>=2 and len(buf)>=2+int.from_bytes(buf[:2],'big'):\n"
        "        n=int.from_bytes(buf[:2],'big'); out.append(buf[2:2+n]); buf=buf[2+n:]\n"
        "s.close()\n"
        "print(' '.join(binascii.hexlify(m).decode() for m in out))\n"
    )
    res = ns.run("python3", "-c", script, server, str(read_responses),
                 *[c.hex() for c in chunks], timeout=timeout + 5)
    return [bytes.fromhex(h) for h in res.stdout.split()]


def repo_root() -> str:
    """The repository root (for PYTHONPATH when the agent runs in a namespace)."""
    return str(Path(__file__).resolve().parents[2])


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": repo_root()}
    env.update(extra or {})
    return env
