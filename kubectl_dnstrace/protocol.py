"""The versioned NDJSON wire format between the capture agent and the kubectl side.

The agent writes one JSON object per line on stdout; the pod-log API carries it home.
This module is the only place that knows the record shapes: the agent encodes with it,
the kubectl side decodes and validates with it. It is stdlib-only and runs on python3 >= 3.8
because it is shipped inside the agent (see DESIGN.md, "The agent"). The format is
specified for humans in docs/protocol.md.

Every record carries ``type`` and a strictly increasing ``seq``: a resumed log stream
drops what it has already seen by ``seq``, and a gap in ``seq`` is counted as loss.
"""

import binascii
import itertools
import json
from operator import itemgetter

PROTOCOL_VERSION = 1

RECORD_TYPES = ("hello", "dns", "agg", "stats", "error", "bye", "encrypted-dns")
BYE_REASONS = ("deadline", "signal", "stop-file", "error", "end")
QR_VALUES = ("query", "response")
PROTOS = ("udp", "tcp")
# An encrypted-dns record's protocol: DNS over TLS (TCP 853), DNS over HTTPS (443).
ENCRYPTED_PROTOCOLS = ("dot", "doh")

# Fields every record of a type must have, with the Python types accepted for each.
_NUM = (int, float)
_OPT_STR = (str, type(None))
_OPT_NUM = (int, float, type(None))
REQUIRED_FIELDS = {
    "hello": {"agent_version": str, "protocol": int, "interfaces": list, "filters": dict},
    "dns": {
        "ts": _NUM,
        "qr": str,
        "proto": str,
        "src": str,
        "sport": int,
        "dst": str,
        "dport": int,
        "id": int,
        "qname": str,
        "qtype": str,
        "iface": str,
    },
    "agg": {"ts": _NUM, "interval": _NUM, "groups": list},
    "stats": {"seen": int, "matched": int, "emitted": int, "drops": int},
    "error": {"message": str},
    "bye": {"reason": str},
    # Only from an agent started with --encrypted-dns (so an older plugin never meets one).
    "encrypted-dns": {"ts": _NUM, "protocol": str, "client": str, "sport": int, "dst": str,
                      "dport": int},
}
# Fields a dns response record must have on top of the above.
RESPONSE_FIELDS = {"rcode": str, "answers": list, "latency_ms": _OPT_NUM}
# Fields of each of an agg record's groups.
AGG_GROUP_FIELDS = {"client": str, "qname": str, "qtype": str, "rcode": _OPT_STR, "count": int}

# Record times are seconds since 1970 before the year 10000: every clock the kubectl side
# prints can show them. A line with another time (NaN, 1e400, -5) is refused, not shown
# as "nan" in a JSON line or left to stop the trace where a clock is drawn.
TS_MAX = 253402300800.0  # 10000-01-01T00:00:00Z
_INF = float("inf")


class ProtocolError(ValueError):
    """A line from the agent is not a valid record of this protocol version."""


# The fast check of a dns record (``_check_dns_fast``): its fields in one C-level fetch, and
# every combination of exact types json gives them that the full check accepts. ``type(x)``
# equality is stricter than the full check's ``isinstance`` (no bool, no subclasses), so
# whatever passes here passes there; whatever does not is judged by the full check.
_DNS_FAST_FIELDS = ("seq", *REQUIRED_FIELDS["dns"])
_dns_values = itemgetter(*_DNS_FAST_FIELDS)
_response_values = itemgetter(*RESPONSE_FIELDS)


def _exact_type_tuples(fields):
    choices = [t if isinstance(t, tuple) else (t,) for t in fields]
    return frozenset(itertools.product(*choices))


_DNS_TYPES = _exact_type_tuples([int, *REQUIRED_FIELDS["dns"].values()])
_RESPONSE_TYPES = _exact_type_tuples(RESPONSE_FIELDS.values())
_STR = frozenset((str,))


