"""What the user reads: live lines, the summary table, one JSON document, NDJSON events.

Every render is deterministic (sorted, no wall clock of its own, times in UTC), so tests
assert exact output. Data goes to stdout; progress and notices go to stderr (the
``Pipeline`` does that), so ``-o json | jq`` always works.
"""

from __future__ import annotations

import json
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from json.encoder import encode_basestring as _enc
from typing import Any, TextIO

from tabulate import tabulate

from kubectl_dnstrace import aggregate, columns, jsontext
from kubectl_dnstrace.aggregate import ClientStats, percentile
from kubectl_dnstrace.attribution import Attributed, clock
from kubectl_dnstrace.linking import Link, describe_client, describe_link
from kubectl_dnstrace.model import LOG_ROUTE_IFACE, Client, DnsEvent

NAMES_SHOWN = 5  # names listed per client in the table; JSON has them all

# ---- small formatters -------------------------------------------------------------------


def clock_ms(ts: float) -> str:
    """HH:MM:SS.mmm (UTC)."""
    ms = round((ts - int(ts)) * 1000)
    sec = int(ts)
    if ms == 1000:
        sec, ms = sec + 1, 0
    return time.strftime("%H:%M:%S", time.gmtime(sec)) + f".{ms:03d}"


def iso(ts: float) -> str:
    """RFC 3339 UTC with milliseconds: "2026-11-26T14:02:03.123Z"."""
    return time.strftime("%Y-%m-%dT", time.gmtime(int(ts))) + clock_ms(ts) + "Z"


def latency(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.1f}ms" if ms < 1000 else f"{ms / 1000:.2f}s"


def counts(counter: Counter) -> str:
    """"NOERROR:3 NXDOMAIN:1": busiest first, then by name."""
    return " ".join(f"{k}:{v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def client_cells(c: Client) -> tuple[str, str, str, str]:
    """(namespace, pod, workload, node) columns of a client, for lines and tables.

    A node address is not a pod: the pod column names the node and the workload column
    lists the hostNetwork pods it may have been, never one of them.
    """
    if c.kind == "pod":
        return c.namespace, c.name, c.workload or "-", c.node or "-"
    if c.kind == "node":
        cands = ("one of: " + ", ".join(c.candidates)) if c.candidates else "node process"
        return "-", f"node/{c.name}", cands, c.node
    if c.kind == "service":
        return c.namespace, f"svc/{c.namespace}/{c.name}", "-", "-"
    if c.kind == "ambiguous":
        return "-", f"{c.ip} (ambiguous)", "one of: " + ", ".join(c.candidates), "-"
    return "-", f"{c.ip} ({c.kind})", "-", "-"


def client_json(c: Client) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": c.kind,
        "namespace": c.namespace,
        "name": c.name,
        "workload": c.workload,
        "node": c.node,
        "candidates": list(c.candidates),
    }
    if c.reason:
        out["reason"] = c.reason
    return out


def link_json(link: Link) -> dict[str, Any]:
    return {
        "ts": link.ts,
        "time": iso(link.ts),
        "qname": link.qname,
        "qtype": link.qtype,
        "upstream": link.upstream,
        "resolver": dict(client_json(link.resolver), ip=link.resolver.ip),
        "server": dict(client_json(link.server), ip=link.server.ip),
        "observed_at": link.observed_at,
        "caused_by": [dict(client_json(c), ip=c.ip) for c in link.causes],
        "via": [dict(client_json(c), ip=c.ip) for c in link.via],
        "text": describe_link(link, clock),
    }


# ---- events ---------------------------------------------------------------------------


def event_json(a: Attributed) -> dict[str, Any]:
    """One enriched event: the ``dns`` record's fields plus ``client`` (and link data)."""
    out = record_json(a.event)
    out["client"] = client_json(a.client)
    if a.services:
        out["services"] = {ip: dict(zip(("namespace", "name"), name.split("/", 1), strict=True))
                           for ip, name in sorted(a.services.items())}
    if a.served:
        out["served"] = a.served
    if a.link is not None:
        out["forward"] = {
            "upstream": a.link.upstream,
            "caused_by": [dict(client_json(c), ip=c.ip) for c in a.link.causes],
            "via": [dict(client_json(c), ip=c.ip) for c in a.link.via],
        }
    return out


