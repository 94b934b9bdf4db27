"""Regenerate tests/data/dns/dig-dnsmasq.json: real dnsmasq responses as dig printed them.

Runs dnsmasq on 127.0.0.1 with a small local zone and no upstream, and puts a one-shot
UDP relay between dig and dnsmasq that keeps the exact response bytes dig received. Each
case stores the query, the response wire (hex) and dig's own rendering of the sections,
so tests/test_dnswire.py can compare dnswire's reading with dig's. Everything stays on the
loopback interface.

    .venv/bin/python tests/data/dns/capture.py   # needs /usr/sbin/dnsmasq and dig
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

OUT = Path(__file__).with_name("dig-dnsmasq.json")

ZONE = """\
no-resolv
no-hosts
no-poll
bind-interfaces
listen-address=127.0.0.1
local=/lab.test/
local-ttl=60
host-record=web.lab.test,10.0.0.7,fd00::7
host-record=multi.lab.test,10.0.0.8
address=/multi.lab.test/10.0.0.9
cname=www.lab.test,web.lab.test
cname=alias.lab.test,www.lab.test
mx-host=lab.test,mail.lab.test,10
mx-host=lab.test,backup.lab.test,20
srv-host=_sip._tcp.lab.test,sip.lab.test,5060,0,5
txt-record=lab.test,"v=spf1 -all","second string"
txt-record=odd.lab.test,"quote\\"back\\\\slash"
ptr-record=7.0.0.10.in-addr.arpa,web.lab.test
"""

CASES = [
    ("web.lab.test", "A", []),
    ("Web.LAB.test", "AAAA", []),
    ("www.lab.test", "A", []),
    ("alias.lab.test", "AAAA", []),
    ("multi.lab.test", "A", []),
    ("lab.test", "MX", []),
    ("_sip._tcp.lab.test", "SRV", []),
    ("lab.test", "TXT", []),
    ("odd.lab.test", "TXT", []),
    ("7.0.0.10.in-addr.arpa", "PTR", []),
    ("missing.lab.test", "A", []),
    ("web.lab.test", "A", ["+dnssec"]),
    ("web.lab.test", "A", ["+noedns"]),
    ("web.lab.test", "A", ["+tcp"]),
    ("a\\032b\\(c\\).lab.test", "A", []),
    ("\\255\\000.lab.test", "TXT", []),
]


def _free_port(kind):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """Forwards one dig query (UDP or TCP) to dnsmasq and keeps the response bytes."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(1)
        self.responses = []

    def serve_udp(self):
        query, client = self.udp.recvfrom(65535)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5)
            up.sendto(query, self.upstream)
            response = up.recv(65535)
        self.responses.append((query, response))
        self.udp.sendto(response, client)

    def serve_tcp(self):
        conn, _ = self.tcp.accept()
        with conn, socket.create_connection(self.upstream, timeout=5) as up:
            query = _read_framed(conn)
            up.sendall(len(query).to_bytes(2, "big") + query)
            response = _read_framed(up)
            self.responses.append((query, response))
            conn.sendall(len(response).to_bytes(2, "big") + response)


def _read_framed(sock):
    head = b""
    while len(head) < 2:
        head += sock.recv(2 - len(head))
    size = int.from_bytes(head, "big")
    body = b""
    while len(body) < size:
        body += sock.recv(size - len(body))
    return body


def main():
    dns_port = _free_port(socket.SOCK_DGRAM)
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp, "dnsmasq.conf")
        conf.write_text(ZONE + f"port={dns_port}\n")
        server = subprocess.Popen(
            ["/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=" + str(conf),
             "--pid-file=" + str(Path(tmp, "pid"))]
        )  # fmt: skip
        try:
            time.sleep(0.5)
            out = []
            for name, qtype, flags in CASES:
                relay = Relay(dns_port)
                serve = relay.serve_tcp if "+tcp" in flags else relay.serve_udp
                worker = threading.Thread(target=serve, daemon=True)
                worker.start()
                shown = subprocess.run(
                    ["dig", "@127.0.0.1", "-p", str(relay.port), "+noall", "+comments",
                     "+question", "+answer", "+authority", "+additional", "+nocookie",
                     "+tries=1", "+time=3",
                     *flags, name, qtype],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                worker.join(5)
                relay.udp.close()
                relay.tcp.close()
                ((query, response),) = relay.responses
                out.append({
                    "name": name, "qtype": qtype, "dig_flags": flags,
                    "query": query.hex(), "response": response.hex(),
                    "dig": [line for line in shown.splitlines() if line],
                })  # fmt: skip
        finally:
            server.terminate()
            server.wait(5)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(out)} cases to {OUT}")


if __name__ == "__main__":
    main()
