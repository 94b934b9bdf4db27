"""Encrypted DNS attempts: connection openings to DNS over TLS (TCP 853) and to well-known
public DNS-over-HTTPS/TLS resolvers on 443. Stdlib only, python3 >= 3.8.

Why from the SYN alone: no peer of the capture reports these lookups (CoreDNS never sees
them, the payload is encrypted), but the client's first TCP segment says who opened a
connection to what, and that is the question a responder asks ("which pod talks DoH to
1.1.1.1?"). No payload is read: the kernel filter admits only SYNs without ACK to those
ports (and, for 443, to those addresses), so the agent sees one packet per attempt.

The same SYN can be captured more than once in a node's namespace (the pod's veth, the
bridge) and is retransmitted when the peer does not answer (1 s, 3 s, 7 s later, the same
initial sequence number): it is reported once per (client, client port, sequence number)
within a minute. Reports are capped per second (a SYN flood to 853 must not flood the pod
log); what the cap held back is counted on the next record as ``suppressed``.
"""

import socket
import struct

from kubectl_dnstrace import protocol
from kubectl_dnstrace.agent.capture import (
    _JEQ,
    _JSET,
    _LD_B_ABS,
    _LD_H_ABS,
    _LD_H_IND,
    _LDX_B_MSH,
    _RET,
    _SKF_AD_PROTOCOL,
    ETH_P_IP,
    ETH_P_IPV6,
    SNAPLEN,
    _assemble,
)
from kubectl_dnstrace.agent.dedupe import Deduper

DOT_PORT = 853
DOH_PORT = 443

# Public resolvers that answer DNS over HTTPS (and DoT) on their anycast addresses. The list
# is a starting point, overridable with --doh-resolvers FILE on the kubectl side; DoH to an
# arbitrary web server cannot be told from HTTPS by a SYN.
PUBLIC_RESOLVERS = (
    # Cloudflare (1.1.1.1, malware/family filtering variants)
    "1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3",
    "2606:4700:4700::1111", "2606:4700:4700::1001", "2606:4700:4700::1112",
    "2606:4700:4700::1002", "2606:4700:4700::1113", "2606:4700:4700::1003",
    # Google Public DNS
    "8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844",
    # Quad9
    "9.9.9.9", "149.112.112.112", "9.9.9.10", "149.112.112.10", "9.9.9.11", "149.112.112.11",
    "2620:fe::fe", "2620:fe::9", "2620:fe::10", "2620:fe::fe:10", "2620:fe::11",
    "2620:fe::fe:11",
    # OpenDNS (Cisco Umbrella)
    "208.67.222.222", "208.67.220.220", "208.67.222.123", "208.67.220.123",
    "2620:119:35::35", "2620:119:53::53",
    # AdGuard DNS
    "94.140.14.14", "94.140.15.15", "94.140.14.15", "94.140.15.16",
    "2a10:50c0::ad1:ff", "2a10:50c0::ad2:ff",
    # CleanBrowsing, Mullvad, Control D, DNS.SB
    "185.228.168.9", "185.228.169.9", "2a0d:2a00:1::2", "2a0d:2a00:2::2",
    "194.242.2.2", "2a07:e340::2",
    "76.76.2.0", "76.76.10.0", "2606:1a40::", "2606:1a40:1::",
    "185.222.222.222", "45.11.45.11", "2a09::", "2a11::",
)

# Addresses compared in the kernel; beyond these the filter admits every SYN to 443 of that
# family and the set below decides (classic BPF jumps reach at most 255 instructions).
KERNEL_V4_MAX = 200
KERNEL_V6_MAX = 300
RATE_PER_SECOND = 50
REPEAT_WINDOW = 60.0

_LD_W_ABS = 0x20
_LD_B_IND = 0x50
_AND_K = 0x54
_SYN_ACK = 0x12
_SYN = 0x02


def parse_addresses(texts):
    """Normalised addresses (v4, v6) from text; a bad one raises ValueError naming it."""
    v4, v6 = [], []
    for text in texts:
        t = text.strip()
        try:
            v4.append(socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, t)))
            continue
        except OSError:
            pass
        try:
            v6.append(socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, t)))
        except OSError:
            raise ValueError("not an IP address: %r" % text) from None
    return v4, v6


