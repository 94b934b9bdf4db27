"""The capture agent on real packets: dnsmasq in a DNS namespace, dig clients on a bridge,
the agent started inside a namespace exactly as the debug container would start it.

Every test asserts exactly what the agent reported; the lab fixture removes namespaces and
processes even when a test fails.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP

from kubectl_dnstrace import protocol
from kubectl_dnstrace.agent.main import encode_domains
from tests.conftest import IN_CI
from tests.lab import dnslab
from tests.lab.dnslab import dig

pytestmark = pytest.mark.timeout(120)

DNS4 = "10.244.0.53"
DNS6 = "fd00:244::53"


class AgentRun:
    """An agent process in a namespace; ``stop()`` ends it and returns its records."""

    def __init__(self, ns, args, tmp_path: Path, wrapper=(), python="python3"):
        self.stop_file = tmp_path / f"stop-{time.monotonic_ns()}"
        argv = [*wrapper, python, "-m", "kubectl_dnstrace.agent", "--stop-file", str(self.stop_file), *args]
        self.proc = ns.popen(argv, env=dnslab.agent_env())
        self.records: list[dict] = []
        self.stderr = ""
        self.returncode: int | None = None

    def wait_hello(self, timeout=10.0) -> dict:
        """Read the hello line: after it the capture is running."""
        line = self.proc.stdout.readline()
        assert line, f"agent wrote nothing: {self.proc.stderr.read().decode()}"
        rec = protocol.decode(line)
        assert rec["type"] == "hello"
        self.records.append(rec)
        return rec

    def finish(self, timeout=15.0) -> list[dict]:
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr = err.decode()
        self.returncode = self.proc.returncode
        self.records += [protocol.decode(line) for line in out.splitlines()]
        check_stream(self.records)
        return self.records

    def stop(self) -> list[dict]:
        time.sleep(0.3)  # let the ring's block timeout hand over the last packets
        self.stop_file.touch()
        return self.finish()

    def dns(self) -> list[dict]:
        return [r for r in self.records if r["type"] == "dns"]


def check_stream(records: list[dict]) -> None:
    """hello first, bye last, seq strictly increasing — on every run."""
    assert records[0]["type"] == "hello"
    assert records[-1]["type"] == "bye"
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(set(seqs)), seqs


def brief(rec: dict) -> tuple:
    base = (rec["qr"], rec["proto"], rec["src"], rec["dst"], rec["qname"], rec["qtype"])
    if rec["qr"] == "response":
        return (*base, rec["rcode"], tuple(sorted(rec["answers"])))
    return base


@pytest.fixture
def dlab(lab, tmp_path):
    d = dnslab.dns_lab(lab, tmp_path)
    client, ip4, ip6 = d.add_client()
    return d, client, ip4, ip6


def test_udp_tcp_ipv6_exactly(dlab, tmp_path):
    d, client, ip4, ip6 = dlab
    agent = AgentRun(d.dns, ["--duration", "60"], tmp_path)
    hello = agent.wait_hello()
    assert hello["interfaces"] == ["lo", "eth0"]
    assert hello["capture"] == "tpacket_v3"
    assert dig(client, DNS4, "www.example.com").returncode == 0
    assert dig(client, DNS4, "nope.example.com").returncode == 0
    assert dig(client, DNS6, "www.example.com", "AAAA").returncode == 0
    assert dig(client, DNS4, "alias.example.com", tcp=True).returncode == 0
    assert dig(client, DNS6, "txt.example.com", "TXT", tcp=True).returncode == 0
    records = agent.stop()
    assert agent.returncode == 0 and agent.stderr == ""
    assert records[-1]["reason"] == "stop-file"
    events = agent.dns()
    assert [brief(e) for e in events] == [
        ("query", "udp", ip4, DNS4, "www.example.com", "A"),
        ("response", "udp", DNS4, ip4, "www.example.com", "A", "NOERROR", ("10.0.0.7", "10.0.0.8")),
        ("query", "udp", ip4, DNS4, "nope.example.com", "A"),
        ("response", "udp", DNS4, ip4, "nope.example.com", "A", "NXDOMAIN", ()),
        ("query", "udp", ip6, DNS6, "www.example.com", "AAAA"),
        ("response", "udp", DNS6, ip6, "www.example.com", "AAAA", "NOERROR", ("2001:db8::7",)),
        ("query", "tcp", ip4, DNS4, "alias.example.com", "A"),
        ("response", "tcp", DNS4, ip4, "alias.example.com", "A", "NOERROR",
         ("10.0.0.7", "10.0.0.8", "www.example.com")),
        ("query", "tcp", ip6, DNS6, "txt.example.com", "TXT"),
        ("response", "tcp", DNS6, ip6, "txt.example.com", "TXT", "NOERROR", ('"hello lab"',)),
    ]
    for q, r in zip(events[::2], events[1::2], strict=True):
        assert (q["id"], q["sport"], q["dport"]) == (r["id"], r["dport"], r["sport"])
        assert r["latency_ms"] is not None and 0 <= r["latency_ms"] < 1000
        assert q["iface"] == r["iface"] == "eth0"
    # Every reported message is one dnsmasq logged.
    log = "\n".join(d.server.log_lines())
    assert log.count("query[A] www.example.com from 10.244.0.101") == 1
    assert log.count("query[AAAA] www.example.com from fd00:244::101") == 1
    stats = [r for r in records if r["type"] == "stats"][-1]
    assert stats["emitted"] == 10 and stats["matched"] == 10 and stats["drops"] == 0


def test_domain_filter_on_label_boundaries(dlab, tmp_path):
    d, client, _, _ = dlab
    agent = AgentRun(d.dns, ["--domain", "evil.example.com"], tmp_path)
    agent.wait_hello()
    for name in ("notevil.example.com", "evil.example.com", "www.example.com", "X.Evil.Example.Com"):
        assert dig(client, DNS4, name).returncode == 0
    agent.stop()
    assert [(e["qr"], e["qname"], e.get("answers")) for e in agent.dns()] == [
        ("query", "evil.example.com", None),
        ("response", "evil.example.com", ["10.66.6.6"]),
        ("query", "X.Evil.Example.Com", None),
        ("response", "X.Evil.Example.Com", ["10.66.6.7"]),
    ]
    assert agent.records[0]["filters"]["domains"] == ["evil.example.com"]


def test_domain_file_qtype_and_rcode_filters(dlab, tmp_path):
    d, client, _, _ = dlab
    names = tmp_path / "names.txt"
    names.write_text("# watched\nlab.test\nnope.example.com  # typo squat\n")
    agent = AgentRun(d.dns, ["--domain-file", str(names), "--rcode", "NXDOMAIN"], tmp_path)
    agent.wait_hello()
    dig(client, DNS4, "api.lab.test")
    dig(client, DNS4, "missing.lab.test")
    dig(client, DNS4, "nope.example.com")
    dig(client, DNS4, "other.example.com")
    agent.stop()
    assert [(e["qr"], e["qname"], e["rcode"]) for e in agent.dns()] == [
        ("response", "missing.lab.test", "NXDOMAIN"),
        ("response", "nope.example.com", "NXDOMAIN"),
    ]
    for e in agent.dns():
        assert e["latency_ms"] is not None

    agent = AgentRun(d.dns, ["--qtype", "AAAA"], tmp_path)
    agent.wait_hello()
    dig(client, DNS4, "www.example.com", "A")
    dig(client, DNS4, "www.example.com", "AAAA")
    agent.stop()
    assert [(e["qr"], e["qtype"]) for e in agent.dns()] == [("query", "AAAA"), ("response", "AAAA")]


def test_thousands_of_names_in_container_args(dlab, tmp_path):
    d, client, _, _ = dlab
    names = [f"n{i}.watch.example" for i in range(5000)] + ["evil.example.com"]
    blob = encode_domains(names)
    agent = AgentRun(d.dns, ["--domains-z", blob], tmp_path)
    assert agent.wait_hello()["filters"]["domain_count"] == 5001
    for name in ("www.example.com", "evil.example.com", "notevil.example.com"):
        dig(client, DNS4, name)
    agent.stop()
    assert [(e["qr"], e["qname"]) for e in agent.dns()] == [
        ("query", "evil.example.com"), ("response", "evil.example.com")]


def _query(name, ident):
    return bytes(DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype="A")))


def test_tcp_split_and_several_messages_per_segment(dlab, tmp_path):
    d, client, _, _ = dlab
    agent = AgentRun(d.dns, [], tmp_path)
    agent.wait_hello()
    one = _query("www.example.com", 101)
    framed = len(one).to_bytes(2, "big") + one
    # One message in three writes, cut inside the length prefix and inside the name.
    replies = dnslab.tcp_exchange(client, DNS4, [framed[:1], framed[1:9], framed[9:]], 1)
    assert len(replies) == 1
    # Three messages in one write.
    msgs = [_query(n, i) for i, n in ((201, "a.lab.test"), (202, "api.lab.test"), (203, "evil.example.com"))]
    blob = b"".join(len(m).to_bytes(2, "big") + m for m in msgs)
    assert len(dnslab.tcp_exchange(client, DNS4, [blob], 3)) == 3
    agent.stop()
    queries = [(e["id"], e["qname"]) for e in agent.dns() if e["qr"] == "query"]
    assert queries == [(101, "www.example.com"), (201, "a.lab.test"), (202, "api.lab.test"),
                       (203, "evil.example.com")]
    responses = sorted((e["id"], e["rcode"]) for e in agent.dns() if e["qr"] == "response")
    assert responses == [(101, "NOERROR"), (201, "NXDOMAIN"), (202, "NOERROR"), (203, "NOERROR")]
    assert all(e["proto"] == "tcp" for e in agent.dns())


def test_node_namespace_once_per_message_and_late_clients(dlab, tmp_path):
    """In the node's namespace a query crosses the client's veth, the bridge and the DNS
    pod's veth; a pod started after the capture brings a new veth that is captured too."""
    d, client, ip4, _ = dlab
    agent = AgentRun(d.node, [], tmp_path)
    hello = agent.wait_hello()
    assert "br0" in hello["interfaces"]
    dig(client, DNS4, "www.example.com")
    late, late4, late6 = d.add_client("late")  # a veth that did not exist at start
    time.sleep(0.2)
    dig(late, DNS4, "evil.example.com")
    dig(late, DNS6, "www.example.com", "AAAA", tcp=True)
    dig(d.node, DNS4, "api.lab.test")  # from the node itself: out of br0, then the veth
    subprocess.run(["ip", "netns", "del", client.name], check=True)  # a pod goes: its veth vanishes
    time.sleep(0.2)
    dig(late, DNS4, "txt.example.com", "TXT")
    agent.stop()
    assert agent.returncode == 0 and agent.stderr == ""
    got = [(e["qr"], e["proto"], e["src"], e["qname"]) for e in agent.dns()]
    assert got == [
        ("query", "udp", ip4, "www.example.com"),
        ("response", "udp", DNS4, "www.example.com"),
        ("query", "udp", late4, "evil.example.com"),
        ("response", "udp", DNS4, "evil.example.com"),
        ("query", "tcp", late6, "www.example.com"),
        ("response", "tcp", DNS6, "www.example.com"),
        ("query", "udp", "10.244.0.1", "api.lab.test"),
        ("response", "udp", DNS4, "api.lab.test"),
        ("query", "udp", late4, "txt.example.com"),
        ("response", "udp", DNS4, "txt.example.com"),
    ]
    stats = [r for r in agent.records if r["type"] == "stats"][-1]
    # Every UDP message was seen at least twice (TCP copies already end in reassembly).
    assert stats["duplicates"] >= 6
    ifaces = {e["iface"] for e in agent.dns()}
    assert "br0" in ifaces and len(ifaces) >= 2


