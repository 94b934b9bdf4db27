"""The simulated cluster's network: nodes, pod networks and a fabric — all in namespaces.

Layout (node ``i`` counts from 0)::

    fabric ns:  bridge fabric0 ──┬── node-i ns eth0  172.18.0.(10+i)/24   (the node's InternalIP)
                                 └── upstream ns eth0 172.18.0.53/24      (the "internet" resolver)
    node-i ns:  bridge cni0 10.244.i.1/24 (the podCIDR's gateway, like a bridge CNI),
                routes 10.244.j.0/24 via 172.18.0.(10+j), ip_forward on;
                hostNetwork pods run here; node-local-dns adds 169.254.20.10 on a dummy link
    pod ns:     eth0 (veth into its node's cni0) with the pod IP, default route via the gateway

Source addresses then come out as on a real cluster: a pod's packets carry its pod IP
everywhere; a node process talking to a pod on the same node uses the bridge gateway
(10.244.i.1), to a pod on another node its InternalIP — which is exactly what CoreDNS sees
behind NodeLocal DNSCache. Nothing is ever added to the root namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from tests.lab.netns import Lab, Netns, run

FABRIC_PREFIX = "172.18.0"
FABRIC_LEN = 24
UPSTREAM_IP = f"{FABRIC_PREFIX}.53"
MAX_NODES = 40  # node IPs 172.18.0.10 .. .49 stay clear of the upstream's .53


def node_ip(index: int) -> str:
    return f"{FABRIC_PREFIX}.{10 + index}"


def pod_cidr(index: int) -> str:
    return f"10.244.{index}.0/24"


def pod_gateway(index: int) -> str:
    return f"10.244.{index}.1"


@dataclass
class NodeNet:
    """One node's network namespace and addresses."""

    name: str
    index: int
    ns: Netns
    node_ip: str
    pod_cidr: str
    gateway: str


class Topology:
    """Builds and tears down the network of one scenario inside a ``Lab``."""

    def __init__(self, lab: Lab, node_names: Sequence[str]) -> None:
        if not 1 <= len(node_names) <= MAX_NODES:
            raise ValueError(f"a scenario has 1..{MAX_NODES} nodes, not {len(node_names)}")
        self.lab = lab
        self.node_names = list(node_names)
        self.nodes: dict[str, NodeNet] = {}
        self.fabric: Netns | None = None
        self.upstream: Netns | None = None
        self.upstream_ip = UPSTREAM_IP

    def build(self) -> None:
        self.fabric = self.lab.netns("fabric")
        self.lab.bridge(self.fabric, "fabric0")
        self.fabric.ip("link", "set", "fabric0", "address", "02:42:ac:12:00:01")
        for index, name in enumerate(self.node_names):
            ns = self.lab.netns(f"node{index}")
            self.lab.attach(self.fabric, "fabric0", ns, [f"{node_ip(index)}/{FABRIC_LEN}"])
            self.lab.bridge(ns, "cni0", f"{pod_gateway(index)}/24")
            # A Linux bridge takes the lowest MAC of its ports unless given one, so a pod coming
            # or going would change the gateway's MAC under every other pod's ARP cache (the
            # bridge CNI plugin pins it for the same reason).
            ns.ip("link", "set", "cni0", "address", f"02:42:0a:f4:{index:02x}:01")
            ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.nodes[name] = NodeNet(name, index, ns, node_ip(index), pod_cidr(index), pod_gateway(index))
        self.upstream = self.lab.netns("upstream")
        self.lab.attach(self.fabric, "fabric0", self.upstream, [f"{UPSTREAM_IP}/{FABRIC_LEN}"])
        for node in self.nodes.values():
            for other in self.nodes.values():
                if other is not node:
                    node.ns.ip("route", "add", other.pod_cidr, "via", other.node_ip)
            self.upstream.ip("route", "add", node.pod_cidr, "via", node.node_ip)

    def add_pod(self, role: str, node: str, ip: str) -> Netns:
        """A pod network namespace plugged into ``node``'s bridge with address ``ip``."""
        net = self.nodes[node]
        ns = self.lab.netns(role)
        try:
            self.lab.attach(net.ns, "cni0", ns, [f"{ip}/24"], gateway=net.gateway)
        except Exception:
            self.remove_pod(ns)
            raise
        return ns

    def remove_pod(self, ns: Netns) -> None:
        """Kill what runs in ``ns`` and delete it (its veth and bridge port go with it)."""
        for pid in run(["ip", "netns", "pids", ns.name], check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", ns.name], check=False)
        with contextlib.suppress(ValueError):
            self.lab.namespaces.remove(ns)

    def add_node_local_address(self, node: str, address: str) -> None:
        """Put NodeLocal DNSCache's link-local address on a dummy link in the node namespace.

        node-local-dns does the same (interface ``nodelocaldns``); pods reach it through their
        default route to the bridge gateway, so the packets arrive with the pod's own IP.
        """
        ns = self.nodes[node].ns
        if ns.run("ip", "link", "add", "nodelocaldns", "type", "dummy", check=False).returncode:
            # No dummy driver in this kernel: a bridge without ports holds a local address
            # just as well (the kernel adds the local route whatever the carrier).
            ns.ip("link", "add", "nodelocaldns", "type", "bridge")
        ns.ip("addr", "add", f"{address}/32", "dev", "nodelocaldns")
        ns.ip("link", "set", "nodelocaldns", "up")
