"""CoreDNS's own log lines, read into the events the pipeline consumes: pure text in, data out.

The ``log`` plugin writes one line per answered query, without a timestamp of its own (the
kubelet's ``timestamps=true`` adds one), in a format the Corefile may choose. The default
(``{common}`` is the same) is::

    {remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}" {rcode} {>rflags} {rsize} {duration}
    [INFO] 10.244.0.5:42286 - 44600 "A IN evil.example.test. udp 35 false 512" NOERROR qr,aa,rd,ra 68 0.000567379s

``{combined}`` adds `` "{>opcode}"``; any other format is compiled from its placeholders, so
a cluster that logs ``{remote} {name} {type} {rcode}`` is read as well (fields it leaves
out are absent from the events). A line is written when the answer leaves, so the query's
time is the line's time minus ``{duration}``.

What a log line cannot tell is left out, never made up: the answers (``answers`` stays
empty), CoreDNS's own upstream queries, the query's arrival address (the pod's IP and port
53 stand for it). Lines that are not query lines are classified (reload progress, errors)
or counted as other, never a failure.

The reload plugin's lines are how a run knows a pod serves the edited Corefile::

    [INFO] Reloading
    [INFO] plugin/reload: Running configuration SHA512 = 63e8...
    [INFO] Reloading complete
    [ERROR] plugin/reload: Corefile changed but reload failed: ...   (the old one keeps serving)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kubectl_dnstrace.model import LOG_ROUTE_IFACE, DnsEvent

DEFAULT_FORMAT = ('{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} '
                  '{>bufsize}" {rcode} {>rflags} {rsize} {duration}')
COMBINED_FORMAT = DEFAULT_FORMAT + ' "{>opcode}"'

_FIELDS = {
    "remote": r"\[?(?P<remote>[0-9A-Fa-f:.]+?)\]?",
    "port": r"(?P<port>\d+)",
    ">id": r"(?P<id>\d+)",
    "type": r"(?P<type>[A-Za-z0-9]+)",
    "class": r"(?P<cls>[A-Za-z0-9]+)",
    "name": r"(?P<name>\S+)",
    "proto": r"(?P<proto>udp|tcp)",
    "size": r"(?P<size>\d+)",
    ">do": r"(?P<do>true|false)",
    ">bufsize": r"(?P<bufsize>\d+)",
    "rcode": r"(?P<rcode>[A-Z]+|\d+|-)",
    ">rflags": r"(?P<rflags>[a-z,]*)",
    "rsize": r"(?P<rsize>\d+)",
    "duration": r"(?P<duration>[0-9.]+(?:e-?\d+)?(?:ns|µs|us|ms|s|m|h)?)",
    ">opcode": r"(?P<opcode>\S+)",
}
_PLACEHOLDER = re.compile(r"\{[^{}]+\}")
_DURATION_UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0, "": 1.0}
_TIMESTAMP = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) ")
_SHA = re.compile(r"plugin/reload: Running configuration SHA512 = (?P<sha>[0-9a-f]+)")
_RELOAD_FAILED = re.compile(r"\[ERROR\] plugin/reload: Corefile changed but reload failed: (?P<why>.*)")


def log_format(args: list[str]) -> str:
    """The format of a ``log`` directive's arguments (what CoreDNS's setup does: the last
    argument is the format when it holds a ``{``)."""
    if args and "{" in args[-1]:
        last = args[-1]
        return {"{common}": DEFAULT_FORMAT, "{combined}": COMBINED_FORMAT}.get(last, last)
    return DEFAULT_FORMAT


def compile_format(fmt: str) -> re.Pattern[str]:
    """A regex for the lines ``fmt`` writes; placeholders it does not know match one token."""
    parts, pos, seen = [], 0, set()
    for m in _PLACEHOLDER.finditer(fmt):
        parts.append(re.escape(fmt[pos:m.start()]))
        key = m.group(0)[1:-1]
        if key in _FIELDS and key not in seen:
            seen.add(key)
            parts.append(_FIELDS[key])
        else:
            parts.append(r"\S*?" if fmt[m.end():m.end() + 1] not in ("", " ") else r"\S*")
        pos = m.end()
    parts.append(re.escape(fmt[pos:]))
    return re.compile("".join(parts) + r"\s*$")


def seconds(text: str) -> float | None:
    m = re.match(r"^([0-9.]+(?:e-?\d+)?)(ns|µs|us|ms|s|m|h)?$", text or "")
    if not m:
        return None
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or ""]


@dataclass(slots=True)
class LogLine:
    """What one line of a CoreDNS pod's log is."""

    kind: str  # "query" | "reloading" | "config" | "reloaded" | "reload_failed" | "other"
    ts: float = 0.0  # the kubelet's timestamp (0.0 without one)
    text: str = ""  # the line without the timestamp
    sha: str = ""  # "config": the configuration's SHA512
    fields: dict | None = None  # "query": the format's fields