def record_json(ev: DnsEvent) -> dict[str, Any]:
    """The ``dns`` record's fields of an event, ``observed_at`` last: ``event_json``'s first
    part (what follows is the client, then how it was served and linked)."""
    out: dict[str, Any] = {
        "type": "dns",
        "ts": ev.ts,
        "qr": ev.qr,
        "proto": ev.proto,
        "src": ev.src,
        "sport": ev.sport,
        "dst": ev.dst,
        "dport": ev.dport,
        "id": ev.id,
        "qname": ev.qname,
        "qtype": ev.qtype,
        "iface": ev.iface,
    }
    if ev.qr == "response":
        out["rcode"] = ev.rcode
        if ev.iface != LOG_ROUTE_IFACE:
            out["answers"] = list(ev.answers)
        out["latency_ms"] = ev.latency_ms
        if ev.truncated:
            out["truncated"] = True
    if ev.resolver is not None:
        out["resolver"] = ev.resolver
    out["seq"] = ev.seq
    out["observed_at"] = ev.observed_at
    return out


def ndjson_line(a: Attributed) -> str:
    return json.dumps(event_json(a), separators=(",", ":"), ensure_ascii=False) + "\n"


class NdjsonWriter:
    """``ndjson_line`` at a fraction of the cost, for streams of millions of events.

    Builds the line by hand from pieces kept as JSON text: names, addresses and types (a
    capture's few thousand repeat on every line), the ``"qname":…,"qtype":…`` pair, and the
    line's end — ``"observed_at"`` and the ``client`` object, which the attributor hands
    out once per address. Output is byte-identical to ``ndjson_line`` (a test holds the
    two together).
    """

    LIMIT = 100_000  # entries per cache: bounded memory on a capture of random names

    def __init__(self) -> None:
        self._strings: dict[str, str] = {}  # JSON text of names, addresses, types, files
        self._questions: dict[tuple[str, str, str], str] = {}
        self._ends: dict[tuple[int, str], tuple[Client, str]] = {}
        # Latencies are whole microseconds: a few thousand values, each written as text once
        # (a float's repr is a third of a microsecond; a lookup a tenth).
        self._latencies: dict[float, str] = {}
        self._resolvers: dict[int, tuple[dict, str]] = {}

    def _str(self, text: str) -> str:
        hit = self._strings.get(text)
        if hit is None:
            if len(self._strings) >= self.LIMIT:
                self._strings.clear()
            hit = self._strings[text] = _enc(text)
        return hit

    def _latency(self, ms: float) -> str:
        text = repr(ms)
        if ms > 0.0:  # (-0.0 and 0.0 are one key but two texts; nan is never found)
            if len(self._latencies) >= self.LIMIT:
                self._latencies.clear()
            self._latencies[ms] = text
        return text

    def _question(self, qname: str, qtype: str, iface: str) -> str:
        """``"qname":…,"qtype":…,"iface":…``: the same few texts, line after line."""
        key = (qname, qtype, iface)
        hit = self._questions.get(key)
        if hit is None:
            if len(self._questions) >= self.LIMIT:
                self._questions.clear()
            hit = self._questions[key] = (
                f'"qname":{_enc(qname)},"qtype":{_enc(qtype)},"iface":{_enc(iface)}')
        return hit

    def _end(self, c: Client, observed_at: str) -> str:
        key = (id(c), observed_at)
        hit = self._ends.get(key)
        if hit is not None and hit[0] is c:
            return hit[1]
        if len(self._ends) >= self.LIMIT:
            self._ends.clear()
        client = json.dumps(client_json(c), separators=(",", ":"), ensure_ascii=False)
        text = f'"observed_at":{_enc(observed_at)},"client":{client}}}\n'
        self._ends[key] = (c, text)  # holding ``c`` keeps its id unique
        return text

    def _resolver(self, resolver: dict) -> tuple[dict, str]:
        """``"resolver":{…},"seq":`` would repeat per line: its text, once per resolver
        dict (the classifier hands out one per address), placed before ``"seq"``."""
        if len(self._resolvers) >= self.LIMIT:
            self._resolvers.clear()
        hit = self._resolvers[id(resolver)] = (
            resolver, '"resolver":' + json.dumps(resolver, separators=(",", ":"),
                                                 ensure_ascii=False) + ",")
        return hit

    def line(self, a: Attributed) -> str:
        if a.served or a.link is not None or a.services or a.event.truncated:
            return ndjson_line(a)
        ev = a.event
        get = self._strings.get
        src = get(ev.src) or self._str(ev.src)
        dst = get(ev.dst) or self._str(ev.dst)
        question = (self._questions.get((ev.qname, ev.qtype, ev.iface))
                    or self._question(ev.qname, ev.qtype, ev.iface))
        hit = self._ends.get((id(a.client), ev.observed_at))
        end = hit[1] if hit is not None and hit[0] is a.client else self._end(
            a.client, ev.observed_at)
        pre = ""
        if ev.resolver is not None:
            res = self._resolvers.get(id(ev.resolver))
            if res is None or res[0] is not ev.resolver:
                res = self._resolver(ev.resolver)
            pre = res[1]
        if ev.qr == "response":
            answers = ",".join([_enc(x) for x in ev.answers])
            lat = ev.latency_ms
            if lat is None:
                lat = "null"
            elif type(lat) is float:  # (an int's text is not its float's: 12 is not 12.0)
                lat = self._latencies.get(lat) or self._latency(lat)
            else:
                lat = repr(lat)
            rcode = "null" if ev.rcode is None else (get(ev.rcode) or self._str(ev.rcode))
            answers = ("" if ev.iface == LOG_ROUTE_IFACE else f'"answers":[{answers}],')
            return (f'{{"type":"dns","ts":{ev.ts!r},"qr":"response","proto":"{ev.proto}",'
                    f'"src":{src},"sport":{ev.sport},"dst":{dst},"dport":{ev.dport},'
                    f'"id":{ev.id},{question},"rcode":{rcode},'
                    f'{answers}"latency_ms":{lat},{pre}"seq":{ev.seq},{end}')
        return (f'{{"type":"dns","ts":{ev.ts!r},"qr":"{ev.qr}","proto":"{ev.proto}",'
                f'"src":{src},"sport":{ev.sport},"dst":{dst},"dport":{ev.dport},'
                f'"id":{ev.id},{question},{pre}"seq":{ev.seq},{end}')


