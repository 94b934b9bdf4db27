"""From captured frames to whole DNS messages: link, IP, UDP and TCP, with DNS-over-TCP
reassembly. Stdlib only, python3 >= 3.8 (it runs inside the capture agent).

Used twice: by the live agent (its AF_PACKET socket is SOCK_DGRAM, so every packet already
starts at the IP header: ``decode_ip``) and by ``analyze`` for pcap files of any common link
type (``decode_link``).

Surprises handled here:
- L4 checksums are never checked: on veths the kernel leaves them partial (checksum
  offload), so a checking decoder would drop every locally generated packet.
- IPv4 packets are trimmed to their total length (Ethernet pads short frames).
- Fragmented IP packets are skipped (not reassembled): DNS messages that large are rare
  over UDP (EDNS buffer sizes of 1232 avoid fragmentation) and cannot be decoded
  piecewise; an IPv6 "atomic" fragment (RFC 6946) is a whole packet and is decoded.
- DNS over TCP prefixes every message with a 2-byte length (RFC 1035 4.2.2, RFC 7766); one
  segment may carry several messages and one message may span several segments, and the
  capture may see a segment twice (a veth and its bridge). Each flow keeps a small buffer;
  memory is bounded by a flow limit, a buffer limit and an idle timeout.
"""

import socket
import struct

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

DNS_PORT = 53
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
# IPv6 extension headers walked to reach the transport header (RFC 8200 4.1).
_V6_EXT = (0, 43, 60)
_V6_FRAGMENT = 44
_MAX_V6_EXT = 8

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_UDP_PORTS = struct.Struct("!HHH")
_TCP_HDR = struct.Struct("!HHIIBB")
# An IPv4 header without options and the UDP header after it: total length, flags/fragment
# offset, protocol, addresses, ports, UDP length (version/IHL 0x45: the caller checked it).
_IP4_UDP = struct.Struct("!xxHxxHxB2x4s4sHHH")

_AF_INET6 = socket.AF_INET6
_ntop = socket.inet_ntop
_ntoa = socket.inet_ntoa
ADDR_CACHE_MAX = 65536
# BSD loopback (LINKTYPE_NULL) stores the address family in the writer's byte order, and
# AF_INET6 differs between systems (24 NetBSD/OpenBSD, 28 FreeBSD, 30 macOS, 10 Linux).
_NULL_V6 = (10, 24, 28, 30)

TCP_FLOW_LIMIT = 4096
TCP_BUFFER_LIMIT = 2 + 65535  # the longest DNS message and its length prefix
TCP_BIG_BUFFER = 4096  # above this a flow's buffer is checked against the total budget
TCP_TOTAL_BUDGET = 16 * 1024 * 1024  # bytes held across all flows
TCP_IDLE_SECONDS = 30.0
TCP_MAX_OUT_OF_ORDER = 16
_FIN_RST = 0x05
_SYN = 0x02


class DnsSegment(object):
    """One whole DNS message and where it travelled.

    ``packet`` is the IP packet it arrived in (for TCP, the segment that completed the
    message), kept so pcap output can carry the evidence.
    """

    __slots__ = ("dport", "dst", "packet", "payload", "proto", "sport", "src", "ts")

    def __init__(self, ts, proto, src, sport, dst, dport, payload, packet):
        self.ts = ts
        self.proto = proto
        self.src = src
        self.sport = sport
        self.dst = dst
        self.dport = dport
        self.payload = payload
        self.packet = packet

    def __repr__(self):
        return "DnsSegment(%s %s:%d > %s:%d, %d bytes)" % (
            self.proto, self.src, self.sport, self.dst, self.dport, len(self.payload))


class _Flow(object):
    """Reassembly state of one direction of one TCP connection."""

    __slots__ = ("buf", "held", "last_ts", "next_seq")

    def __init__(self, next_seq, ts):
        self.next_seq = next_seq
        self.buf = b""
        self.held = {}
        self.last_ts = ts


