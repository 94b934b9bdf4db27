"""The packet source: one AF_PACKET socket with a kernel filter for port 53 and a
TPACKET_V3 receive ring. Stdlib only, python3 >= 3.8.

Why this shape (packet(7), Documentation/networking/packet_mmap.rst):
- SOCK_DGRAM ("cooked") sockets deliver every packet from its network header on, whatever
  the interface: Ethernet veths, loopback, and header-less tunnels such as Calico's tunl0.
  The ethertype comes from the socket address (``sll_protocol``), so the classic BPF filter
  reads it with the ancillary load SKF_AD_PROTOCOL instead of from a link header.
- The socket is created with protocol 0, which receives nothing; the filter and the ring
  are installed, and only then is the socket bound to ETH_P_ALL. So no unfiltered packet
  ever reaches the ring. Bound to interface index 0 it sees every interface of the
  namespace, including the veths pods bring later — Python's ``bind`` wants an interface
  name, so index 0 is bound through libc with ctypes (when ctypes is missing, the socket
  is opened on ETH_P_ALL directly and whatever slipped in before the filter is drained).
- No promiscuous mode: DNS to and from this namespace is addressed to it anyway.
- A TPACKET_V3 ring hands over whole blocks of packets per wakeup, the cheapest design
  measured; where the kernel refuses it, plain ``recvfrom`` is the fallback.
- PACKET_STATISTICS returns, and resets, the kernel's counters: drops are accumulated.
"""

import contextlib
import mmap
import os
import socket
import struct
import time

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SO_ATTACH_FILTER = 26
PACKET_HOST = 0
PACKET_OUTGOING = 4
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
SNAPLEN = 262144
RECV_BATCH = 2000  # packets per read without a ring (its one turn of the agent's loop)
LOOPBACK_IFINDEX = 1  # loopback is interface 1 in every Linux network namespace

# struct tpacket3_hdr (48 bytes) followed by struct sockaddr_ll: next offset, seconds,
# nanoseconds, captured length, mac offset, interface index, packet type.
PKT_HDR = struct.Struct("=IIII8xH26xi2xB")
_BLOCK_HDR = struct.Struct("=8xIII")  # block_status, num_pkts, offset_to_first_pkt

# Classic BPF opcodes (linux/filter.h).
_LD_H_ABS, _LD_B_ABS, _LD_H_IND, _LDX_B_MSH = 0x28, 0x30, 0x48, 0xB1
_JEQ, _JSET, _RET = 0x15, 0x45, 0x06
_SKF_AD_PROTOCOL = 0xFFFFF000  # SKF_AD_OFF (-0x1000) + SKF_AD_PROTOCOL (0)


class CaptureError(Exception):
    """The capture cannot start; the message says why in plain words."""


def _assemble(program):
    """Resolve symbolic jump targets: items are (op, k, jt, jf) or a label string."""
    labels = {}
    pc = 0
    for item in program:
        if isinstance(item, str):
            labels[item] = pc
        else:
            pc += 1
    out = []
    pc = 0
    for item in program:
        if isinstance(item, str):
            continue
        op, k, jt, jf = item
        jt = labels[jt] - pc - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - pc - 1 if isinstance(jf, str) else jf
        out.append((op, jt, jf, k))
        pc += 1
    return out


def port53_filter(port=53):
    """The kernel filter: UDP or TCP to or from port 53 over IPv4 or IPv6.

    Offsets are from the network header (SOCK_DGRAM). IPv4 fragments after the first are
    dropped (their ports are not there); IPv6 packets whose first next-header is an
    extension header are passed up so user space can walk the chain. Equivalent to
    ``tcpdump -d 'port 53'`` on a cooked capture, minus the SCTP branch.
    """
    return _assemble([
        (_LD_H_ABS, _SKF_AD_PROTOCOL, 0, 0),
        (_JEQ, ETH_P_IP, 0, "v6"),
        (_LD_B_ABS, 9, 0, 0),
        (_JEQ, 17, "v4ports", 0),
        (_JEQ, 6, 0, "drop"),
        "v4ports",
        (_LD_H_ABS, 6, 0, 0),
        (_JSET, 0x1FFF, "drop", 0),
        (_LDX_B_MSH, 0, 0, 0),
        (_LD_H_IND, 0, 0, 0),
        (_JEQ, port, "accept", 0),
        (_LD_H_IND, 2, 0, 0),
        (_JEQ, port, "accept", "drop"),
        "v6",
        (_JEQ, ETH_P_IPV6, 0, "drop"),
        (_LD_B_ABS, 6, 0, 0),
        (_JEQ, 17, "v6ports", 0),
        (_JEQ, 6, "v6ports", 0),
        (_JEQ, 0, "accept", 0),  # hop-by-hop options
        (_JEQ, 43, "accept", 0),  # routing
        (_JEQ, 44, "accept", 0),  # fragment
        (_JEQ, 60, "accept", "drop"),  # destination options
        "v6ports",
        (_LD_H_ABS, 40, 0, 0),
        (_JEQ, port, "accept", 0),
        (_LD_H_ABS, 42, 0, 0),
        (_JEQ, port, "accept", "drop"),
        "accept",
        (_RET, SNAPLEN, 0, 0),
        "drop",
        (_RET, 0, 0, 0),
    ])


