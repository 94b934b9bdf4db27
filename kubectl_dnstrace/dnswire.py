"""DNS messages from wire bytes: header, questions, records, name compression and EDNS.

This is the only module that reads DNS wire format. It runs inside the capture agent, so it
is stdlib-only and python3 >= 3.8, and it reads whatever arrives on port 53 of a pod: a
hostile or broken message must cost bounded time and memory and surface as one exception
type, :class:`DnsParseError`, never an IndexError, struct.error or UnicodeError that would
kill the capture loop.

Rules shared with dnspython (so the two agree on every message they both accept):

* Compression pointers are offsets into the DNS message, and each pointer must point
  strictly before the start of the label run that contains it. Pointer targets therefore
  strictly decrease, which makes loops impossible; a hop limit bounds the work anyway.
* A name is at most 255 octets on the wire; label types 0x40 and 0x80 are refused.
* The OPT pseudo-record (EDNS) is only valid once, owned by the root, in the additional
  section; it is moved out of ``additional`` into :attr:`Message.edns`, and its extended
  rcode bits are combined into :attr:`Message.rcode`.
* A TTL with the top bit set counts as 0 (RFC 2181, section 8).
* Text forms follow dnspython/dig: names escape ``"().;\\@$`` with a backslash and bytes
  outside printable ASCII as ``\\DDD``; TXT strings are quoted; types this module does not
  render are shown in the RFC 3597 generic form ``\\# <len> <hex>``.

Differences: names and name-valued rdata carry no trailing dot (the root is ``"."``), and
octets after the last record are ignored rather than refused (some middleboxes pad UDP
payloads; the records are still good).
"""

import socket
import struct
from bisect import bisect_right as _bisect_right

__all__ = [
    "DnsParseError",
    "Edns",
    "Message",
    "Question",
    "Record",
    "answer_texts",
    "parse_message",
    "parse_question",
    "quick_response",
    "rcode_code",
    "rcode_name",
    "type_code",
    "type_name",
]

# --- names of types and rcodes --------------------------------------------------------------

# IANA resource record types, spelled as dnspython and dig spell them.
_TYPE_NAMES = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR",
    10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT", 17: "RP",
    18: "AFSDB", 19: "X25", 20: "ISDN", 21: "RT", 22: "NSAP", 23: "NSAP-PTR", 24: "SIG",
    25: "KEY", 26: "PX", 27: "GPOS", 28: "AAAA", 29: "LOC", 30: "NXT", 33: "SRV", 35: "NAPTR",
    36: "KX", 37: "CERT", 38: "A6", 39: "DNAME", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP",
    45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3",
    51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 56: "NINFO", 59: "CDS",
    60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS",
    66: "DSYNC", 67: "HHIT", 68: "BRID", 99: "SPF", 103: "UNSPEC", 104: "NID", 105: "L32",
    106: "L64", 107: "LP", 108: "EUI48", 109: "EUI64", 128: "NXNAME", 249: "TKEY", 250: "TSIG",
    251: "IXFR", 252: "AXFR", 253: "MAILB", 254: "MAILA", 255: "ANY", 256: "URI", 257: "CAA",
    258: "AVC", 260: "AMTRELAY", 261: "RESINFO", 262: "WALLET", 32768: "TA", 32769: "DLV",
}  # fmt: skip
_TYPE_CODES = {name: code for code, name in _TYPE_NAMES.items()}

# Message rcodes as dig names them: the header's four bits plus the EDNS extended ones that
# servers actually send. 17-22 are TSIG/TKEY error codes, which live inside those records
# and never in a message's rcode, so they are shown as RCODE<n> like any other number.
_RCODE_NAMES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
    16: "BADVERS", 23: "BADCOOKIE",
}  # fmt: skip
_RCODE_CODES = {name: code for code, name in _RCODE_NAMES.items()}


