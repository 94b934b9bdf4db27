"""A DNS query flood for the lab: as many UDP queries per second as one process can send,
each for a distinct name, from a client namespace to the lab's DNS server.

dnsperf paces itself by the answers it gets (at most ``-q`` queries outstanding), so it
stops at what dnsmasq can answer; the agent's bounds have to hold beyond that, at whatever
rate the box can put on the wire. This sender does not wait for answers: it cycles through
pre-built queries (``NAMES`` distinct names) on a connected
socket until its time is up, and prints how many it sent. Run it inside a namespace:

    ip netns exec CLIENT python3 -m tests.lab.flood SERVER SECONDS

Traffic goes only to ``SERVER`` port 53, an address inside the lab.

``run_flooded_agent`` is what the lab test and the benchmark share: the agent in the DNS
namespace under such a flood, asked to stop by its deadline, SIGTERM or its stop file, with
the time it took to end and its peak RSS (the kernel's ``ru_maxrss`` of the process).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NAMES = 100_000
ZONE = "flood.example.com"


def query(i: int, ident: int) -> bytes:
    """A query for ``f<i>.flood.example.com`` A, recursion desired."""
    labels = [f"f{i}".encode(), *(p.encode() for p in ZONE.split("."))]
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    return struct.pack("!HHHHHH", ident & 0xFFFF, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"


def flood(server: str, seconds: float, names: int = NAMES) -> int:
    """Send queries to ``server``:53 for ``seconds`` (or until SIGINT); return how many
    were sent."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect((server, 53))
    sock.setblocking(False)
    send = sock.send
    sent = 0
    packets = [query(i, i) for i in range(names)]
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            for packet in packets:
                try:
                    send(packet)
                except (BlockingIOError, ConnectionRefusedError):
                    continue  # a full socket buffer or an ICMP error: go on at full speed
                sent += 1
                if not sent & 0x3FF and time.monotonic() >= end:
                    break
    except KeyboardInterrupt:
        pass
    sock.close()
    return sent


STOPS = ("deadline", "signal", "stop-file")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class FloodedAgent:
    """How one agent run under a flood ended."""

    stop: str  # how it was asked to end: one of STOPS
    time_to_stop: float  # seconds from the ask (deadline passed, signal sent, file made) to exit
    peak_rss_kb: int  # the process's peak resident set, ring included (VmHWM)
    cpu_seconds: float  # user + system time of the whole run
    returncode: int
    flood_seconds: float  # how long the flood ran before the ask
    sent: int  # queries the flood sent (all of its run)
    records: list[dict] = field(default_factory=list)

    @property
    def stats(self) -> dict:
        return [r for r in self.records if r["type"] == "stats"][-1]


def _proc_sample(pid: int) -> tuple[int, float] | None:
    """(VmHWM in KiB, user + system CPU seconds) of a running process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]), (int(stat[11]) + int(stat[12])) / CLK_TCK
    return None


def run_flooded_agent(dns_ns, client_ns, server: str, work: Path, stop: str,
                      agent_args: list[str], flood_seconds: float = 3.0,
                      env: dict[str, str] | None = None) -> FloodedAgent:
    """Start the agent in ``dns_ns``, flood ``server`` from ``client_ns`` once it said hello,
    ask it to stop after ``flood_seconds`` and measure how it ends. The flood goes on until
    the agent has exited. Records are decoded with ``protocol.decode`` (so every line is
    checked); the caller asserts on them."""
    from kubectl_dnstrace import protocol

    assert stop in STOPS, stop
    out_path = work / f"flood-{stop}-{time.monotonic_ns()}.ndjson"
    stop_file = work / f"flood-{time.monotonic_ns()}.stop"
    duration = flood_seconds if stop == "deadline" else 120.0
    argv = ["python3", "-m", "kubectl_dnstrace.agent", "--duration", str(duration),
            "--stop-file", str(stop_file), *agent_args]
    spawned = time.monotonic()
    # ip netns exec execs the agent: the child is the agent itself, and wait4 reads its
    # own peak RSS and CPU time.
    with out_path.open("wb") as out:
        agent = subprocess.Popen(dns_ns.cmd(*argv), env=env, stdout=out,
                                 stderr=subprocess.DEVNULL)
    flooder = None
    try:
        limit = time.monotonic() + 20
        while not out_path.stat().st_size:
            if agent.poll() is not None or time.monotonic() > limit:
                raise RuntimeError(f"the agent did not start: {out_path.read_text()!r}")
            time.sleep(0.02)
        flooder = subprocess.Popen(client_ns.cmd(sys.executable, "-m", "tests.lab.flood",
                                                 server, "600"),
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        flood_start = time.monotonic()
        if stop == "deadline":
            asked = spawned + duration  # the deadline runs from before python started
        else:
            time.sleep(flood_seconds)
            asked = time.monotonic()
            if stop == "signal":
                os.kill(agent.pid, signal.SIGTERM)
            else:
                stop_file.touch()
        peak_kb, cpu = 0, 0.0
        while True:
            # The process's own high-water mark, read until it exits (wait4's ru_maxrss
            # would include the forked test runner's size from before the exec).
            sample = _proc_sample(agent.pid)
            if agent.poll() is not None:
                break
            if sample is not None:
                peak_kb, cpu = max(peak_kb, sample[0]), sample[1]
            time.sleep(0.01)
        ended = time.monotonic()
    finally:
        if agent.returncode is None:
            agent.kill()
            agent.wait()
        sent = 0
        if flooder is not None:
            flooder.send_signal(signal.SIGINT)
            try:
                text = flooder.communicate(timeout=10)[0].decode().strip()
                sent = int(text) if text.isdigit() else 0
            except subprocess.TimeoutExpired:
                flooder.kill()
                flooder.wait()
    records = [protocol.decode(line) for line in out_path.read_text().splitlines()]
    # The agent's last stats record has its own reading, taken after the last sample above.
    reported = [r.get("peak_rss_kb", 0) for r in records if r["type"] == "stats"]
    return FloodedAgent(stop=stop, time_to_stop=ended - asked,
                        peak_rss_kb=max([peak_kb, *reported]), cpu_seconds=cpu,
                        returncode=agent.returncode, flood_seconds=asked - flood_start,
                        sent=sent, records=records)


def main(argv: list[str]) -> int:
    server, seconds = argv[0], float(argv[1])
    print(flood(server, seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
