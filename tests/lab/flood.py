"""A DNS query flood for the lab: as many UDP queries per second as one process can send,
each for a distinct name, from a client namespace to the lab's DNS server.

dnsperf paces itself by the answers it gets (at most ``-q`` queries outstanding), so it
stops at what dnsmasq can answer; the agent's bounds have to hold beyond that, at whatever
rate the box can put on the wire. This sender does not wait for answers: it cycles through
pre-built queries (``NAMES`` distinct names) on a connected
socket until its time is up, and prints how many it sent. Run it inside a namespace:

    ip netns exec CLIENT python3 -m tests.lab.flood SERVER SECONDS

Traffic goes only to ``SERVER`` port 53, an address inside the lab.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

NAMES = 100_000
ZONE = "flood.example.com"


def query(i: int, ident: int) -> bytes:
    """A query for ``f<i>.flood.example.com`` A, recursion desired."""
    labels = [f"f{i}".encode(), *(p.encode() for p in ZONE.split("."))]
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    return struct.pack("!HHHHHH", ident & 0xFFFF, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"


def flood(server: str, seconds: float, names: int = NAMES) -> int:
    """Send queries to ``server``:53 for ``seconds``; return how many were sent."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect((server, 53))
    sock.setblocking(False)
    send = sock.send
    sent = 0
    packets = [query(i, i) for i in range(names)]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for packet in packets:
            try:
                send(packet)
            except (BlockingIOError, ConnectionRefusedError):
                continue  # a full socket buffer or an ICMP error: go on at full speed
            sent += 1
            if not sent & 0x3FF and time.monotonic() >= end:
                break
    sock.close()
    return sent


def main(argv: list[str]) -> int:
    server, seconds = argv[0], float(argv[1])
    print(flood(server, seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