# ---- live lines -----------------------------------------------------------------------

LIVE_COLUMNS = ("TIME", "NAMESPACE", "CLIENT", "WORKLOAD", "QNAME", "QTYPE", "RCODE",
                "ANSWERS", "LATENCY", "SEEN-AT", "NOTE")
LIVE_WIDTHS = (12, 12, 28, 20, 28, 5, 8, 16, 8, 24, 0)
WIDE_LIVE_COLUMNS = (*LIVE_COLUMNS[:3], "IP", *LIVE_COLUMNS[3:9], "SERVER", *LIVE_COLUMNS[9:])
WIDE_LIVE_WIDTHS = (*LIVE_WIDTHS[:3], 15, *LIVE_WIDTHS[3:9], 15, *LIVE_WIDTHS[9:])


def _row(cells: tuple[str, ...], widths: tuple[int, ...]) -> str:
    parts = [c.ljust(w) for c, w in zip(cells, widths, strict=True)]
    return "  ".join(parts).rstrip() + "\n"


def live_header(wide: bool = False) -> str:
    if wide:
        return _row(WIDE_LIVE_COLUMNS, WIDE_LIVE_WIDTHS)
    return _row(LIVE_COLUMNS, LIVE_WIDTHS)


def live_cells(query: Attributed | None, response: Attributed | None,
               wide: bool = False) -> tuple[str, ...]:
    """The cells of one exchange's line: the query's time and client, the reply's outcome.

    ``response`` None: no answer was seen; ``query`` None: the capture saw only the answer.
    """
    first = query or response
    assert first is not None
    ev = first.event
    ns, pod, workload, _node = client_cells(first.client)
    services = (response.services if response is not None else None) or first.services
    if response is not None:
        r = response.event
        rcode = r.rcode or "-"
        answers = ",".join([_svc(x, services) for x in r.answers]) or "-"
        lat = latency(r.latency_ms)
    else:
        rcode, answers, lat = "-", "-", "-"
    note = _note(query, response)
    res = ev.resolver
    if res is not None and res["bypass"]:
        note = f"BYPASS to {res['ip']} ({res['kind']})" + (f"; {note}" if note else "")
    cells = (clock_ms(ev.ts), ns, pod, workload, ev.qname, ev.qtype, rcode, answers, lat,
             ev.observed_at or "-", note)
    if wide:
        server = _svc(ev.dst if ev.qr == "query" else ev.src, services)
        cells = (*cells[:3], first.client.ip, *cells[3:9], server, *cells[9:])
    return cells


