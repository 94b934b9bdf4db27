"""A pod's "application": asks the listed DNS questions on a schedule, like a real workload would.

Runs inside a pod's network namespace as a separate ``python3`` process (one per pod), so it
must stay stdlib-only and import nothing from the project. It builds queries by hand (header
plus one question) rather than calling ``dig`` in a loop: one process per pod instead of one
per query keeps a scenario with dozens of pods cheap on a two-core machine.

Each question runs on its own thread so a slow or lost answer to one name never delays the
schedule of another. Every query appends one JSON line to ``--log``::

    {"ts": 1764167000.12, "name": "evil.example.com", "type": "A", "proto": "udp",
     "server": "10.244.0.2", "id": 4711, "rcode": 0, "answers": 1, "latency_ms": 0.8}

(``"error"`` instead of ``rcode`` when no answer came; ``"lookup"`` names the original name
when a search list expanded it), which tests read to know exactly what a pod asked and when.

Usage: ``python3 querier.py --log FILE --spec JSON`` where JSON is
``{"server": IP, "search": [SUFFIX...], "ndots": 5, "queries": [{"name": N, "type": T,
"every": SECONDS, "tcp": BOOL, "count": N, "offset": SECONDS, "search": BOOL}]}``.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import struct
import threading
import time

TYPE_CODES = {
    "A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28,
    "SRV": 33, "NAPTR": 35, "DS": 43, "DNSKEY": 48, "SVCB": 64, "HTTPS": 65, "CAA": 257,
    "ANY": 255,
}

TIMEOUT = 2.0


def type_code(name: str) -> int:
    name = name.upper()
    if name in TYPE_CODES:
        return TYPE_CODES[name]
    if name.startswith("TYPE") and name[4:].isdigit():
        return int(name[4:])
    raise ValueError(f"unknown query type {name!r}")


def build_query(qid: int, name: str, qtype: int) -> bytes:
    """A standard recursive query (RD set), one question, class IN, no EDNS."""
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes([len(part)]) + part for part in (p.encode("ascii") for p in name.strip(".").split(".")) if part
    )
    return header + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def ask(server: str, port: int, name: str, qtype: int, tcp: bool) -> tuple:
    """Send one query; return (id, response bytes). Raises OSError/ConnectionError on failure."""
    qid = random.randrange(0, 65536)
    msg = build_query(qid, name, qtype)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    if tcp:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect((server, port))
            sock.sendall(struct.pack("!H", len(msg)) + msg)
            (length,) = struct.unpack("!H", _recv_exact(sock, 2))
            return qid, _recv_exact(sock, length)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect((server, port))
        sock.send(msg)
        deadline = time.monotonic() + TIMEOUT
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            resp = sock.recv(65535)
            if len(resp) >= 12 and struct.unpack("!H", resp[:2])[0] == qid:
                return qid, resp


class QueryLog:
    """Appends one JSON line per query; a lock keeps lines from different threads whole."""

    def __init__(self, path: str) -> None:
        self._fh = open(path, "a", buffering=1)  # noqa: SIM115 -- open for the process lifetime
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")


def candidates(name: str, search: list, ndots: int) -> list:
    """The names a glibc/musl stub resolver tries for ``name`` with a resolv.conf search list.

    Kubernetes gives pods ``search <ns>.svc.<domain> svc.<domain> <domain>`` and
    ``options ndots:5``, so ``evil.example.com`` (two dots) is first tried as
    ``evil.example.com.<ns>.svc.cluster.local`` and so on — the NXDOMAIN noise every real
    CoreDNS capture is full of.
    """
    if not search or name.endswith("."):
        return [name.rstrip(".")]
    expanded = [name + "." + suffix for suffix in search]
    return [*expanded, name] if name.count(".") < ndots else [name, *expanded]


def ask_and_record(server: str, port: int, name: str, qtype_name: str, tcp: bool) -> dict:
    start = time.monotonic()
    record = {"ts": round(time.time(), 6), "name": name, "type": qtype_name,
              "proto": "tcp" if tcp else "udp", "server": server}
    try:
        qid, resp = ask(server, port, name, type_code(qtype_name), tcp)
        flags, _qd, ancount = struct.unpack("!HHH", resp[2:8])
        record.update(id=qid, rcode=flags & 0x000F, answers=ancount,
                      latency_ms=round((time.monotonic() - start) * 1000, 3))
    except (OSError, ConnectionError) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    return record


def query_loop(server: str, port: int, query: dict, log: QueryLog, stop: threading.Event,
               search: list, ndots: int) -> None:
    name = query["name"]
    qtype_name = str(query.get("type", "A")).upper()
    tcp = bool(query.get("tcp", False))
    every = float(query.get("every", 1.0))
    count = query.get("count")
    names = candidates(name, search if query.get("search") else [], ndots)
    sent = 0
    if stop.wait(float(query.get("offset") or 0)):
        return
    next_at = time.monotonic()
    while not stop.is_set():
        for qname in names:
            record = ask_and_record(server, port, qname, qtype_name, tcp)
            if len(names) > 1:
                record["lookup"] = name
            log.write(record)
            # Like the stub resolvers: go on down the list only after a name-level miss.
            if record.get("rcode") not in (3,) and not (record.get("rcode") == 0 and record.get("answers") == 0):
                break
        sent += 1
        if count is not None and sent >= int(count):
            return
        next_at += every
        delay = next_at - time.monotonic()
        if delay < 0:  # fell behind (a timeout): keep the rhythm rather than burst to catch up
            next_at = time.monotonic()
            delay = 0
        stop.wait(delay)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON: server, port, queries")
    parser.add_argument("--log", required=True, help="append one JSON line per query here")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log = QueryLog(args.log)
    threads = []
    for query in spec["queries"]:
        server = query.get("server") or spec["server"]
        port = int(query.get("port") or spec.get("port", 53))
        thread = threading.Thread(target=query_loop, daemon=True, args=(
            server, port, query, log, stop, spec.get("search") or [], int(spec.get("ndots", 5))))
        thread.start()
        threads.append(thread)
    while any(t.is_alive() for t in threads) and not stop.is_set():
        stop.wait(0.2)
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT + 0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
