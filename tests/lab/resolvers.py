"""dnsmasq command lines for the scenario's three kinds of DNS server, and a readiness wait.

- upstream: the "internet" resolver, authoritative for every scenario record outside the
  cluster domain and NXDOMAIN for everything else (``local=/#/``), with a real TTL
  (``local-ttl``; dnsmasq's default for its own data is 0, which would defeat caching);
- cluster DNS pods (CoreDNS stand-ins): answer the cluster domain themselves, forward the
  rest to the upstream and cache it — so a capture inside a DNS pod sees both the client
  queries and the DNS pod's own upstream leg, and some client queries are served from cache;
- node-local-dns (NodeLocal DNSCache stand-in): listens on the link-local 169.254.20.10 in
  the node's network namespace, forwards the cluster domain to the DNS pods and, like the
  stock node-local-dns Corefile, everything else straight to the upstream (so those names
  never reach CoreDNS), unless told to forward everything to the DNS pods.

Every server logs its queries (``log-queries``) to a file so tests can see who asked whom.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tests.lab.netns import Netns

DNSMASQ = "/usr/sbin/dnsmasq"
NODE_LOCAL_ADDRESS = "169.254.20.10"


@dataclass(frozen=True)
class Record:
    """One DNS record a scenario serves. ``wildcard`` covers the name and all names below it."""

    name: str
    rtype: str  # A, AAAA, TXT, CNAME
    value: str
    wildcard: bool = False


def _base(listen: Sequence[str], log_file: str) -> list[str]:
    args = [
        DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-hosts", "--no-resolv",
        "--pid-file", "--user=root", "--group=root", "--bind-interfaces",
        "--log-queries", f"--log-facility={log_file}",
    ]
    args += [f"--listen-address={addr}" for addr in listen]
    return args


def record_args(records: Iterable[Record]) -> list[str]:
    """dnsmasq options that serve ``records`` as local data."""
    args: list[str] = []
    for rec in records:
        if rec.wildcard:
            # address=/d/ip answers d and every name below it; only addresses can be wildcards.
            args.append(f"--address=/{rec.name}/{rec.value}")
        elif rec.rtype in ("A", "AAAA"):
            args.append(f"--host-record={rec.name},{rec.value}")
        elif rec.rtype == "TXT":
            args.append(f"--txt-record={rec.name},{rec.value}")
        elif rec.rtype == "CNAME":
            args.append(f"--cname={rec.name},{rec.value}")
        else:  # parse_records only lets the types above through
            raise ValueError(f"unsupported record type {rec.rtype}")
    return args


def upstream_command(listen: str, records: Iterable[Record], ttl: int, log_file: str) -> list[str]:
    return [*_base([listen], log_file), "--local=/#/", f"--local-ttl={ttl}", "--cache-size=0",
            *record_args(records)]


def cluster_dns_command(listen: str, upstream: str, cluster_domain: str, records: Iterable[Record],
                        ttl: int, log_file: str) -> list[str]:
    """A CoreDNS stand-in: authoritative for the cluster domain, caching forwarder for the rest."""
    # neg-ttl: the upstream's NXDOMAIN carries no SOA, and without one dnsmasq would not cache
    # it — CoreDNS's cache keeps denials too, so cache them for the record TTL.
    return [*_base([listen], log_file), f"--server={upstream}", f"--local=/{cluster_domain}/",
            f"--local-ttl={ttl}", f"--neg-ttl={ttl}", "--cache-size=1000", *record_args(records)]


def node_local_command(cluster_dns: Sequence[str], upstream: str, cluster_domain: str,
                       forward_all: bool, log_file: str) -> list[str]:
    """A node-local-dns stand-in: a cache on 169.254.20.10 in the node namespace.

    The stock node-local-dns Corefile forwards the cluster domain and the reverse zones to
    kube-dns-upstream (the CoreDNS pods) and everything else to the node's own resolvers, so
    with it CoreDNS only ever sees cluster names — and sees them from node addresses.
    """
    args = [*_base([NODE_LOCAL_ADDRESS], log_file), "--cache-size=1000"]
    if forward_all:
        args += [f"--server={ip}" for ip in cluster_dns]
        return args
    for zone in (cluster_domain, "in-addr.arpa", "ip6.arpa"):
        args += [f"--server=/{zone}/{ip}" for ip in cluster_dns]
    args.append(f"--server={upstream}")
    return args


def wait_listening(ns: Netns, address: str, port: int = 53, timeout: float = 10.0,
                   proto: str = "u") -> None:
    """Wait until something in ``ns`` listens on ``address:port`` (``ss`` in that namespace)."""
    want = f"[{address}]:{port}" if ipaddress.ip_address(address).version == 6 else f"{address}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        out = ns.run("ss", f"-Hln{proto}", check=False).stdout
        if any(want in line.split() for line in out.splitlines()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {want} in {ns.name} after {timeout:.0f}s")
        time.sleep(0.03)