def type_name(code):
    """Mnemonic of an RR type code: ``1 -> "A"``, unknown ``65534 -> "TYPE65534"``."""
    name = _TYPE_NAMES.get(code)
    return name if name is not None else "TYPE%d" % code


def type_code(name):
    """RR type code of a mnemonic (case-insensitive; ``"TYPE<n>"`` and ``"<n>"`` accepted).

    Raises ValueError for names it does not know, so command-line parsing can say so.
    """
    return _code_of(name, _TYPE_CODES, "TYPE", "RR type")


def rcode_name(code):
    """Mnemonic of a response code: ``3 -> "NXDOMAIN"``, unknown ``30 -> "RCODE30"``."""
    name = _RCODE_NAMES.get(code)
    return name if name is not None else "RCODE%d" % code


def rcode_code(name):
    """Response code of a mnemonic (case-insensitive; ``"RCODE<n>"`` and ``"<n>"`` accepted)."""
    return _code_of(name, _RCODE_CODES, "RCODE", "response code")


def _code_of(name, table, prefix, what):
    text = str(name).strip().upper()
    code = table.get(text)
    if code is not None:
        return code
    digits = text[len(prefix) :] if text.startswith(prefix) else text
    if digits.isdigit() and digits.isascii():
        code = int(digits)
        if code <= 0xFFFF if prefix == "TYPE" else code <= 0xFFF:
            return code
    raise ValueError("unknown %s %r: use a mnemonic or %s<number>" % (what, name, prefix))


# --- the parsed message ----------------------------------------------------------------------


class DnsParseError(ValueError):
    """The bytes are not a DNS message this parser accepts; ``offset`` says where it broke."""

    def __init__(self, reason, offset=None):
        if offset is not None:
            reason = "%s (at offset %d)" % (reason, offset)
        ValueError.__init__(self, reason)
        self.offset = offset


class _Plain:
    """Equality and repr over __slots__, for tests and debugging."""

    __slots__ = ()

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, s) == getattr(other, s) for s in self.__slots__
        )

    def __ne__(self, other):
        return not self == other

    __hash__ = None

    def __repr__(self):
        return "%s(%s)" % (
            type(self).__name__,
            ", ".join("%s=%r" % (s, getattr(self, s)) for s in self.__slots__),
        )


class Question(_Plain):
    """One entry of the question section."""

    __slots__ = ("name", "qtype", "qclass")  # noqa: RUF023 (field order reads better)

    def __init__(self, name, qtype, qclass):
        self.name = name
        self.qtype = qtype
        self.qclass = qclass


class Record(_Plain):
    """One resource record; ``rdata`` is its text form (see the module docstring)."""

    __slots__ = ("name", "rtype", "rclass", "ttl", "rdata")  # noqa: RUF023 (field order reads better)

    def __init__(self, name, rtype, rclass, ttl, rdata):
        self.name = name
        self.rtype = rtype
        self.rclass = rclass
        self.ttl = ttl
        self.rdata = rdata


class Edns(_Plain):
    """The OPT pseudo-record (RFC 6891): its class is the UDP payload size and its TTL
    carries the upper eight rcode bits, the EDNS version and the flags (DO is the top bit)."""

    __slots__ = ("udp_size", "ext_rcode", "version", "do", "flags", "options")  # noqa: RUF023 (field order reads better)

    def __init__(self, udp_size, ext_rcode, version, do, flags, options):
        self.udp_size = udp_size
        self.ext_rcode = ext_rcode
        self.version = version
        self.do = do
        self.flags = flags
        self.options = options