def capture_filter(addresses=PUBLIC_RESOLVERS, port=53):
    """The kernel filter with encrypted-DNS attempts: UDP or TCP to or from ``port`` as in
    ``capture.port53_filter``, plus TCP SYNs without ACK to 853, and to 443 when the
    destination is one of ``addresses``. Every branch has its own accept and drop returns so
    that no jump is longer than classic BPF allows, whatever the length of the list."""
    v4, v6 = parse_addresses(addresses)
    prog = [
        (_LD_H_ABS, _SKF_AD_PROTOCOL, 0, 0),
        (_JEQ, ETH_P_IP, 0, "v6"),
        (_LD_B_ABS, 9, 0, 0),
        (_JEQ, 17, 0, "v4tcp"),
        (_LD_H_ABS, 6, 0, 0),
        (_JSET, 0x1FFF, "drop4", 0),
        (_LDX_B_MSH, 0, 0, 0),
        (_LD_H_IND, 0, 0, 0),
        (_JEQ, port, "acc4", 0),
        (_LD_H_IND, 2, 0, 0),
        (_JEQ, port, "acc4", "drop4"),
        "v4tcp",
        (_JEQ, 6, 0, "drop4"),
        (_LD_H_ABS, 6, 0, 0),
        (_JSET, 0x1FFF, "drop4", 0),
        (_LDX_B_MSH, 0, 0, 0),
        (_LD_H_IND, 0, 0, 0),
        (_JEQ, port, "acc4", 0),
        (_LD_H_IND, 2, 0, 0),
        (_JEQ, port, "acc4", 0),
        (_LD_B_IND, 13, 0, 0),
        (_AND_K, _SYN_ACK, 0, 0),
        (_JEQ, _SYN, 0, "drop4"),
        (_LD_H_IND, 2, 0, 0),
        (_JEQ, DOT_PORT, "acc4", 0),
        (_JEQ, DOH_PORT, "v4doh", "drop4"),
        "acc4",
        (_RET, SNAPLEN, 0, 0),
        "drop4",
        (_RET, 0, 0, 0),
        "v4doh",
    ]
    if len(v4) > KERNEL_V4_MAX:
        prog.append((_RET, SNAPLEN, 0, 0))
    else:
        prog.append((_LD_W_ABS, 16, 0, 0))
        for i, addr in enumerate(v4):
            last = i == len(v4) - 1
            prog.append((_JEQ, _u32(socket.inet_aton(addr)), "acc4b", "drop4b" if last else 0))
        prog += ["acc4b", (_RET, SNAPLEN, 0, 0), "drop4b", (_RET, 0, 0, 0)]
    prog += [
        "v6",
        (_JEQ, ETH_P_IPV6, 0, "drop6"),
        (_LD_B_ABS, 6, 0, 0),
        (_JEQ, 17, "v6ports", 0),
        (_JEQ, 6, "v6tcp", 0),
        (_JEQ, 0, "acc6", 0),  # hop-by-hop options
        (_JEQ, 43, "acc6", 0),  # routing
        (_JEQ, 44, "acc6", 0),  # fragment
        (_JEQ, 60, "acc6", "drop6"),  # destination options
        "v6ports",
        (_LD_H_ABS, 40, 0, 0),
        (_JEQ, port, "acc6", 0),
        (_LD_H_ABS, 42, 0, 0),
        (_JEQ, port, "acc6", "drop6"),
        "v6tcp",
        (_LD_H_ABS, 40, 0, 0),
        (_JEQ, port, "acc6", 0),
        (_LD_H_ABS, 42, 0, 0),
        (_JEQ, port, "acc6", 0),
        (_LD_B_ABS, 53, 0, 0),
        (_AND_K, _SYN_ACK, 0, 0),
        (_JEQ, _SYN, 0, "drop6"),
        (_LD_H_ABS, 42, 0, 0),
        (_JEQ, DOT_PORT, "acc6", 0),
        (_JEQ, DOH_PORT, "v6doh", "drop6"),
        "acc6",
        (_RET, SNAPLEN, 0, 0),
        "drop6",
        (_RET, 0, 0, 0),
        "v6doh",
    ]
    if len(v6) > KERNEL_V6_MAX:
        prog.append((_RET, SNAPLEN, 0, 0))
    else:
        for i, addr in enumerate(v6):
            words = struct.unpack("!IIII", socket.inet_pton(socket.AF_INET6, addr))
            nxt = "n6_%d" % i
            for j in range(4):
                prog += [(_LD_W_ABS, 24 + 4 * j, 0, 0), (_JEQ, words[j], 0, nxt)]
            prog += [(_RET, SNAPLEN, 0, 0), nxt]
        prog.append((_RET, 0, 0, 0))
    program = _assemble(prog)
    for _op, jt, jf, _k in program:
        if not (0 <= jt <= 255 and 0 <= jf <= 255):  # cannot happen with the limits above
            raise ValueError("capture filter jump out of range")
    return program