def test_loopback_reported_once_and_interface_option(dlab, tmp_path):
    d, client, _, _ = dlab
    agent = AgentRun(d.dns, [], tmp_path)
    agent.wait_hello()
    dig(d.dns, DNS4, "www.example.com")  # to its own address: over lo
    agent.stop()
    assert [(e["qr"], e["iface"]) for e in agent.dns()] == [("query", "lo"), ("response", "lo")]

    agent = AgentRun(d.dns, ["--interface", "eth0"], tmp_path)
    assert agent.wait_hello()["interfaces"] == ["eth0"]
    dig(d.dns, DNS4, "www.example.com")
    dig(client, DNS4, "api.lab.test")
    agent.stop()
    assert [(e["qname"], e["iface"]) for e in agent.dns()] == [("api.lab.test", "eth0")] * 2


def test_recvfrom_fallback_reports_the_same(dlab, tmp_path):
    d, client, _, _ = dlab
    agent = AgentRun(d.dns, ["--no-ring"], tmp_path)
    assert agent.wait_hello()["capture"] == "recvfrom"
    dig(client, DNS4, "www.example.com")
    dig(client, DNS6, "nope.example.com", tcp=True)
    agent.stop()
    assert [(e["qr"], e["proto"], e["qname"], e.get("rcode"), e["iface"]) for e in agent.dns()] == [
        ("query", "udp", "www.example.com", None, "eth0"),
        ("response", "udp", "www.example.com", "NOERROR", "eth0"),
        ("query", "tcp", "nope.example.com", None, "eth0"),
        ("response", "tcp", "nope.example.com", "NXDOMAIN", "eth0"),
    ]