def _svc(ip: str, services: dict[str, str] | None) -> str:
    """``svc/NS/NAME`` for an address that is a Service, else the address."""
    if services:
        name = services.get(ip)
        if name is not None:
            return f"svc/{name}"
    return ip


def live_line(query: Attributed | None, response: Attributed | None, wide: bool = False) -> str:
    """One exchange's line at the fixed widths (``-o wide``'s layout: every text whole)."""
    return _row(live_cells(query, response, wide), WIDE_LIVE_WIDTHS if wide else LIVE_WIDTHS)


# How each live column gives way when the terminal is narrow: (least, weight, most).
_LIVE_FIT = {
    "TIME": (12, 1.0, 12), "NAMESPACE": (6, 0.8, 20), "CLIENT": (10, 2.0, 56),
    "WORKLOAD": (8, 1.2, 40), "QNAME": (12, 2.5, 64), "QTYPE": (5, 1.0, 5),
    "RCODE": (8, 1.0, 8), "ANSWERS": (7, 1.0, 40), "LATENCY": (7, 1.0, 7),
    "SEEN-AT": (8, 0.7, 48), "NOTE": (11, 1.5, 64),
}


class LiveLayout:
    """The live table's columns, set by the first lines printed and the terminal's width.

    A live table cannot wait for all its rows: the widths are set from the first batch of
    lines (what the captures delivered first) within ``width``, spare room shared out so
    later, longer texts mostly fit; a text that does not is shortened in the middle, and
    no line is longer than ``width``. ``-o wide`` keeps every text whole at fixed widths.
    """

    def __init__(self, wide: bool = False, width: int = columns.NOT_A_TTY_WIDTH) -> None:
        self.wide = wide
        self.width = width
        self.widths: list[int] | None = None

    def lines(self, pairs: list[tuple[Attributed | None, Attributed | None]]) -> str:
        """The lines of finished exchanges, the header before the first ones."""
        return self.rows([live_cells(q, r, self.wide) for q, r in pairs])

    def rows(self, rows: list[tuple[str, ...]]) -> str:
        """Lines of cells in the live columns (exchanges, encrypted DNS attempts)."""
        if not rows:
            return ""
        if self.wide:
            head = live_header(True) if self.widths is None else ""
            self.widths = list(WIDE_LIVE_WIDTHS)
            return head + "".join(_row(cells, WIDE_LIVE_WIDTHS) for cells in rows)
        head = ""
        if self.widths is None:
            cols = []
            for i, name in enumerate(LIVE_COLUMNS):
                least, weight, most = _LIVE_FIT[name]
                if name in ("TIME", "QTYPE", "RCODE", "LATENCY"):
                    cols.append(columns.Column(name, least, least, weight, most, least, True))
                else:
                    cols.append(columns.Column.of(name, [c[i] for c in rows], least, weight,
                                                  most))
            self.widths = columns.fit(cols, self.width, spare=True)
            head = columns.row(LIVE_COLUMNS, self.widths)
        return head + "".join(columns.row(cells, self.widths) for cells in rows)


def encrypted_cells(record: dict, client: Client, observed_at: str,
                    wide: bool = False) -> tuple[str, ...]:
    """An encrypted DNS attempt (a SYN to 853, or to a public DoH resolver on 443) in the live
    columns: the destination stands where the name would, the protocol where the type would."""
    ns, pod, workload, _node = client_cells(client)
    cells = (clock_ms(record["ts"]), ns, pod, workload, f"{record['dst']}:{record['dport']}",
             record["protocol"].upper(), "-", "-", "-", observed_at or "-",
             "ENCRYPTED DNS attempt")
    if wide:
        cells = (*cells[:3], client.ip, *cells[3:9], record["dst"], *cells[9:])
    return cells


