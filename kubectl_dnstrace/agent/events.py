"""From a whole DNS message to a protocol ``dns`` record: filtering, query/response
matching and latency.

Stdlib only, python3 >= 3.8. The per-packet cost matters (a busy cluster DNS pod sees tens
of thousands of messages a second), so every message first goes through
``dnswire.parse_question`` (header and first question only); the full parse runs only for a
response that is going to be reported, and steps over its authority section (the SOA of a
negative answer is not reported and costs about as much to decode as the rest), and once
per distinct response: a resolver gives everyone who asks a name the same bytes but for the
id, so the answers of the rest are a lookup. A response is reported when its question
matches — the question a server echoes is the question its query asked — and its latency
is measured from the matching query (same client address, port, transport and DNS id)
when the capture saw it.
"""

import base64
import struct

from kubectl_dnstrace import dnswire

PENDING_SECONDS = 30.0
PENDING_MAX = 100000
QUESTIONS_MAX = 20000  # distinct questions remembered (a cluster asks a few thousand)
ANSWERS_MAX = 10000  # distinct responses remembered (see fields): a few MB at most

_unpack_hhh = struct.Struct("!HHH").unpack_from


class EventBuilder(object):
    """``build(seg, iface)`` returns a ``dns`` record dict (without ``seq``) or None.

    Counters: ``matched`` (messages that passed the filters), ``malformed`` (messages the
    parser rejected; they are counted, never raised). A live capture takes whole
    packets; a capture file's snap length may not have: ``fileevents.FileEventBuilder``
    reads such messages as far as they go (``_unparsed``, ``_cut_response``).
    """

    def __init__(self, dns_filter, with_raw=False, pending_seconds=PENDING_SECONDS,
                 pending_max=PENDING_MAX):
        self.filter = dns_filter
        self.with_raw = with_raw
        self.pending_seconds = pending_seconds
        self.pending_max = pending_max
        self._pending = {}
        self._pending_old = {}
        self._pending_start = None
        self.matched = 0
        self.malformed = 0
        self._type_names = {}
        self._rcode_names = {}
        self._questions = {}
        self._answers = {}
        self._rcodes = dns_filter.rcodes

    # -- shared by build() and tally() ------------------------------------------------
    def _first_question(self, p, key):
        """``(qname, qtype, wanted, qend, qtype name)`` of the message's first question
        (``key``: its bytes from offset 12 to the first zero byte and four more), or None
        when it has none; raises DnsParseError.

        A capture sees the same few thousand questions over and over (every query and its
        response carry the same bytes from offset 12 to the end of the question), so
        questions read once are remembered by those bytes: the rest of the lookup is a
        dict hit, the filter's verdict (``wanted``) included. Only a name of plain labels
        ending at the message's first zero byte is remembered, so equal key bytes always
        mean an equal question; ``qend`` (the offset after the question, for
        ``dnswire.quick_response``) is 0 for a question that is not remembered.
        """
        _ident, _flags, qname, qtype, _qclass, qdcount = dnswire.parse_question(p)
        if not qdcount or qname is None:
            return None
        z = p.find(b"\x00", 12)
        pos = 12
        while pos < z and p[pos] < 64:
            pos += p[pos] + 1
        plain = pos == z and len(key) == z - 7
        entry = (qname, qtype, self.filter.match_question(qname, qtype), z + 5 if plain else 0,
                 self.type_name(qtype))
        if plain:
            if len(self._questions) >= QUESTIONS_MAX:
                self._questions.clear()
            self._questions[key] = entry
        return entry

    def _question(self, seg, timing=True):
        """(is_response, id, latency_ms, question) for a matching message, else None;
        ``question`` as ``_first_question`` gives it. Without ``timing`` (aggregates carry
        no latency) queries are not remembered and responses not timed.

        A pending query is remembered by the hash of (transport, client address, port, id),
        not the tuple: a third of the memory per entry (64-bit SipHash; a collision within
        the window would time one response from the wrong query, not lose a record)."""
        p = seg.payload
        if type(p) is not bytes:
            p = seg.payload = bytes(p)
        try:
            if len(p) < 12:
                raise dnswire.DnsParseError("message shorter than its 12-octet header", 0)
            ident, flags, qdcount = _unpack_hhh(p)
            if not qdcount:
                return None
            key = p[12:p.find(b"\x00", 12) + 5]
            q = self._questions.get(key) or self._first_question(p, key)
        except dnswire.DnsParseError:
            self._unparsed(seg)
            return None
        if q is None or not q[2]:
            return None
        if not timing:
            return bool(flags & 0x8000), ident, None, q
        ts = seg.ts
        if self._pending_start is None or ts - self._pending_start > self.pending_seconds or \
                len(self._pending) >= self.pending_max:
            self._pending_old = self._pending
            self._pending = {}
            self._pending_start = ts
        if flags & 0x8000:
            key = hash((seg.proto, seg.dst, seg.dport, ident))
            qts = self._pending.pop(key, None)
            if qts is None:
                qts = self._pending_old.pop(key, None)
            # Whole microseconds, in milliseconds: what round(x, 3) gives for a capture's
            # microsecond timestamps, at a third of its cost (which goes through text).
            latency = None if qts is None else round(max(0.0, ts - qts) * 1e6) / 1000.0
            return True, ident, latency, q
        self._pending[hash((seg.proto, seg.src, seg.sport, ident))] = ts
        return False, ident, None, q

    def type_name(self, qtype):
        name = self._type_names.get(qtype)
        if name is None:
            name = self._type_names[qtype] = dnswire.type_name(qtype)
        return name

    def rcode_name(self, rcode):
        name = self._rcode_names.get(rcode)
        if name is None:
            name = self._rcode_names[rcode] = dnswire.rcode_name(rcode)
        return name

    # -- one record per message ---------------------------------------------------------
    def fields(self, seg):
        """The record of a matching message as a tuple, or None: ``(ts, qr, proto, src,
        sport, dst, dport, id, qname, qtype name, rcode name, answers, latency_ms, tc,
        truncated)``, the four before the last None for a query; ``truncated`` is True for a
        response the capture cut short (its answers are those that fit). What ``build``
        puts in a dict; ``analyze`` makes its events from it without the dict."""
        m = self._question(seg)
        if m is None:
            return None
        is_response, ident, latency, (qname, _qtype, _wanted, qend, tname) = m
        if is_response:
            p = seg.payload
            if qend:
                # A resolver gives every client that asks a name the same response, byte for
                # byte but for the id (until its cached TTLs tick down, each second): one read
                # of the answers serves the rest, found by the bytes after the id, of which
                # ``quick_response`` is a function. A lookup is a tenth of a read. (Those
                # records share one answers list: nothing downstream changes a record.)
                body = p[2:]
                quick = self._answers.get(body)
                if quick is None:
                    quick = dnswire.quick_response(p, qend)
                    if quick is not None:
                        if len(self._answers) >= ANSWERS_MAX:
                            self._answers.clear()
                        self._answers[body] = quick
            else:
                quick = None
            truncated = False
            if quick is not None:
                rcode, answers = quick
            else:
                try:
                    msg = dnswire.parse_message(p, authority=False)
                except dnswire.DnsParseError:
                    msg = self._cut_response(seg)
                    if msg is None:
                        self._unparsed(seg)
                        return None
                    truncated = True
                rcode, answers = msg.rcode, dnswire.answer_texts(msg)
            if self._rcodes and rcode not in self._rcodes:
                return None
            self.matched += 1
            return (seg.ts, "response", seg.proto, seg.src, seg.sport, seg.dst, seg.dport,
                    ident, qname, tname, self._rcode_names.get(rcode) or self.rcode_name(rcode),
                    answers, latency, bool(p[2] & 0x02), truncated)
        if self._rcodes:
            return None  # queries carry no rcode; the response will be reported
        self.matched += 1
        return (seg.ts, "query", seg.proto, seg.src, seg.sport, seg.dst, seg.dport, ident,
                qname, tname, None, None, None, None, False)

    def _unparsed(self, seg):
        """A message the parser rejected."""
        self.malformed += 1

    def _cut_response(self, seg):
        """A response that did not parse, read as far as a capture cut it, or None: live,
        always None (the agent takes whole packets)."""
        return None

    def build(self, seg, iface):
        f = self.fields(seg)
        if f is None:
            return None
        rec = {
            "type": "dns",
            "ts": f[0],
            "qr": f[1],
            "proto": f[2],
            "src": f[3],
            "sport": f[4],
            "dst": f[5],
            "dport": f[6],
            "id": f[7],
            "qname": f[8],
            "qtype": f[9],
            "iface": iface,
        }
        if f[10] is not None:
            rec["rcode"] = f[10]
            rec["answers"] = f[11]
            rec["latency_ms"] = f[12]
            if f[13]:
                rec["tc"] = True
        if self.with_raw:
            rec["raw"] = base64.b64encode(seg.packet).decode("ascii")
        return rec

    # -- aggregate mode -------------------------------------------------------------------
    def tally(self, seg):
        """(client, qname, qtype name, rcode name or None) for a matching message, else None.

        The cheap path for the agent's aggregate mode: no full parse; the rcode comes from
        the header alone (EDNS extended rcodes are not worth a full parse there).
        """
        m = self._question(seg, timing=False)
        if m is None:
            return None
        is_response, _ident, _latency, (qname, _qt, _wanted, _qend, tname) = m
        if is_response:
            rcode = seg.payload[3] & 0x0F
            if not self.filter.match_rcode(rcode):
                return None
            self.matched += 1
            return seg.dst, qname.lower(), tname, self.rcode_name(rcode)
        if self.filter.rcodes:
            return None
        self.matched += 1
        return seg.src, qname.lower(), tname, None