def test_pcap_option_carries_the_ip_packet(dlab, tmp_path):
    d, client, ip4, _ = dlab
    agent = AgentRun(d.dns, ["--pcap", "--domain", "www.example.com"], tmp_path)
    assert agent.wait_hello()["linktype"] == 101
    dig(client, DNS4, "www.example.com")
    agent.stop()
    q, r = agent.dns()
    pkt = IP(base64.b64decode(q["raw"]))
    assert (pkt.src, pkt[UDP].dport, pkt[DNS].qd[0].qname) == (ip4, 53, b"www.example.com.")
    assert IP(base64.b64decode(r["raw"]))[DNS].an is not None


def test_aggregates_above_the_rate_threshold(dlab, tmp_path):
    d, client, ip4, _ = dlab
    batch = tmp_path / "batch.txt"
    batch.write_text("".join("www.example.com A\n" if i % 2 else "nope.example.com A\n" for i in range(40)))
    agent = AgentRun(d.dns, ["--max-rate", "4"], tmp_path)
    agent.wait_hello()
    client.run("dig", f"@{DNS4}", "+tries=1", "+time=2", "-f", str(batch), timeout=60)
    time.sleep(1.2)
    agent.stop()
    assert len(agent.dns()) == 4
    aggs = [r for r in agent.records if r["type"] == "agg"]
    assert aggs and all(a["threshold"] == 4 for a in aggs)
    modes = [r["mode"] for r in agent.records if r["type"] == "stats"]
    assert modes[0] == "aggregate"  # announced at the switch, before the periodic stats
    counts: dict[tuple, int] = {}
    for a in aggs:
        for g in a["groups"]:
            key = (g["client"], g["qname"], g["qtype"], g["rcode"])
            counts[key] = counts.get(key, 0) + g["count"]
    for e in agent.dns():
        client_ip = e["dst"] if e["qr"] == "response" else e["src"]
        key = (client_ip, e["qname"], e["qtype"], e.get("rcode"))
        counts[key] = counts.get(key, 0) + 1
    assert counts == {
        (ip4, "www.example.com", "A", None): 20,
        (ip4, "www.example.com", "A", "NOERROR"): 20,
        (ip4, "nope.example.com", "A", None): 20,
        (ip4, "nope.example.com", "A", "NXDOMAIN"): 20,
    }