def _not_json(name):
    """NaN and Infinity: Python's json reads them, JSON has no such numbers."""
    raise ValueError("%s is not a JSON number" % name)


# One encoder for every record: json.dumps with non-default separators builds a new
# encoder per call, a cost the agent would pay per DNS message.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
# json.loads(s) is this decoder's decode(s), which matches a whitespace regex on both ends of
# the line; decode() strips the line first, so raw_decode plus an end check says the same
# for about a microsecond less per line (a live trace decodes every line it receives).
_raw_decode = json.JSONDecoder(parse_constant=_not_json).raw_decode


def encode(record):
    """Serialise one record as a single line (no trailing newline), compact and ASCII-safe."""
    return _ENCODER.encode(record)


def decode(line):
    """Parse and validate one line; return the record dict or raise ProtocolError.

    Validation is strict on the fields the kubectl side relies on and lenient on extras,
    so a newer agent may add fields without breaking an older plugin.
    """
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("record is not UTF-8: %s" % exc) from None
    line = line.strip()
    if not line:
        raise ProtocolError("empty line")
    try:
        record, end = _raw_decode(line)
    except ValueError as exc:
        raise ProtocolError("not JSON: %s" % exc) from None
    if end != len(line):
        raise ProtocolError("not JSON: extra data after the record at char %d" % end)
    validate(record)
    return record


def validate(record):
    """Raise ProtocolError unless ``record`` is a well-formed record.

    Nearly every line of a trace is a ``dns`` record as the agent writes it: those pass a
    fast check; anything it does not accept gets the full check, which names the fault.
    """
    if type(record) is dict and record.get("type") == "dns" and _check_dns_fast(record):
        return
    _check_record(record)


def _raw_ok(raw):
    """``raw`` (the packet, with ``--pcap``) is decoded on the kubectl side: it must be
    base64 text, or a hostile agent line would end the trace with a decoding error."""
    try:
        binascii.a2b_base64(raw.encode("ascii"))
    except (AttributeError, ValueError, UnicodeEncodeError, binascii.Error):
        return False
    return isinstance(raw, str)


def _check_raw(raw):
    if not _raw_ok(raw):
        raise ProtocolError("dns record has a bad raw packet: %s" % repr(raw)[:60])


def _check_record(record):
    """The full check of any record: names the first fault it finds."""
    if not isinstance(record, dict):
        raise ProtocolError("record is not a JSON object")
    rtype = record.get("type")
    if not isinstance(rtype, str) or rtype not in REQUIRED_FIELDS:  # a list is unhashable
        raise ProtocolError("unknown record type %r" % (rtype,))
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError("%s record without a valid seq" % rtype)
    _check_fields(record, REQUIRED_FIELDS[rtype], rtype)
    if rtype in ("dns", "agg", "encrypted-dns") and not 0 <= record["ts"] < TS_MAX:
        raise ProtocolError("%s record has a bad 'ts': %r (seconds since 1970, before the "
                            "year 10000)" % (rtype, record["ts"]))
    if rtype == "dns":
        if record["qr"] not in QR_VALUES:
            raise ProtocolError("dns record with qr=%r" % (record["qr"],))
        if record["proto"] not in PROTOS:
            raise ProtocolError("dns record with proto=%r" % (record["proto"],))
        if "raw" in record:
            _check_raw(record["raw"])
        if record["qr"] == "response":
            _check_fields(record, RESPONSE_FIELDS, "dns response")
            latency = record["latency_ms"]
            if latency is not None and not 0 <= latency < _INF:
                raise ProtocolError("dns response record has a bad 'latency_ms': %r" % latency)
            # Answers become keys and text on the kubectl side: anything else is hostile.
            for answer in record["answers"]:
                if not isinstance(answer, str):
                    raise ProtocolError("dns response record has a bad answer: %r" % (answer,))
    elif rtype == "hello" and record["protocol"] != PROTOCOL_VERSION:
        raise ProtocolError(
            "agent speaks protocol %r, this plugin speaks %d: use matching versions"
            % (record["protocol"], PROTOCOL_VERSION)
        )
    elif rtype == "agg":
        _check_agg(record)
    elif rtype == "encrypted-dns" and record["protocol"] not in ENCRYPTED_PROTOCOLS:
        raise ProtocolError("encrypted-dns record with protocol=%r" % (record["protocol"],))
    elif rtype == "bye" and record["reason"] not in BYE_REASONS:
        raise ProtocolError("bye record with reason=%r" % (record["reason"],))