def _sock_fprog(program):
    """struct sock_fprog for SO_ATTACH_FILTER: the filter array must stay alive while the
    kernel copies it, so the buffer is returned with the packed struct."""
    import array

    insns = b"".join(struct.pack("=HBBI", op, jt, jf, k) for op, jt, jf, k in program)
    buf = array.array("B", insns)
    addr, _n = buf.buffer_info()
    fmt = "=HxxxxxxQ" if struct.calcsize("P") == 8 else "=HxxI"
    return struct.pack(fmt, len(program), addr), buf


def _bind_all(fd, proto):
    """bind(2) to (ETH_P_ALL, ifindex 0), which Python's socket.bind cannot express."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    # struct sockaddr_ll: family, protocol (network order), ifindex, hatype, pkttype,
    # halen, addr[8].
    sll = struct.pack("=HHiHBB8s", socket.AF_PACKET, socket.htons(proto), 0, 0, 0, 0, b"")
    cbuf = ctypes.create_string_buffer(sll, len(sll))
    if libc.bind(fd, cbuf, len(sll)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Capture(object):
    """Reads filtered packets; ``read(handle)`` calls ``handle(packet, ts, ifkey, pkttype)``
    for everything ready, where ``ifkey`` is an interface index (ring) or name (fallback);
    ``iface_name(ifkey)`` turns it into a name."""

    def __init__(self, interface=None, ring_mb=8, use_ring=True, block_kb=256, program=None):
        self.interface = interface
        self.program = program  # a classic BPF program (default: port53_filter())
        self.ring_mb = ring_mb
        self.use_ring = use_ring
        self.block_size = block_kb * 1024
        self.sock = None
        self.mode = None
        self._ring = None
        self.ring_blocks = 0
        self._block = 0
        self._names = {}
        self._recv_capped = False
        self.kernel_packets = 0
        self.kernel_drops = 0

    # -- setup ------------------------------------------------------------------------
    def open(self):
        try:
            self._open()
        except PermissionError:
            self.close()
            raise CaptureError(
                "cannot open a packet socket: the container lacks CAP_NET_RAW. Run the "
                "capture container as root with NET_RAW (most runtimes grant it by default; "
                "add it with securityContext.capabilities.add: [NET_RAW] where policy allows)"
            ) from None
        except OSError as exc:
            self.close()
            if self.interface and exc.errno == 19:  # ENODEV
                raise CaptureError("no interface named %r in this network namespace"
                                   % self.interface) from None
            raise CaptureError("cannot start the packet capture: %s" % exc) from None

    def _open(self):
        bind_all_direct = self.interface is None
        try:
            if bind_all_direct:
                import ctypes  # noqa: F401  (probe: the bind-after-filter path needs it)
        except ImportError:
            bind_all_direct = False
        if self.interface is None and not bind_all_direct:
            # No ctypes: open on ETH_P_ALL (receiving at once), filter, then drain.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        else:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        self.sock = sock
        fprog, _keep = _sock_fprog(self.program or port53_filter())
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        del _keep
        if self.use_ring:
            try:
                self._setup_ring()
            except OSError:
                self._ring = None  # old kernel or no memory for the ring: recvfrom instead
        self.mode = "tpacket_v3" if self._ring is not None else "recvfrom"
        if self.interface is not None:
            sock.bind((self.interface, ETH_P_ALL))
        elif bind_all_direct:
            _bind_all(sock.fileno(), ETH_P_ALL)
        else:
            self._drain()
        sock.setblocking(False)
        self.stats()  # the kernel counters reset on read: count from here on
        self.kernel_packets = self.kernel_drops = 0

    def _setup_ring(self):
        sock = self.sock
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        block_size = self.block_size
        block_nr = max(2, (self.ring_mb * 1024 * 1024) // block_size)
        frame_size = 2048
        # struct tpacket_req3: block size, block count, frame size, frame count,
        # retire timeout (ms: a partly filled block is handed over after this long),
        # private area size, feature flags.
        req = struct.pack("=IIIIIII", block_size, block_nr, frame_size,
                          block_size * block_nr // frame_size, 20, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._ring = mmap.mmap(sock.fileno(), block_size * block_nr, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
        self.ring_blocks = block_nr

    def _drain(self):
        self.sock.setblocking(False)
        while True:
            try:
                self.sock.recv(1)
            except (BlockingIOError, InterruptedError):
                return

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        if self._ring is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._ring.close()
            self._ring = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- reading ------------------------------------------------------------------------
    def read(self, handle, block_handler=None, max_blocks=None):
        """Hand every ready packet to ``handle``; return how many were read.

        With a ring, ``block_handler(ring, pos, num)`` (when given) walks each block itself:
        the agent's hot loop, which saves a Python call per packet. ``max_blocks`` bounds
        the work of one call: under a flood the next block is always ready, and the caller
        must get its turn to watch the clock, signals and the stop file.
        """
        if self._ring is None:
            return self._read_recvfrom(handle)
        ring = self._ring
        bsize = self.block_size
        unpack_block = _BLOCK_HDR.unpack_from
        unpack_pkt = PKT_HDR.unpack_from
        count = 0
        blocks = 0
        while max_blocks is None or blocks < max_blocks:
            base = self._block * bsize
            status, num, off = unpack_block(ring, base)
            if not status & TP_STATUS_USER:
                break
            pos = base + off
            if block_handler is not None:
                block_handler(ring, pos, num)
            else:
                for _ in range(num):
                    nxt, sec, nsec, snap, mac, ifindex, pkttype = unpack_pkt(ring, pos)
                    start = pos + mac
                    handle(ring[start:start + snap], sec + nsec * 1e-9, ifindex, pkttype)
                    pos += nxt
            count += num
            self._release_block(base)
            blocks += 1
        return count

    def _release_block(self, base):
        """Give the block back to the kernel (block_status = TP_STATUS_KERNEL)."""
        self._ring[base + 8:base + 12] = b"\x00\x00\x00\x00"
        self._block = (self._block + 1) % self.ring_blocks

    def backlog(self):
        """How full the kernel's queue is, from 0 (nothing waiting) to 1 (full: the kernel
        drops what comes next). With a ring: the share of its blocks handed to user space
        and not yet read. Without one: 1 when the last read stopped at its cap."""
        if self._ring is None:
            return 1.0 if self._recv_capped else 0.0
        ring = self._ring
        bsize = self.block_size
        nr = self.ring_blocks
        block = self._block
        unpack_block = _BLOCK_HDR.unpack_from
        ready = 0
        while ready < nr and unpack_block(ring, ((block + ready) % nr) * bsize)[0] & TP_STATUS_USER:
            ready += 1
        return ready / nr

    def skip(self, max_blocks):
        """Give up to ``max_blocks`` ready blocks back to the kernel unread; return the
        packets they held. The agent sheds this way when it cannot keep up: exact counts
        at no cost per packet, where a full ring would make the kernel drop uncounted work
        of ours (its drops are counted too, but they leave the ring full and our reading
        seconds behind the traffic)."""
        if self._ring is None:
            return 0
        ring = self._ring
        unpack_block = _BLOCK_HDR.unpack_from
        count = 0
        for _ in range(max_blocks):
            base = self._block * self.block_size
            status, num, _off = unpack_block(ring, base)
            if not status & TP_STATUS_USER:
                break
            count += num
            self._release_block(base)
        return count

    def _read_recvfrom(self, handle):
        recvfrom = self.sock.recvfrom
        count = 0
        self._recv_capped = False
        while count < RECV_BATCH:
            try:
                data, addr = recvfrom(SNAPLEN)
            except (BlockingIOError, InterruptedError):
                return count
            handle(data, time.time(), addr[0], addr[2])
            count += 1
        self._recv_capped = True
        return count

    def iface_name(self, ifkey):
        """Interface name for an index, cached; a vanished interface gets ``if<N>``."""
        if isinstance(ifkey, str):
            return ifkey
        name = self._names.get(ifkey)
        if name is None:
            try:
                name = socket.if_indextoname(ifkey)
            except OSError:
                name = "if%d" % ifkey
            self._names[ifkey] = name
        return name

    def forget_names(self):
        """Drop the name cache (interface indexes can be reused after a pod goes away)."""
        self._names = {}

    def stats(self):
        """(packets, drops) counted by the kernel since the capture opened."""
        if self.sock is None:
            return self.kernel_packets, self.kernel_drops
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        except OSError:
            return self.kernel_packets, self.kernel_drops
        packets, drops = struct.unpack_from("=II", raw)
        self.kernel_packets += packets
        self.kernel_drops += drops
        return self.kernel_packets, self.kernel_drops