# -- lifecycle --------------------------------------------------------------------------


def test_deadline_ends_with_bye(dlab, tmp_path):
    d, _, _, _ = dlab
    start = time.monotonic()
    agent = AgentRun(d.dns, ["--duration", "1.5", "--stats-interval", "0.5"], tmp_path)
    records = agent.finish(timeout=20)
    elapsed = time.monotonic() - start
    assert agent.returncode == 0 and agent.stderr == ""
    assert records[-1]["reason"] == "deadline"
    assert elapsed >= 1.4 and elapsed < 10
    assert sum(r["type"] == "stats" for r in records) >= 3


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_with_bye(dlab, tmp_path, signum):
    d, client, _, _ = dlab
    agent = AgentRun(d.dns, [], tmp_path)
    agent.wait_hello()
    dig(client, DNS4, "www.example.com")
    time.sleep(0.3)
    # ip netns exec execs the agent, so the child is the agent itself.
    os.kill(agent.proc.pid, signum)
    records = agent.finish()
    assert agent.returncode == 0 and agent.stderr == ""
    assert records[-1]["reason"] == "signal"
    assert len(agent.dns()) == 2


def test_without_cap_net_raw_a_plain_error(dlab, tmp_path):
    d, _, _, _ = dlab
    agent = AgentRun(d.dns, [], tmp_path, wrapper=("setpriv", "--bounding-set", "-net_raw",
                                                   "--inh-caps", "-net_raw", "--"))
    records = agent.finish()
    assert agent.returncode == 3
    assert agent.stderr == ""  # no traceback, nothing outside the protocol
    assert [r["type"] for r in records] == ["hello", "error", "bye"]
    assert "lacks CAP_NET_RAW" in records[1]["message"]
    assert records[-1]["reason"] == "error"


