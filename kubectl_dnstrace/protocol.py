"""The versioned NDJSON wire format between the capture agent and the kubectl side.

The agent writes one JSON object per line on stdout; the pod-log API carries it home.
This module is the only place that knows the record shapes: the agent encodes with it,
the kubectl side decodes and validates with it. It is stdlib-only and runs on python3 >= 3.8
because it is shipped inside the agent (see DESIGN.md, "The agent"). The format is
specified for humans in docs/protocol.md.

Every record carries ``type`` and a strictly increasing ``seq``: a resumed log stream
drops what it has already seen by ``seq``, and a gap in ``seq`` is counted as loss.
"""

import json

PROTOCOL_VERSION = 1

RECORD_TYPES = ("hello", "dns", "agg", "stats", "error", "bye")
BYE_REASONS = ("deadline", "signal", "stop-file", "error", "end")
QR_VALUES = ("query", "response")
PROTOS = ("udp", "tcp")

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
}
# Fields a dns response record must have on top of the above.
RESPONSE_FIELDS = {"rcode": str, "answers": list, "latency_ms": _OPT_NUM}


class ProtocolError(ValueError):
    """A line from the agent is not a valid record of this protocol version."""


# One encoder for every record: json.dumps with non-default separators builds a new
# encoder per call, a cost the agent would pay per DNS message.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


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
        record = json.loads(line)
    except ValueError as exc:
        raise ProtocolError("not JSON: %s" % exc) from None
    validate(record)
    return record


def validate(record):
    """Raise ProtocolError unless ``record`` is a well-formed record."""
    if not isinstance(record, dict):
        raise ProtocolError("record is not a JSON object")
    rtype = record.get("type")
    if rtype not in REQUIRED_FIELDS:
        raise ProtocolError("unknown record type %r" % (rtype,))
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError("%s record without a valid seq" % rtype)
    _check_fields(record, REQUIRED_FIELDS[rtype], rtype)
    if rtype == "dns":
        if record["qr"] not in QR_VALUES:
            raise ProtocolError("dns record with qr=%r" % (record["qr"],))
        if record["proto"] not in PROTOS:
            raise ProtocolError("dns record with proto=%r" % (record["proto"],))
        if record["qr"] == "response":
            _check_fields(record, RESPONSE_FIELDS, "dns response")
    elif rtype == "hello" and record["protocol"] != PROTOCOL_VERSION:
        raise ProtocolError(
            "agent speaks protocol %r, this plugin speaks %d: use matching versions"
            % (record["protocol"], PROTOCOL_VERSION)
        )
    elif rtype == "bye" and record["reason"] not in BYE_REASONS:
        raise ProtocolError("bye record with reason=%r" % (record["reason"],))


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