def _u32(raw):
    return struct.unpack("!I", raw)[0]


class EncryptedDnsWatcher(object):
    """``inspect(packet, ts, iface)`` returns an ``encrypted-dns`` record (seq 0: the output
    numbers it) for a TCP SYN to 853 or to a listed resolver on 443, else None."""

    __slots__ = ("_held_back", "_second", "_sent", "_v4", "_v6", "deduper", "program", "rate",
                 "reported", "suppressed")

    def __init__(self, addresses=PUBLIC_RESOLVERS, rate=RATE_PER_SECOND):
        v4, v6 = parse_addresses(addresses)
        self._v4 = frozenset(socket.inet_aton(a) for a in v4)
        self._v6 = frozenset(socket.inet_pton(socket.AF_INET6, a) for a in v6)
        self.deduper = Deduper(window=REPEAT_WINDOW, max_entries=8192)
        self.rate = rate
        self._second = -1
        self._sent = 0
        self._held_back = 0
        self.reported = 0
        self.suppressed = 0
        self.program = None  # the kernel filter for these addresses (encrypted_watcher sets it)

    def inspect(self, packet, ts, iface=""):
        if len(packet) < 20:
            return None
        version = packet[0] >> 4
        if version == 4:
            ihl = (packet[0] & 0x0F) * 4
            if packet[9] != 6 or (packet[6] & 0x1F) or packet[7] or len(packet) < ihl + 14:
                return None
            src, dst, family = packet[12:16], packet[16:20], socket.AF_INET
            known = self._v4
            off = ihl
        elif version == 6:
            if len(packet) < 54 or packet[6] != 6:
                return None
            src, dst, family = packet[8:24], packet[24:40], socket.AF_INET6
            known = self._v6
            off = 40
        else:
            return None
        sport, dport, seq = struct.unpack_from("!HHI", packet, off)
        if packet[off + 13] & _SYN_ACK != _SYN:
            return None
        if dport == DOT_PORT:
            kind = "dot"
        elif dport == DOH_PORT and dst in known:
            kind = "doh"
        else:
            return None
        if self.deduper.seen_key(hash((src, sport, seq)), ts):
            return None
        second = int(ts)
        if second != self._second:
            self._second, self._sent = second, 0
        if self.rate and self._sent >= self.rate:
            self.suppressed += 1
            self._held_back += 1
            return None
        self._sent += 1
        self.reported += 1
        extra = {}
        if self._held_back:
            extra["suppressed"] = self._held_back
            self._held_back = 0
        return protocol.encrypted_dns(
            0, ts, kind, socket.inet_ntop(family, src), sport, socket.inet_ntop(family, dst),
            dport, iface=iface, **extra)


def encrypted_watcher(opts):
    """The watcher the agent's options ask for (``--encrypted-dns``), None without; it
    carries the kernel filter that admits its SYNs (``program``)."""
    if not getattr(opts, "encrypted_dns", False):
        return None
    addresses = opts.doh_resolver if opts.doh_resolver else PUBLIC_RESOLVERS
    watcher = EncryptedDnsWatcher(addresses)
    watcher.program = capture_filter(addresses)
    return watcher