class Message(_Plain):
    """A whole DNS message. Header bits are read from ``flags`` on access; ``rcode`` already
    includes the EDNS extended bits, so 16 is BADVERS, not NOERROR. ``authority`` is None
    when the parse was asked to step over that section. ``cut`` is True for a message read
    with ``partial=True`` whose records ended before its counts said (see
    :func:`parse_message`)."""

    __slots__ = ("id", "flags", "rcode", "questions", "answers", "authority", "additional", "edns", "cut")  # noqa: RUF023 (field order reads better)

    def __init__(self, id, flags, rcode, questions, answers, authority, additional, edns,
                 cut=False):
        self.id = id
        self.flags = flags
        self.rcode = rcode
        self.questions = questions
        self.answers = answers
        self.authority = authority
        self.additional = additional
        self.edns = edns
        self.cut = cut

    @property
    def qr(self):
        return bool(self.flags & 0x8000)

    @property
    def opcode(self):
        return (self.flags >> 11) & 0xF

    @property
    def aa(self):
        return bool(self.flags & 0x0400)

    @property
    def tc(self):
        return bool(self.flags & 0x0200)

    @property
    def rd(self):
        return bool(self.flags & 0x0100)

    @property
    def ra(self):
        return bool(self.flags & 0x0080)

    @property
    def ad(self):
        return bool(self.flags & 0x0020)

    @property
    def cd(self):
        return bool(self.flags & 0x0010)


def answer_texts(msg):
    """The answer section's rdata texts, in order, like ``dig +short``."""
    return [r.rdata for r in msg.answers]


# --- names -----------------------------------------------------------------------------------

_NAME_SPECIAL = b'"().;\\@$'
# Bytes a name label shows as themselves; all others are escaped.
_NAME_SAFE = bytes(c for c in range(0x21, 0x7F) if c not in _NAME_SPECIAL)
_NAME_ESCAPES = tuple(
    "\\" + chr(c) if c in _NAME_SPECIAL else chr(c) if 0x20 < c < 0x7F else "\\%03d" % c
    for c in range(256)
)
# TXT character-strings: only '"' and '\' get a backslash; space is literal inside quotes.
_TXT_SAFE = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')
_TXT_ESCAPES = tuple(
    "\\" + chr(c) if c in b'"\\' else chr(c) if 0x20 <= c < 0x7F else "\\%03d" % c
    for c in range(256)
)

