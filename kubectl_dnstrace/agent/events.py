"""From a whole DNS message to a protocol ``dns`` record: filtering, query/response
matching and latency.

Stdlib only, python3 >= 3.8. The per-packet cost matters (a busy cluster DNS pod sees tens
of thousands of messages a second), so every message first goes through
``dnswire.parse_question`` (header and first question only); the full parse runs only for a
response that is going to be reported, and steps over its authority section (the SOA of a
negative answer is not reported and costs about as much to decode as the rest). A response is reported when its question matches —
the question a server echoes is the question its query asked — and its latency is measured
from the matching query (same client address, port, transport and DNS id) when the capture
saw it.
"""

import base64

from kubectl_dnstrace import dnswire

PENDING_SECONDS = 30.0
PENDING_MAX = 100000


class EventBuilder(object):
    """``build(seg, iface)`` returns a ``dns`` record dict (without ``seq``) or None.

    Counters: ``matched`` (messages that passed the filters), ``malformed`` (messages the
    parser rejected; they are counted, never raised).
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

    # -- shared by build() and tally() ------------------------------------------------
    def _question(self, seg):
        """(is_response, id, qname, qtype, latency_ms) for a matching message, else None."""
        try:
            ident, flags, qname, qtype, _qclass, qdcount = dnswire.parse_question(seg.payload)
        except dnswire.DnsParseError:
            self.malformed += 1
            return None
        if not qdcount or qname is None:
            return None
        if not self.filter.match_question(qname, qtype):
            return None
        ts = seg.ts
        if self._pending_start is None or ts - self._pending_start > self.pending_seconds or \
                len(self._pending) >= self.pending_max:
            self._pending_old = self._pending
            self._pending = {}
            self._pending_start = ts
        if flags & 0x8000:
            key = (seg.proto, seg.dst, seg.dport, ident)
            qts = self._pending.pop(key, None)
            if qts is None:
                qts = self._pending_old.pop(key, None)
            latency = None if qts is None else round(max(0.0, ts - qts) * 1000.0, 3)
            return True, ident, qname, qtype, latency
        self._pending[(seg.proto, seg.src, seg.sport, ident)] = ts
        return False, ident, qname, qtype, None

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
    def build(self, seg, iface):
        q = self._question(seg)
        if q is None:
            return None
        is_response, ident, qname, qtype, latency = q
        flt = self.filter
        if is_response:
            try:
                msg = dnswire.parse_message(seg.payload, authority=False)
            except dnswire.DnsParseError:
                self.malformed += 1
                return None
            if not flt.match_rcode(msg.rcode):
                return None
        elif flt.rcodes:
            return None  # queries carry no rcode; the response will be reported
        self.matched += 1
        rec = {
            "type": "dns",
            "ts": seg.ts,
            "qr": "response" if is_response else "query",
            "proto": seg.proto,
            "src": seg.src,
            "sport": seg.sport,
            "dst": seg.dst,
            "dport": seg.dport,
            "id": ident,
            "qname": qname,
            "qtype": self.type_name(qtype),
            "iface": iface,
        }
        if is_response:
            rec["rcode"] = self.rcode_name(msg.rcode)
            rec["answers"] = dnswire.answer_texts(msg)
            rec["latency_ms"] = latency
            if msg.tc:
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
        q = self._question(seg)
        if q is None:
            return None
        is_response, _ident, qname, qtype, _latency = q
        if is_response:
            rcode = seg.payload[3] & 0x0F
            if not self.filter.match_rcode(rcode):
                return None
            self.matched += 1
            return seg.dst, qname.lower(), self.type_name(qtype), self.rcode_name(rcode)
        if self.filter.rcodes:
            return None
        self.matched += 1
        return seg.src, qname.lower(), self.type_name(qtype), None