def _check_agg(record):
    """Groups become counts, keys and text on the kubectl side: each must be what the agent
    writes (one a second, so a check of every field costs nothing)."""
    if not 0 <= record["interval"] < _INF:
        raise ProtocolError("agg record has a bad 'interval': %r" % (record["interval"],))
    total = record.get("total", 0)
    if type(total) is not int or total < 0:
        raise ProtocolError("agg record has a bad 'total': %r" % (total,))
    for group in record["groups"]:
        if not isinstance(group, dict):
            raise ProtocolError("agg record has a group that is not an object: %r"
                                % (group,))
        _check_fields(group, AGG_GROUP_FIELDS, "agg group")
        if group["count"] < 0:
            raise ProtocolError("agg group record has a bad 'count': %r" % group["count"])


def _check_dns_fast(record):
    """``_check_dns_types``, and a ``raw`` packet, when there is one, that decodes."""
    return _check_dns_types(record) and ("raw" not in record or _raw_ok(record["raw"]))


def _check_dns_types(record):
    """True when ``record`` is a valid dns record of exactly json's types: one fetch of
    the fields and one set lookup of their types instead of a Python loop of isinstance
    calls (the loop cost more than parsing the JSON). False means "ask the full check"."""
    try:
        values = _dns_values(record)
    except KeyError:
        return False
    # values: seq, ts, qr, proto, ... in the order of _DNS_FAST_FIELDS
    if (tuple(map(type, values)) not in _DNS_TYPES or values[0] < 0
            or not 0 <= values[1] < TS_MAX or values[3] not in PROTOS):
        return False
    qr = values[2]
    if qr == "query":
        return True
    if qr != "response":
        return False
    try:
        values = _response_values(record)
    except KeyError:
        return False
    return (tuple(map(type, values)) in _RESPONSE_TYPES and set(map(type, values[1])) <= _STR
            and (values[2] is None or 0 <= values[2] < _INF))



def _check_fields(record, fields, what):
    for name, types in fields.items():
        if name not in record:
            raise ProtocolError("%s record is missing %r" % (what, name))
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ProtocolError("%s record has a bad %r: %r" % (what, name, value))


def hello(seq, agent_version, interfaces, filters, **extra):
    """The first record an agent writes."""
    rec = {
        "type": "hello",
        "seq": seq,
        "agent_version": agent_version,
        "protocol": PROTOCOL_VERSION,
        "interfaces": list(interfaces),
        "filters": dict(filters),
    }
    rec.update(extra)
    return rec


def stats(seq, seen, matched, emitted, drops, **extra):
    rec = {"type": "stats", "seq": seq, "seen": seen, "matched": matched,
           "emitted": emitted, "drops": drops}
    rec.update(extra)
    return rec


def error(seq, message, **extra):
    rec = {"type": "error", "seq": seq, "message": message}
    rec.update(extra)
    return rec


def bye(seq, reason, **extra):
    rec = {"type": "bye", "seq": seq, "reason": reason}
    rec.update(extra)
    return rec


def encrypted_dns(seq, ts, kind, client, sport, dst, dport, **extra):
    """A connection attempt to an encrypted DNS resolver, seen from its SYN: ``kind`` is
    "dot" (TCP 853) or "doh" (443 to a known public resolver)."""
    rec = {"type": "encrypted-dns", "seq": seq, "ts": ts, "protocol": kind, "client": client,
           "sport": sport, "dst": dst, "dport": dport}
    rec.update(extra)
    return rec