MAX_NAME_OCTETS = 255
# b"." * k: what a name of k + 1 safe labels leaves after deleting its safe bytes.
_DOTS = tuple(b"." * k for k in range(MAX_NAME_OCTETS // 2 + 1))
# Pointer targets strictly decrease, so chains end anyway; a real name needs one or two hops.
MAX_POINTER_HOPS = 16


def _name_text(parts):
    """Text of a name from its wire labels; ASCII fast path, escaping only when needed."""
    if not parts:
        return "."
    raw = b".".join(parts)
    # One pass checks both that every byte is safe and that no label holds a dot.
    if raw.translate(None, _NAME_SAFE) != _DOTS[len(parts) - 1]:
        esc = _NAME_ESCAPES
        return ".".join(["".join([esc[c] for c in label]) for label in parts])
    return raw.decode("ascii")


# Keys, in a message's name cache, of the names read by the fast path (see below): their
# offsets, ascending because names are read in stream order, and their details.
_PLAIN_AT = -1
_PLAIN = -2


def _new_name_cache():
    return {_PLAIN_AT: [], _PLAIN: []}


def _cached_suffix(buf, cache, target):
    """The cache entry for the name at ``target``, made on demand when ``target`` is a label
    inside a name the fast path read: its text is then a slice of that name's text. Found
    by bisection, so a message of many names and many stray pointers stays linear."""
    hit = cache.get(target)
    if hit is not None:
        return hit
    i = _bisect_right(cache[_PLAIN_AT], target) - 1
    if i < 0:
        return None
    origin, labels_end, text, tail_octets, last, tail_hops = cache[_PLAIN][i]
    if not origin < target < labels_end:
        return None
    pos = origin
    while pos < target:
        pos += buf[pos] + 1
    if pos != target:
        return None
    hit = (text[target - origin :], labels_end - target + tail_octets, last, tail_hops)
    cache[target] = hit
    return hit


def _read_name(buf, pos, cache):
    """Decode the name at ``pos``; return (text, offset just after it in the stream).

    ``cache`` (one per message, from :func:`_new_name_cache`) maps the offset of every label
    run already decoded to ``(text, octets, last offset read in that run, pointer hops
    after it)``, so the usual response, whose names point into the question, decodes each
    suffix once. An entry is reused only where decoding it afresh would pass the same checks.

    This function reads the common shapes inline: labels, then either the root or a pointer
    to a known suffix. Everything else, errors included, goes to
    :func:`_read_compressed_name`.
    """
    origin = pos
    try:
        n = buf[pos]
        parts = []
        while n:
            if n > 63:
                if n < 0xC0:
                    return _read_compressed_name(buf, origin, cache)
                hit = _cached_suffix(buf, cache, ((n & 0x3F) << 8) | buf[pos + 1])
                if (
                    hit is None
                    or hit[2] >= origin
                    or hit[3] >= MAX_POINTER_HOPS
                    or pos - origin + hit[1] > MAX_NAME_OCTETS
                ):
                    return _read_compressed_name(buf, origin, cache)
                if not parts:
                    cache[pos] = (hit[0], hit[1], pos + 1, hit[3] + 1)
                    return hit[0], pos + 2
                raw = b".".join(parts)
                if raw.translate(None, _NAME_SAFE) == _DOTS[len(parts) - 1]:
                    text = raw.decode("ascii")
                    if hit[0] != ".":
                        text = text + "." + hit[0]
                    cache[_PLAIN_AT].append(origin)
                    cache[_PLAIN].append((origin, pos, text, hit[1], pos + 1, hit[3] + 1))
                else:
                    text = _name_text(parts)
                    if hit[0] != ".":
                        text = text + "." + hit[0]
                cache[origin] = (text, pos - origin + hit[1], pos + 1, hit[3] + 1)
                return text, pos + 2
            start = pos + 1
            pos = start + n
            parts.append(buf[start:pos])
            n = buf[pos]
    except IndexError:
        return _read_compressed_name(buf, origin, cache)
    if pos - origin >= MAX_NAME_OCTETS:
        raise DnsParseError("name longer than 255 octets", origin)
    if not parts:
        return ".", pos + 1
    raw = b".".join(parts)
    if raw.translate(None, _NAME_SAFE) == _DOTS[len(parts) - 1]:
        text = raw.decode("ascii")
        cache[_PLAIN_AT].append(origin)
        cache[_PLAIN].append((origin, pos, text, 1, pos, 0))
    else:
        text = _name_text(parts)
    cache[origin] = (text, pos - origin + 1, pos, 0)
    return text, pos + 1


def _read_compressed_name(buf, pos, cache):
    """The general case of :func:`_read_name`: iterative, with dnspython's bounds. After a
    pointer, reading may not run into the label run it came from, and the next pointer must
    point before that run's start; so pointer targets strictly decrease and cannot loop.
    """
    size = len(buf)
    if pos >= size:
        raise DnsParseError("name runs past the end of the message", pos)
    n = buf[pos]
    origin = pos
    parts = []
    octets = 1  # the root label
    after = -1
    limit = size
    floor = pos
    hops = 0
    # Label runs of this name: (offset, index into parts, octets before it, hops before it,
    # last offset read in it).
    runs = []
    run_parts = 0
    run_octets = 0
    tail = None
    while True:
        if n < 64:
            if n == 0:
                runs.append((floor, run_parts, run_octets, hops, pos))
                break
            start = pos + 1
            pos = start + n
            octets += n + 1
            if octets > MAX_NAME_OCTETS:
                raise DnsParseError("name longer than 255 octets", origin)
            parts.append(buf[start:pos])
        elif n >= 0xC0:
            if pos + 1 >= limit:
                raise DnsParseError("compression pointer cut short", pos)
            target = ((n & 0x3F) << 8) | buf[pos + 1]
            if target >= floor:
                raise DnsParseError(
                    "compression pointer to %d does not point backwards" % target, pos
                )
            if after < 0:
                after = pos + 2
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise DnsParseError(
                    "more than %d compression pointers in a name" % MAX_POINTER_HOPS, pos
                )
            runs.append((floor, run_parts, run_octets, hops - 1, pos + 1))
            hit = _cached_suffix(buf, cache, target)
            if (
                hit is not None
                and hit[2] < floor
                and hops + hit[3] <= MAX_POINTER_HOPS
                and octets + hit[1] - 1 <= MAX_NAME_OCTETS
            ):
                tail = hit
                break
            limit = floor
            floor = pos = target
            run_parts = len(parts)
            run_octets = octets - 1
        else:
            raise DnsParseError(
                "label length byte 0x%02x is over 63 and not a compression pointer" % n, pos
            )
        if pos >= limit:
            if limit == size:
                raise DnsParseError("name runs past the end of the message", pos)
            raise DnsParseError("compressed name runs into the label run that points to it", pos)
        n = buf[pos]
    if after < 0:
        after = pos + 1
    if tail is None:
        tail_text, tail_octets, tail_hops = ".", 1, 0
    else:
        tail_text, tail_octets, tail_hops = tail[0], tail[1], tail[3]
    total_octets = octets - 1 + tail_octets
    total_hops = hops + tail_hops
    text = tail_text
    for offset, index, before, hops_before, last in reversed(runs):
        if index < len(parts):
            head = _name_text(parts[index:])
            text = head if text == "." else head + "." + text
            del parts[index:]
        cache[offset] = (text, total_octets - before, last, total_hops - hops_before)
    return text, after


# --- the fast path ---------------------------------------------------------------------------

_HEADER = struct.Struct("!HHHHHH")
_unpack_header = _HEADER.unpack_from
_unpack_hhh = struct.Struct("!HHH").unpack_from
_unpack_hh = struct.Struct("!HH").unpack_from
_unpack_h = struct.Struct("!H").unpack_from
_unpack_rr = struct.Struct("!HHIH").unpack_from
_unpack_soa = struct.Struct("!IIIII").unpack_from
_inet_ntop = socket.inet_ntop
_inet_ntoa = socket.inet_ntoa
_AF_INET6 = socket.AF_INET6


def parse_question(buf):
    """Header and first question only: ``(id, flags, qname, qtype, qclass, qdcount)``.

    The capture agent calls this for every packet, so it reads the common case (an
    uncompressed question name right after the header) inline and hands anything else to
    the full name decoder. A message without a question gives ``(id, flags, None, None,
    None, 0)``. Raises DnsParseError for anything that is not a well-formed start of a
    DNS message.
    """
    if type(buf) is not bytes:
        buf = bytes(buf)
    try:
        ident, flags, qdcount = _unpack_hhh(buf)
        if not qdcount:
            if len(buf) < 12:
                raise DnsParseError("message shorter than its 12-octet header", 0)
            return (ident, flags, None, None, None, 0)
        parts = []
        pos = 12
        n = buf[12]
        while n:
            if n > 63:
                return _parse_question_slow(buf, ident, flags, qdcount)
            start = pos + 1
            pos = start + n
            parts.append(buf[start:pos])
            n = buf[pos]
        qtype, qclass = _unpack_hh(buf, pos + 1)
    except (IndexError, struct.error):
        raise DnsParseError("message ends inside its header or question", len(buf)) from None
    if pos > MAX_NAME_OCTETS + 11:
        raise DnsParseError("name longer than 255 octets", 12)
    if not parts:
        return (ident, flags, ".", qtype, qclass, qdcount)
    raw = b".".join(parts)
    if raw.translate(None, _NAME_SAFE) != _DOTS[len(parts) - 1]:
        return (ident, flags, _name_text(parts), qtype, qclass, qdcount)
    return (ident, flags, raw.decode("ascii"), qtype, qclass, qdcount)


def _parse_question_slow(buf, ident, flags, qdcount):
    try:
        name, pos = _read_name(buf, 12, _new_name_cache())
        qtype, qclass = _unpack_hh(buf, pos)
    except (IndexError, struct.error):
        raise DnsParseError("message ends inside its question", len(buf)) from None
    return (ident, flags, name, qtype, qclass, qdcount)


# --- rdata -----------------------------------------------------------------------------------


def _rdata_a(buf, pos, end, cache):
    if end - pos != 4:
        raise DnsParseError("A rdata of %d octets, not 4" % (end - pos), pos)
    return _inet_ntoa(buf[pos:end])


def _rdata_aaaa(buf, pos, end, cache):
    if end - pos != 16:
        raise DnsParseError("AAAA rdata of %d octets, not 16" % (end - pos), pos)
    return _inet_ntop(_AF_INET6, buf[pos:end])


def _rdata_name(buf, pos, end, cache):
    name, after = _read_name(buf, pos, cache)
    if after != end:
        raise DnsParseError("name in rdata does not fill its rdata length", pos)
    return name


def _rdata_mx(buf, pos, end, cache):
    if end - pos < 3:
        raise DnsParseError("MX rdata too short", pos)
    name, after = _read_name(buf, pos + 2, cache)
    if after != end:
        raise DnsParseError("MX exchange does not fill its rdata length", pos)
    return "%d %s" % (_unpack_h(buf, pos)[0], name)


def _rdata_srv(buf, pos, end, cache):
    if end - pos < 7:
        raise DnsParseError("SRV rdata too short", pos)
    name, after = _read_name(buf, pos + 6, cache)
    if after != end:
        raise DnsParseError("SRV target does not fill its rdata length", pos)
    return "%d %d %d %s" % (*_unpack_hhh(buf, pos), name)


def _rdata_soa(buf, pos, end, cache):
    mname, p = _read_name(buf, pos, cache)
    rname, p = _read_name(buf, p, cache)
    if end - p != 20:
        raise DnsParseError("SOA rdata length does not match its names and counters", pos)
    return "%s %s %d %d %d %d %d" % (mname, rname, *_unpack_soa(buf, p))


def _rdata_txt(buf, pos, end, cache):
    if pos == end:
        raise DnsParseError("TXT rdata without a string", pos)
    out = []
    while pos < end:
        n = buf[pos]
        pos += 1
        if pos + n > end:
            raise DnsParseError("TXT string runs past its rdata", pos - 1)
        s = buf[pos : pos + n]
        pos += n
        if s.translate(None, _TXT_SAFE):
            esc = _TXT_ESCAPES
            out.append('"%s"' % "".join([esc[c] for c in s]))
        else:
            out.append('"%s"' % s.decode("ascii"))
    return " ".join(out)


def _rdata_generic(buf, pos, end, cache):
    if pos == end:
        return "\\# 0"
    return "\\# %d %s" % (end - pos, buf[pos:end].hex())


# Types whose rdata is the same in every class.
_RDATA_ANY_CLASS = {
    2: _rdata_name, 5: _rdata_name, 6: _rdata_soa, 12: _rdata_name, 15: _rdata_mx,
    16: _rdata_txt, 39: _rdata_name, 99: _rdata_txt,
}  # fmt: skip
# Types defined for class IN only (a CHAOS-class A record, say, has another layout).
_RDATA_IN = dict(_RDATA_ANY_CLASS)
_RDATA_IN.update({1: _rdata_a, 28: _rdata_aaaa, 33: _rdata_srv})

_TYPE_OPT = 41
_CLASS_IN = 1


def _read_edns(buf, name, udp_size, ttl, pos, end):
    if name != ".":
        raise DnsParseError("OPT record owned by %r, not the root" % name, pos)
    options = []
    while pos < end:
        if end - pos < 4:
            raise DnsParseError("EDNS option header cut short", pos)
        code, olen = _unpack_hh(buf, pos)
        pos += 4
        if pos + olen > end:
            raise DnsParseError("EDNS option %d runs past its OPT rdata" % code, pos - 4)
        options.append((code, buf[pos : pos + olen]))
        pos += olen
    return Edns(udp_size, ttl >> 24, (ttl >> 16) & 0xFF, bool(ttl & 0x8000), ttl & 0xFFFF, options)


# --- the full parse --------------------------------------------------------------------------


def parse_message(buf, authority=True, partial=False):
    """Parse a whole DNS message (bytes-like) into a :class:`Message`.

    With ``authority=False`` the authority section is stepped over, not decoded, and
    ``Message.authority`` is None: a caller that wants only the rcode and the answers
    (the agent, for every response) skips the SOA that most negative answers carry,
    which costs about as much as the rest of such a message.

    With ``partial=True`` the message is one a capture cut short (its snap length kept
    the first octets of each packet): the header and the questions must be whole, as
    always, but the records are read only as far as they go. The first record that does
    not parse ends the reading, the sections after it are empty, and ``Message.cut`` is
    True. tshark shows such a message the same way: whatever fits, then "malformed".
    Only the caller knows a message was cut rather than broken, so only it may ask.

    Raises DnsParseError, and nothing else, for every input it cannot parse.
    """
    if type(buf) is not bytes:
        buf = bytes(buf)
    try:
        return _parse_message(buf, authority, partial)
    except (IndexError, struct.error):
        raise DnsParseError("message ends inside a record", len(buf)) from None


def _skip_records(buf, pos, count, size):
    """Step over ``count`` records from ``pos`` without decoding them; return the end."""
    for _ in range(count):
        n = buf[pos]
        while 0 < n < 64:
            pos += n + 1
            n = buf[pos]
        if n >= 0xC0:
            pos += 1
        elif n:
            raise DnsParseError(
                "label length byte 0x%02x is over 63 and not a compression pointer" % n, pos
            )
        pos += 11 + _unpack_h(buf, pos + 9)[0]
        if pos > size:
            raise DnsParseError("rdata runs past the end of the message", pos)
    return pos


_unpack_counts = struct.Struct("!HHHHH").unpack_from


def quick_response(buf, qend):
    """``(rcode, answer texts)`` of the commonest response, or None for any other message.

    The capture reports every response it matches, so the usual one — a single question
    read without compression, answers that are A/AAAA records owned by a pointer to that
    question, an optional EDNS OPT — is read here without building a :class:`Message`:
    about a third of :func:`parse_message`'s cost. ``qend`` is the offset just after the
    question, whose name the caller has read as plain labels from offset 12.

    None means "not this shape": anything unusual, malformed included, goes to
    :func:`parse_message`, which decides and explains. Where this returns a value it is
    what ``parse_message(buf, authority=False)`` gives (rcode, ``answer_texts``); a
    differential test holds the two together.
    """
    try:
        flags, qdcount, ancount, nscount, arcount = _unpack_counts(buf, 2)
        size = len(buf)
        if qdcount != 1 or 5 + (ancount + nscount + arcount) * 11 > size - 12:
            return None
        pos = qend
        answers = []
        for _ in range(ancount):
            if buf[pos] != 0xC0 or buf[pos + 1] != 12:
                return None
            rtype, rclass, _ttl, rdlen = _unpack_rr(buf, pos + 2)
            pos += 12
            end = pos + rdlen
            if rclass != _CLASS_IN or end > size:
                return None
            if rtype == 1 and rdlen == 4:
                answers.append(_inet_ntoa(buf[pos:end]))
            elif rtype == 28 and rdlen == 16:
                answers.append(_inet_ntop(_AF_INET6, buf[pos:end]))
            else:
                return None
            pos = end
        pos = _skip_records(buf, pos, nscount, size)
        rcode = flags & 0xF
        edns = None
        for _ in range(arcount):
            if buf[pos] != 0 or edns is not None:
                return None
            rtype, rclass, ttl, rdlen = _unpack_rr(buf, pos + 1)
            pos += 11
            end = pos + rdlen
            if rtype != _TYPE_OPT or end > size:
                return None
            edns = _read_edns(buf, ".", rclass, ttl, pos, end)
            rcode |= edns.ext_rcode << 4
            pos = end
    except (IndexError, struct.error, DnsParseError):
        return None
    return rcode, answers


def _parse_message(buf, authority, partial=False):
    size = len(buf)
    if size < 12:
        raise DnsParseError("message shorter than its 12-octet header", 0)
    ident, flags, qdcount, ancount, nscount, arcount = _unpack_header(buf)
    # The smallest question is 5 octets and the smallest record 11: refuse counts the
    # message cannot hold before building anything for them (a cut message holds fewer
    # records than it counts; its reading stops at the end instead).
    if qdcount * 5 + (0 if partial else (ancount + nscount + arcount) * 11) > size - 12:
        raise DnsParseError(
            "section counts %d/%d/%d/%d need more than the message's %d octets"
            % (qdcount, ancount, nscount, arcount, size),
            4,
        )
    read_name = _read_name
    cache = _new_name_cache()
    pos = 12
    questions = []
    for _ in range(qdcount):
        name, pos = read_name(buf, pos, cache)
        qtype, qclass = _unpack_hh(buf, pos)
        pos += 4
        questions.append(Question(name, qtype, qclass))
    sections = [[], [] if authority else None, []]
    opt = [None]
    try:
        _read_sections(buf, pos, size, (ancount, nscount, arcount), sections, opt, cache)
        cut = False
    except (IndexError, struct.error, DnsParseError):
        if not partial:
            raise
        cut = True
    edns = opt[0]
    rcode = flags & 0xF
    if edns is not None:
        rcode |= edns.ext_rcode << 4
    return Message(ident, flags, rcode, questions, sections[0], sections[1], sections[2], edns,
                   cut)


def _read_sections(buf, pos, size, counts, sections, opt, cache):
    """Read the answer, authority and additional records from ``pos`` into ``sections``
    (three lists; None for a section to step over) and the EDNS OPT record into
    ``opt[0]``. Filled as it goes: after an exception they hold what was read before it,
    which is what a partial parse reports."""
    read_name = _read_name
    edns = None
    for section, count in enumerate(counts):
        records = sections[section]
        if records is None:
            pos = _skip_records(buf, pos, count, size)
            continue
        for _ in range(count):
            # Owners are mostly a pointer to a name already read, or the root (OPT).
            n = buf[pos]
            if n >= 0xC0:
                hit = cache.get(((n & 0x3F) << 8) | buf[pos + 1])
                if hit is not None and hit[2] < pos and hit[3] < MAX_POINTER_HOPS:
                    name = hit[0]
                    pos += 2
                else:
                    name, pos = read_name(buf, pos, cache)
            elif n == 0:
                name = "."
                pos += 1
            else:
                name, pos = read_name(buf, pos, cache)
            rtype, rclass, ttl, rdlen = _unpack_rr(buf, pos)
            pos += 10
            end = pos + rdlen
            if end > size:
                raise DnsParseError(
                    "rdata of %d octets runs past the end of the message" % rdlen, pos - 2
                )
            if rtype == _TYPE_OPT:
                if section != 2 or edns is not None:
                    raise DnsParseError(
                        "OPT record outside the additional section or repeated", pos - 10
                    )
                edns = opt[0] = _read_edns(buf, name, rclass, ttl, pos, end)
                pos = end
                continue
            decode = (_RDATA_IN if rclass == _CLASS_IN else _RDATA_ANY_CLASS).get(rtype)
            rdata = (
                _rdata_generic(buf, pos, end, cache)
                if decode is None
                else decode(buf, pos, end, cache)
            )
            if ttl > 0x7FFFFFFF:
                ttl = 0
            records.append(Record(name, rtype, rclass, ttl, rdata))
            pos = end