def encrypted_json(record: dict, client: Client, observed_at: str) -> dict[str, Any]:
    """An ``encrypted-dns`` record for -o ndjson/json: the agent's fields and the client."""
    out = {"type": "encrypted-dns", "ts": record["ts"], "protocol": record["protocol"],
           "src": record["client"], "sport": record["sport"], "dst": record["dst"],
           "dport": record["dport"], "seq": record.get("seq", 0), "observed_at": observed_at,
           "client": client_json(client)}
    return out


def _note(query: Attributed | None, response: Attributed | None) -> str:
    link = query.link if query is not None else None
    if link is not None:
        what = "upstream" if link.upstream else "forwarded"
        if link.causes:
            return f"{what} for " + ", ".join(describe_client(c) for c in link.causes)
        return f"{what}, cause not seen"
    if response is not None and response.served:
        return response.served
    if response is None:
        return "no response"
    if response.event.truncated:
        return "cut by the snap length"
    return ""


# ---- the summary table ----------------------------------------------------------------


def report_clock(clients: list[ClientStats], links: list[Link]) -> Callable[[float], str]:
    """How the summary and the upstream lookups under it print times: ``clock`` (HH:MM:SS)
    while they fall on one UTC day, as a live trace's do; a capture that spans midnight or
    days gets the date too, or a LAST could read as earlier than its FIRST."""
    days = {int(t // 86400) for cs in clients for t in (cs.first, cs.last)}
    days.update(int(lk.ts // 86400) for lk in links if lk.upstream)
    if len(days) <= 1:
        return clock
    return lambda ts: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


# How each summary column gives way when the terminal is narrow: (least, weight).
_SUMMARY_FIT = {
    "NAMESPACE": (9, 0.8), "POD": (12, 2.0), "WORKLOAD": (8, 1.5), "NODE": (6, 0.8),
    "NAMES": (16, 1.5), "QTYPES": (6, 1.2), "RCODES": (8, 1.5),
}


def summary_table(clients: list[ClientStats], wide: bool = False,
                  when: Callable[[float], str] | None = None, width: int | None = None,
                  services: dict[str, tuple[str, str]] | None = None) -> str:
    """The per-client table kubectl users expect: plain, upper-case headers.

    ``width``: no line longer than this; cells shortened in the middle, NAMES listing as
    many names as fit with "(+N more)". None (``-o wide``): every text whole.
    """
    headers = ["NAMESPACE", "POD", "WORKLOAD", "NODE", "NAMES", "COUNT", "QTYPES", "RCODES",
               "FIRST", "LAST"]
    if wide:
        headers += ["IPS", "DNS-SERVERS", "SEEN-AT", "P50", "P95"]
    rows = []
    when = when or report_clock(clients, [])
    for cs in clients:
        ns, pod, workload, node = client_cells(cs.client)
        row = [ns, pod, workload, node, _names_cell(cs), str(cs.count),
               counts(cs.total("qtypes")) or "-", counts(cs.total("rcodes")) or "-",
               when(cs.first), when(cs.last)]
        if wide:
            lat = cs.latencies()
            servers = cs.servers()
            names = {ip: "/".join(services[ip]) for ip in servers if ip in services} \
                if services else None
            row += [",".join(sorted(cs.ips)), ",".join(_svc(ip, names) for ip in servers),
                    ",".join(cs.observed_at()), latency(percentile(lat, 50)),
                    latency(percentile(lat, 95))]
        rows.append(row)
    if width is None:
        return tabulate(rows, headers=headers, tablefmt="plain", disable_numparse=True) + "\n"
    cols = []
    for i, name in enumerate(headers):
        cells = [r[i] for r in rows]
        if name == "NAMES":  # a list: it gives way by naming fewer, down to one and "+N more"
            full = max(map(len, cells))
            cells = [_names_cell(cs, 0) for cs in clients]
        col = columns.Column.of(name, cells, *_SUMMARY_FIT.get(name, (0, 1.0)))
        col.fixed = name not in _SUMMARY_FIT
        col.most = full if name == "NAMES" else col.need
        cols.append(col)
    widths = columns.fit(cols, width, spare=True)
    names_at = headers.index("NAMES")
    out = [columns.row(headers, widths)]
    for cs, cells in zip(clients, rows, strict=True):
        cells[names_at] = _names_cell(cs, widths[names_at])
        out.append(columns.row(cells, widths))
    return "".join(out)


def _names_cell(cs: ClientStats, width: int | None = None) -> str:
    """The names a client asked, busiest first: NAMES_SHOWN of them, or as many as fit in
    ``width`` with "(+N more)" (the first one shortened in the middle if it alone is too
    long); the JSON outputs list them all."""
    names = sorted(cs.names.values(), key=lambda n: (-n.count, n.name.lower()))
    shown = [n.name for n in names[:NAMES_SHOWN]]
    if width is not None:
        while len(shown) > 1 and (not width or len(_names_text(shown, len(names))) > width):
            shown.pop()
        text = _names_text(shown, len(names))
        if width and len(text) > width:
            more = text[len(shown[0]):]
            text = columns.shorten(shown[0], max(1, width - len(more))) + more
        return text
    return _names_text(shown, len(names))


def _names_text(shown: list[str], total: int) -> str:
    more = total - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def _wrap(text: str, width: int | None) -> str:
    """A note line, indented two, wrapped (further lines indented four) within ``width``."""
    if width is None:
        return f"  {text}\n"
    return textwrap.fill(text, width, initial_indent="  ", subsequent_indent="    ",
                         break_on_hyphens=False) + "\n"


def explanations(clients: list[ClientStats], width: int | None = None) -> str:
    """Why a client is not a plain pod: one line each, under the table."""
    lines = []
    for cs in clients:
        c = cs.client
        if c.kind != "pod" and c.reason:
            ips = ",".join(sorted(cs.ips))
            lines.append(_wrap(f"{describe_client(c)} [{ips}]: {c.reason}", width))
    for cs in clients:
        if cs.folded_names:
            folded = sorted((n for n in cs.names.values() if n.folded),
                            key=lambda n: (-n.count, n.name))
            shown = ", ".join(f"{n.name} ({n.count})" for n in folded[:3])
            more = f" and {len(folded) - 3} more" if len(folded) > 3 else ""
            lines.append(_wrap(f"{describe_client(cs.client)}: asked more than "
                               f"{aggregate.MAX_NAMES:,} names (or the trace more than "
                               f"{aggregate.MAX_NAMES_TOTAL:,}): the rest are counted under "
                               f"their parent domains: {shown}{more}", width))
    return ("Notes:\n" + "".join(lines)) if lines else ""


def links_text(links: list[Link], when: Callable[[float], str] | None = None,
               width: int | None = None) -> str:
    ups = [lk for lk in links if lk.upstream]
    if not ups:
        return ""
    when = when or report_clock([], ups)
    return "Upstream lookups:\n" + "".join(_wrap(describe_link(lk, when), width) for lk in ups)


def coverage_text(lines: list[str], width: int | None = None) -> str:
    """The pods a followed workload had during the run, when they changed."""
    if not lines:
        return ""
    return "Pods traced:\n" + "".join(_wrap(line, width) for line in lines)


# ---- the JSON document ----------------------------------------------------------------


def summary_json(clients: list[ClientStats]) -> list[dict[str, Any]]:
    out = []
    for cs in clients:
        names = []
        for n in sorted(cs.names.values(), key=lambda n: (-n.count, n.name.lower())):
            lat = sorted(n.latencies)
            names.append({
                "name": n.name,
                "count": n.count,
                "qtypes": dict(sorted(n.qtypes.items())),
                "rcodes": dict(sorted(n.rcodes.items())),
                "answers": list(n.answers),
                "first": iso(n.first),
                "last": iso(n.last),
                "observed_at": sorted(n.observed_at),
                "servers": sorted(n.servers),
                "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95),
                               "max": lat[-1] if lat else None},
                "served": dict(sorted(n.served.items())),
            })
            if n.folded:
                names[-1]["folded"] = True  # names past MAX_NAMES, under this parent
        lat = cs.latencies()
        out.append({
            "client": dict(client_json(cs.client), ips=sorted(cs.ips)),
            "count": cs.count,
            "first": iso(cs.first),
            "last": iso(cs.last),
            "qtypes": dict(sorted(cs.total("qtypes").items())),
            "rcodes": dict(sorted(cs.total("rcodes").items())),
            "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95)},
            "names": names,
        })
    return out


class EventSpool:
    """``-o json``'s events, kept on disk until the document is written at the end.

    A busy trace delivers millions of events; held as objects until the end they would take
    gigabytes. Each goes, as its final indented JSON text, into an unlinked temporary file
    (mode 0600, gone when closed: captured DNS is sensitive). A resolver's own query that
    has no cause yet is the exception (as for ``-o ndjson``'s held lines): linking may still
    add a late one, so it stays in memory and a marker holds its place. A link with a cause
    gets no more (``Linker._late_cause`` serves only links without one).
    """

    READ = 1 << 20  # characters read back at a time
    LIMIT = 100_000  # clients whose text is kept (a cache: cleared when full)

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (closed by close)
        self._held: dict[int, Attributed] = {}
        self._clients: dict[int, tuple[Client, str]] = {}
        self.count = 0

    def add(self, a: Attributed) -> None:
        sep = ",\n" if self.count else ""
        if a.link is not None and not a.link.causes:
            self._held[self.count] = a
            self._file.write(f"{sep}\0{self.count}\0")
        elif a.served or a.link is not None or a.services:
            self._file.write(sep + jsontext.element(event_json(a)))
        else:
            # Most events: the record's fields, then the client, whose text is the same for
            # every event of that client (the attributor hands out one object per address).
            hit = self._clients.get(id(a.client))
            client = hit[1] if hit is not None and hit[0] is a.client else self._client(a.client)
            self._file.write(sep + jsontext.element_ending(record_json(a.event), "client",
                                                           client))
        self.count += 1

    def _client(self, c: Client) -> str:
        if len(self._clients) >= self.LIMIT:
            self._clients.clear()
        text = jsontext.indented(client_json(c), jsontext.MEMBER_PAD)
        self._clients[id(c)] = (c, text)  # holding ``c`` keeps its id unique
        return text

    def write_array(self, out: TextIO) -> None:
        """The events as the body of a JSON array at depth 1 of an indent-2 document."""
        self._file.seek(0)
        marker = False  # is the part at hand a marker's number (else text)?
        rest = ""
        while chunk := self._file.read(self.READ):
            parts = (rest + chunk).split("\0")
            rest = parts.pop()  # unfinished: text goes out now, a number waits for its end
            for part in parts:
                out.write(jsontext.element(event_json(self._held[int(part)])) if marker else part)
                marker = not marker
            if not marker:
                out.write(rest)
                rest = ""

    def close(self) -> None:
        self._file.close()


def write_json_document(out: TextIO, meta: dict[str, Any], targets: list[dict[str, Any]],
                        clients: list[ClientStats], links: list[Link], events: EventSpool,
                        notices: list[str], extra: dict[str, Any] | None = None) -> None:
    """The ``-o json`` document, byte for byte what ``json.dumps(doc, indent=2)`` gives,
    with the events streamed from the spool."""
    doc = {
        "kind": "DnsTraceReport",
        "version": 1,
        "meta": meta,
        "targets": targets,
        "summary": summary_json(clients),
        "upstream": [link_json(lk) for lk in links],
        **(extra or {}),
        "notices": notices,
        "events": [],
    }
    # json.dumps(doc, indent=2) byte for byte (a test holds the two together), in half its
    # time: the summary of 10,000 clients is tens of MB of text.
    text = jsontext.indented(doc, "") + "\n"
    tail = "[]\n}\n"
    assert text.endswith('"events": ' + tail)
    out.write(text[:-len(tail)])
    if events.count:
        out.write("[\n")
        events.write_array(out)
        out.write("\n  ]\n}\n")
    else:
        out.write(tail)