class FrameDecoder(object):
    """Turns frames into DnsSegments; owns the bounded per-flow TCP reassembly state."""

    def __init__(self, flow_limit=TCP_FLOW_LIMIT, idle_seconds=TCP_IDLE_SECONDS,
                 tcp_budget=TCP_TOTAL_BUDGET):
        self.flows = {}
        self.flow_limit = flow_limit
        self.tcp_budget = tcp_budget
        self.idle_seconds = idle_seconds
        self._next_sweep = 0.0
        self.skipped = 0  # frames that were not decodable IP (counted, never raised)
        self._addrs = {}

    # -- link layer -------------------------------------------------------------------
    def decode_link(self, linktype, frame, ts):
        """Decode one frame of a pcap link type; unknown link types yield nothing."""
        if linktype == LINKTYPE_ETHERNET:  # the commonest first: what tcpdump -i eth0 writes
            if frame[12:15] == b"\x08\x00\x45":
                segs = self._udp4(frame, 14, ts)
                if segs is not None:
                    return segs
            off = 12
            while True:
                if len(frame) < off + 2:
                    return []
                etype = (frame[off] << 8) | frame[off + 1]
                off += 2
                if etype in _VLAN_TYPES:
                    off += 2
                    continue
                break
        elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
            return self.decode_ip(frame, ts)
        elif linktype == LINKTYPE_LINUX_SLL:
            if len(frame) < 16:
                return []
            etype = (frame[14] << 8) | frame[15]
            off = 16
        elif linktype == LINKTYPE_LINUX_SLL2:
            if len(frame) < 20:
                return []
            etype = (frame[0] << 8) | frame[1]
            off = 20
        elif linktype == LINKTYPE_NULL:
            if len(frame) < 4:
                return []
            # One of the two end bytes holds the family, whichever the byte order.
            fam = frame[0] | frame[3] if frame[1] == 0 and frame[2] == 0 else -1
            if fam == 2:
                etype = ETH_P_IP
            elif fam in _NULL_V6:
                etype = ETH_P_IPV6
            else:
                return []
            off = 4
        else:
            self.skipped += 1
            return []
        if etype != ETH_P_IP and etype != ETH_P_IPV6:
            return []
        return self.decode_ip(frame[off:], ts)

    # -- network layer ----------------------------------------------------------------
    def _udp4(self, frame, off, ts):
        """The commonest packet — IPv4 without options, unfragmented, UDP — read with one
        ``unpack`` from ``off`` in ``frame``; None for anything else (``decode_ip``
        decides). The result is what ``decode_ip(frame[off:], ts)`` gives."""
        try:
            total, frag, proto, src, dst, sport, dport, ulen = _IP4_UDP.unpack_from(frame, off)
        except struct.error:  # shorter than the two headers
            return None
        if proto != 17 or frag & 0x3FFF or total < 28:
            return None
        if sport != DNS_PORT and dport != DNS_PORT:
            return []
        packet = frame[off:off + total]
        payload = packet[28:ulen + 20] if ulen >= 8 else packet[28:]
        if len(payload) < 12:
            return []
        addrs = self._addrs
        return [DnsSegment(ts, "udp", addrs.get(src) or self._addr(src), sport,
                           addrs.get(dst) or self._addr(dst), dport, payload, packet)]

    def _addr(self, raw):
        if len(self._addrs) >= ADDR_CACHE_MAX:
            self._addrs.clear()
        text = self._addrs[raw] = _ntoa(raw)
        return text

    def decode_ip(self, packet, ts):
        """Decode one packet that starts at its IPv4 or IPv6 header."""
        if len(packet) < 20:
            return []
        if packet[0] == 0x45:
            segs = self._udp4(packet, 0, ts)
            if segs is not None:
                return segs
        version = packet[0] >> 4
        if version == 4:
            ihl = (packet[0] & 0x0F) * 4
            total = (packet[2] << 8) | packet[3]
            if ihl < 20 or total < ihl or len(packet) < ihl + 8:
                return []
            if packet[6] & 0x3F or packet[7]:  # more-fragments flag or a fragment offset
                return []
            if total < len(packet):
                packet = packet[:total]
            proto = packet[9]
            src = packet[12:16]
            dst = packet[16:20]
            family = socket.AF_INET
            off = ihl
        elif version == 6:
            if len(packet) < 48:
                return []
            plen = (packet[4] << 8) | packet[5]
            if plen and 40 + plen < len(packet):
                packet = packet[:40 + plen]
            proto = packet[6]
            off = 40
            hops = 0
            while proto in _V6_EXT or proto == _V6_FRAGMENT:
                hops += 1
                if hops > _MAX_V6_EXT or len(packet) < off + 8:
                    return []
                if proto == _V6_FRAGMENT:
                    # Offset and more-fragments flag: only an unfragmented "atomic" fragment
                    # (RFC 6946) is a whole packet.
                    if (packet[off + 2] << 8 | packet[off + 3]) & 0xFFF9:
                        return []
                    nxt, length = packet[off], 8
                else:
                    nxt, length = packet[off], (packet[off + 1] + 1) * 8
                proto = nxt
                off += length
            src = packet[8:24]
            dst = packet[24:40]
            family = _AF_INET6
        else:
            return []
        if proto == 17:
            if len(packet) < off + 8:
                return []
            sport, dport, ulen = _UDP_PORTS.unpack_from(packet, off)
            if sport != DNS_PORT and dport != DNS_PORT:
                return []
            end = off + ulen if ulen >= 8 else len(packet)
            payload = packet[off + 8:end]
            if len(payload) < 12:
                return []
            return [DnsSegment(ts, "udp", _ntop(family, src), sport, _ntop(family, dst),
                               dport, payload, packet)]
        if proto == 6:
            return self._tcp(packet, off, family, src, dst, ts)
        return []

    # -- TCP --------------------------------------------------------------------------
    def _tcp(self, packet, off, family, src, dst, ts):
        if len(packet) < off + 20:
            return []
        sport, dport, seq, _ack, doff, flags = _TCP_HDR.unpack_from(packet, off)
        if sport != DNS_PORT and dport != DNS_PORT:
            return []
        data = packet[off + (doff >> 4) * 4:]
        key = (src, sport, dst, dport)
        flows = self.flows
        flow = flows.get(key)
        if ts >= self._next_sweep:
            self._sweep(ts)
        if flags & _SYN:
            # A new connection: the byte after the SYN starts the first length prefix.
            flow = _Flow((seq + 1) & 0xFFFFFFFF, ts)
            self._store(key, flow)
            if not data:
                return []
            seq = (seq + 1) & 0xFFFFFFFF
        out = []
        if data:
            if flow is None:
                # Mid-stream start (the capture began after the handshake): assume the
                # segment starts at a message boundary, which is how DNS clients write.
                flow = _Flow(seq, ts)
                self._store(key, flow)
            flow.last_ts = ts
            self._add(flow, seq, data)
            buf = flow.buf
            pos = 0
            n = len(buf)
            while n - pos >= 2:
                mlen = (buf[pos] << 8) | buf[pos + 1]
                if n - pos - 2 < mlen:
                    break
                msg = buf[pos + 2:pos + 2 + mlen]
                pos += 2 + mlen
                if len(msg) >= 12:
                    out.append(DnsSegment(ts, "tcp", _ntop(family, src), sport,
                                          _ntop(family, dst), dport, msg, packet))
            if pos:
                flow.buf = buf[pos:]
            if len(flow.buf) > TCP_BIG_BUFFER and (
                    len(flow.buf) > TCP_BUFFER_LIMIT or self.buffered() > self.tcp_budget):
                del flows[key]  # not DNS, or too much held: forget this flow
                return out
        if flags & _FIN_RST and flow is not None and key in flows:
            del flows[key]
        return out

    @staticmethod
    def _add(flow, seq, data):
        """Append in-order bytes; trim retransmitted (or twice-captured) bytes; hold a few
        segments that arrive ahead of a gap."""
        delta = (seq - flow.next_seq) & 0xFFFFFFFF
        if delta >= 0x80000000:  # starts before next_seq: overlap or plain duplicate
            skip = 0x100000000 - delta
            if skip >= len(data):
                return
            data = data[skip:]
            delta = 0
        if delta:
            if len(flow.held) < TCP_MAX_OUT_OF_ORDER and delta < TCP_BUFFER_LIMIT:
                flow.held[seq] = data
            return
        flow.buf += data
        flow.next_seq = (flow.next_seq + len(data)) & 0xFFFFFFFF
        held = flow.held
        while held:
            progressed = False
            for hseq in list(held):
                d = (hseq - flow.next_seq) & 0xFFFFFFFF
                if d == 0 or d >= 0x80000000:
                    hdata = held.pop(hseq)
                    skip = 0 if d == 0 else 0x100000000 - d
                    if skip < len(hdata):
                        flow.buf += hdata[skip:]
                        flow.next_seq = (flow.next_seq + len(hdata) - skip) & 0xFFFFFFFF
                    progressed = True
            if not progressed:
                break

    def buffered(self):
        """Bytes held by all flows (checked only when one flow holds a lot)."""
        return sum(len(f.buf) + sum(len(d) for d in f.held.values()) for f in self.flows.values())

    def _store(self, key, flow):
        flows = self.flows
        if key not in flows and len(flows) >= self.flow_limit:
            # Evict the idlest quarter at once so a flood of flows costs O(1) amortised.
            victims = sorted(flows, key=lambda k: flows[k].last_ts)[: max(1, self.flow_limit // 4)]
            for k in victims:
                del flows[k]
        flows[key] = flow

    def _sweep(self, ts):
        self._next_sweep = ts + 5.0
        limit = ts - self.idle_seconds
        stale = [k for k, f in self.flows.items() if f.last_ts < limit]
        for k in stale:
            del self.flows[k]
