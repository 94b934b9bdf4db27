"""The agent's hot loop over ring blocks gives exactly what the general path gives.

A fake TPACKET_V3 block (headers laid out as the kernel writes them) carries a mix of
packets: UDP over IPv4 and IPv6 (the fast path), TCP and IPv4 with options (the general
path), duplicates across interfaces, loopback's outgoing copies, and junk.
"""

from __future__ import annotations

import os

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6

from kubectl_dnstrace.agent.capture import PKT_HDR
from kubectl_dnstrace.agent.filters import DnsFilter
from kubectl_dnstrace.agent.main import Agent, parse_args
from kubectl_dnstrace.agent.output import Output

C4, S4, C6, S6 = "10.244.0.101", "10.244.0.53", "fd00:244::101", "fd00:244::53"


def q(name, ident, qtype="A"):
    return DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype=qtype))


def r(name, ident, rcode=0, qtype="A"):
    an = [DNSRR(rrname=name, type="A", rdata="10.0.0.1")] if rcode == 0 and qtype == "A" else []
    return DNS(id=ident, qr=1, rd=1, ra=1, rcode=rcode, qd=DNSQR(qname=name, qtype=qtype), an=an)


def packets():
    """(packet, ifindex, pkttype, ts) in capture order."""
    out = []
    ts = 100.0
    names = ["www.example.com", "EVIL.example.com", "x.evil.example.com", "notevil.example.com",
             "api.lab.test", "nope.example.com"]
    for i, name in enumerate(names):
        ts += 0.01
        up = bytes(IP(src=C4, dst=S4) / UDP(sport=30000 + i, dport=53) / q(name, i))
        down = bytes(IP(src=S4, dst=C4) / UDP(sport=53, dport=30000 + i) / r(name, i, 3 if "nope" in name else 0))
        out += [(up, 2, 0, ts), (up, 3, 4, ts + 0.00001), (down, 3, 0, ts + 0.001), (down, 2, 4, ts + 0.00101)]
        up6 = bytes(IPv6(src=C6, dst=S6) / UDP(sport=31000 + i, dport=53) / q(name, 100 + i, "AAAA"))
        down6 = bytes(IPv6(src=S6, dst=C6) / UDP(sport=53, dport=31000 + i) / r(name, 100 + i, qtype="AAAA"))
        out += [(up6, 2, 0, ts + 0.002), (down6, 2, 4, ts + 0.003)]
        lo = bytes(IP(src=S4, dst=S4) / UDP(sport=32000 + i, dport=53) / q(name, 200 + i))
        out += [(lo, 1, 4, ts + 0.004), (lo, 1, 0, ts + 0.004)]
    tcpq = q("tcp.example.com", 300)
    framed = len(bytes(tcpq)).to_bytes(2, "big") + bytes(tcpq)
    out.append((bytes(IP(src=C4, dst=S4) / TCP(sport=40000, dport=53, seq=1, flags="PA") / framed), 2, 0, ts + 0.1))
    out.append((bytes(IP(src=C4, dst=S4, options=[IPOption_RR()]) / UDP(sport=40001, dport=53) / q("opt.example.com", 301)), 2, 0, ts + 0.2))
    out.append((bytes(IP(src=C4, dst=S4) / UDP(sport=40002, dport=53) / b"\x00\x01\x00"), 2, 0, ts + 0.3))
    return out