def test_bad_arguments_are_an_error_record(tmp_path):
    res = subprocess.run(["python3", "-m", "kubectl_dnstrace.agent", "--qtype", "BOGUS"],
                         env=dnslab.agent_env(), capture_output=True, text=True, timeout=20)
    assert res.returncode == 2 and res.stderr == ""
    records = [protocol.decode(line) for line in res.stdout.splitlines()]
    assert [r["type"] for r in records] == ["hello", "error", "bye"]
    assert "unknown query type 'BOGUS'" in records[1]["message"]


def test_node_namespace_before_and_after_dnat_once(dlab, tmp_path):
    """kube-proxy's DNAT in a node's namespace: the query is seen going to the Service IP
    and again going to the DNS pod; the reply coming from the pod and again, rewritten,
    from the Service IP. One query, one response."""
    if not shutil.which("iptables"):
        msg = "the DNAT test needs iptables (apt-get install iptables)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    d, _, _, _ = dlab
    lab, node = d.lab, d.node
    lab.bridge(node, "br1", "10.244.1.1/24")  # a second pod subnet, routed by the node
    node.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    client = lab.netns("natclient")
    lab.attach(node, "br1", client, ["10.244.1.101/24"], gateway="10.244.1.1")
    for proto in ("udp", "tcp"):
        node.run("iptables", "-t", "nat", "-A", "PREROUTING", "-d", "10.96.0.10/32", "-p", proto,
                 "--dport", "53", "-j", "DNAT", "--to-destination", DNS4)
    agent = AgentRun(node, [], tmp_path)
    agent.wait_hello()
    assert dig(client, "10.96.0.10", "www.example.com").returncode == 0
    assert dig(client, "10.96.0.10", "evil.example.com", tcp=True).returncode == 0
    agent.stop()
    assert [(e["qr"], e["proto"], e["src"], e["dst"], e["qname"]) for e in agent.dns()] == [
        ("query", "udp", "10.244.1.101", "10.96.0.10", "www.example.com"),
        ("response", "udp", DNS4, "10.244.1.101", "www.example.com"),
        ("query", "tcp", "10.244.1.101", "10.96.0.10", "evil.example.com"),
        ("response", "tcp", DNS4, "10.244.1.101", "evil.example.com"),
    ]
    assert all(e["latency_ms"] is not None for e in agent.dns() if e["qr"] == "response")


def test_unknown_interface_is_a_plain_error(dlab, tmp_path):
    d, _, _, _ = dlab
    agent = AgentRun(d.dns, ["--interface", "nope0"], tmp_path)
    records = agent.finish()
    assert agent.returncode == 3 and agent.stderr == ""
    assert [r["type"] for r in records] == ["hello", "error", "bye"]
    assert records[1]["message"] == "no interface named 'nope0' in this network namespace"


def test_kernel_filter_keeps_other_traffic_out(dlab, tmp_path):
    """200 UDP datagrams to other ports never reach the agent: the kernel filter drops them."""
    d, client, _, _ = dlab
    agent = AgentRun(d.dns, ["--stats-interval", "0.5"], tmp_path)
    agent.wait_hello()
    script = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              "for i in range(200): s.sendto(b'x'*40,('10.244.0.53',5353+i%3))\n")
    client.run("python3", "-c", script)
    dig(client, DNS4, "www.example.com")
    agent.stop()
    stats = [r for r in agent.records if r["type"] == "stats"][-1]
    assert len(agent.dns()) == 2
    # The two DNS packets, plus at most a few IPv6 packets with extension headers (MLD),
    # which the filter passes up for user space to decide.
    assert 2 <= stats["seen"] <= 10