class LogParser:
    """Classifies lines; query lines by ``fmt`` (the default format when none is given)."""

    def __init__(self, fmt: str = DEFAULT_FORMAT) -> None:
        self.formats = [compile_format(fmt)]
        if fmt != DEFAULT_FORMAT:
            self.formats.append(compile_format(DEFAULT_FORMAT))  # our own line's format
        self.counts = {"query": 0, "other": 0}

    def parse(self, raw: str) -> LogLine:
        ts = 0.0
        m = _TIMESTAMP.match(raw)
        if m:
            from kubectl_dnstrace.kube.logstream import ts_seconds

            ts = ts_seconds(m.group("ts"))
            raw = raw[m.end():]
        text = raw.rstrip("\r\n")
        body = text[7:] if text.startswith("[INFO] ") else text  # "Reloading" lines
        if "plugin/reload" in text or "Reloading" in text:
            if body.strip() == "Reloading":
                return LogLine("reloading", ts, text)
            if body.strip() == "Reloading complete":
                return LogLine("reloaded", ts, text)
            sm = _SHA.search(text)
            if sm:
                return LogLine("config", ts, text, sha=sm.group("sha"))
            fm = _RELOAD_FAILED.search(text)
            if fm:
                return LogLine("reload_failed", ts, fm.group("why"))
        for rx in self.formats:
            qm = rx.search(text)
            if qm:
                self.counts["query"] += 1
                return LogLine("query", ts, text, fields=qm.groupdict())
        self.counts["other"] += 1
        return LogLine("other", ts, text)


def events(line: LogLine, server_ip: str, observed_at: str, seq: int = 0
           ) -> list[DnsEvent]:
    """The query and the response one query line stands for (``[]`` for other lines, or a
    format that does not name the client). The response carries the rcode and the time
    CoreDNS took; its answers stay empty: the line does not say them."""
    f = line.fields
    if line.kind != "query" or not f or not f.get("remote"):
        return []
    took = seconds(f.get("duration") or "")
    end = line.ts
    start = end - took if (took is not None and end) else end
    client = f["remote"]
    sport = int(f.get("port") or 0)
    ident = int(f.get("id") or 0)
    qname = (f.get("name") or "").rstrip(".") or "."
    qtype = (f.get("type") or "").upper() or "?"
    proto = f.get("proto") or "udp"
    query = DnsEvent(start, "query", proto, client, sport, server_ip, 53, ident, qname, qtype,
                     LOG_ROUTE_IFACE, seq=seq, observed_at=observed_at)
    out = [query]
    rcode = f.get("rcode")
    if rcode and rcode != "-":
        out.append(DnsEvent(end, "response", proto, server_ip, 53, client, sport, ident, qname,
                            qtype, LOG_ROUTE_IFACE, rcode, [], took * 1000.0 if took is not None else None,
                            seq=seq, observed_at=observed_at))
    return out