def ring(items):
    buf = bytearray(sum((80 + len(p) + 15) // 16 * 16 for p, *_ in items))
    pos = 0
    for p, ifindex, pkttype, ts in items:
        nxt = (80 + len(p) + 15) // 16 * 16
        sec = int(ts)
        PKT_HDR.pack_into(buf, pos, nxt, sec, round((ts - sec) * 1e9), len(p), 80, ifindex, pkttype)
        buf[pos + 80:pos + 80 + len(p)] = p
        pos += nxt
    return bytes(buf)


def agent(args, domains=(), rcodes=()):
    out = Output(os.open(os.devnull, os.O_WRONLY))
    a = Agent(parse_args(args), out, DnsFilter(domains, rcodes=rcodes))
    a._only_ifindex = -1  # several interfaces, as in a node's namespace
    a.capture.iface_name = lambda ifkey: f"if{ifkey}"
    return a, out


def records(out):
    import json

    lines = out._lines
    return [{k: v for k, v in json.loads(line).items() if k != "seq"} for line in lines]


@pytest.mark.parametrize(("domains", "rcodes"), [((), ()), (("evil.example.com",), ()),
                                                  (("example.com",), ("NXDOMAIN",))])
def test_hot_loop_equals_general_path(domains, rcodes):
    items = packets()
    fast, fast_out = agent(["--max-rate", "0"], domains, rcodes)
    fast.run_block(ring(items), 0, len(items))
    slow, slow_out = agent(["--max-rate", "0"], domains, rcodes)
    for p, ifindex, pkttype, ts in items:
        slow.count_handle(p, round(ts, 9), ifindex, pkttype)
    got, want = records(fast_out), records(slow_out)
    assert [(g["qname"], g["qr"]) for g in got] == [(w["qname"], w["qr"]) for w in want]
    for g, w in zip(got, want, strict=True):
        assert g["ts"] == pytest.approx(w["ts"], abs=1e-6)
        assert {k: v for k, v in g.items() if k != "ts"} == {k: v for k, v in w.items() if k != "ts"}
    assert fast.seen == slow.seen == len(items)
    if not domains:
        # Per name: IPv4 and IPv6 query and response once each, the loopback query once;
        # then the TCP query and the query with IP options. The junk is dropped.
        assert len(got) == 6 * 5 + 1 + 1
    elif not rcodes:
        assert {g["qname"] for g in got} == {"EVIL.example.com", "x.evil.example.com"}
    else:
        assert [(g["qname"], g["rcode"]) for g in got] == [("nope.example.com", "NXDOMAIN")]


def test_hot_loop_tallies_equal_general_tallies():
    items = [i for i in packets() if i[0][9:10] == b"\x11" or i[0][0] >> 4 == 6]
    fast, _ = agent(["--max-rate", "1"])
    fast.volume.aggregating = True
    fast.volume._agg_start = 0.0
    fast.run_block(ring(items), 0, len(items))
    slow, _ = agent(["--max-rate", "1"])
    slow.volume.aggregating = True
    slow.volume._agg_start = 0.0
    for p, ifindex, pkttype, ts in items:
        slow.count_handle(p, ts, ifindex, pkttype)
    a = fast.volume.take(1000.0, fast.text_key)
    b = slow.volume.take(1000.0, slow.text_key)
    key = lambda g: (g["client"], g["qname"], g["qtype"], str(g["rcode"]))  # noqa: E731
    assert sorted(a["groups"], key=key) == sorted(b["groups"], key=key)
    assert a["total"] == b["total"] > 0
    assert {"client": C4, "qname": "evil.example.com", "qtype": "A", "rcode": "NOERROR", "count": 1} in a["groups"]


def test_hot_loop_tallies_stay_within_the_group_table():
    """Distinct names at any rate: the interval's table holds at most max_keys groups, the
    rest are counted (ungrouped) and make up the total."""
    items = []
    for i in range(50):
        up = bytes(IP(src=C4, dst=S4) / UDP(sport=30000 + i, dport=53) / q(f"n{i}.example.com", i))
        items.append((up, 2, 0, 100.0 + i * 0.001))
    a, _ = agent(["--max-rate", "1"])
    a.volume.max_keys = 10
    a.volume.aggregating = True
    a.volume._agg_start = 0.0
    a.run_block(ring(items), 0, len(items))
    assert len(a.volume.raw) == 10 and a.volume.ungrouped == 40
    rec = a.volume.take(1000.0, a.text_key)
    assert rec["total"] == 50 and rec["ungrouped"] == 40 and len(rec["groups"]) == 10
    assert a.stats_record()["ungrouped"] == 40
