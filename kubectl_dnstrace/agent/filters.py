"""Which DNS messages the user asked to see: names (with subdomains), query types, rcodes.

Stdlib only, python3 >= 3.8. Name matching is on label boundaries and case-insensitive
(DNS names are, RFC 4343), so ``--domain evil.example.com`` matches ``EVIL.example.com`` and
``x.evil.example.com`` but never ``notevil.example.com``. The names live in a set and a
question's name is checked by walking its suffixes, so a file of thousands of names costs
O(labels) per packet, not O(names).
"""

from kubectl_dnstrace import dnswire


def normalize_domain(name):
    """Lower case, no trailing dot; the root ("." or "") becomes "" (matches every name)."""
    name = name.strip().lower()
    if name.endswith(".") and not name.endswith("\\."):
        name = name[:-1]
    return name


def name_fault(name):
    """Why ``name`` (as typed: any case, a trailing dot or not, ``.`` for every name) can be
    no DNS name, or None: such a filter would match nothing. Presentation-format escapes
    (``a\\.b``, ``\\032``) are left to the matcher."""
    text = normalize_domain(name)
    if any(c.isspace() for c in text):
        return "it contains a space"
    if not text or "\\" in text:
        return None
    labels = text.split(".")
    if not all(labels):
        return "it has an empty label (two dots in a row, or a leading dot)"
    if any(len(label.encode()) > 63 for label in labels):
        return "a label is longer than 63 bytes"
    if len(text.encode()) > 253:
        return "it is longer than 253 bytes"
    return None


def _code(value, lookup, what):
    """A type/rcode given as a name ("AAAA"), a number ("28") or an int."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        return lookup(text.upper())
    except (KeyError, ValueError):
        raise ValueError("unknown %s %r" % (what, value)) from None


def _suffixes(name):
    """The name and each parent, honouring escaped dots (``a\\.b.example.com``)."""
    yield name
    i = 0
    n = len(name)
    while i < n:
        c = name[i]
        if c == "\\":
            i += 2
            continue
        if c == ".":
            yield name[i + 1:]
        i += 1


def _wire_names(domains):
    """The names in DNS wire form, lower case (``b"\\x04evil\\x07example\\x03com\\x00"``),
    for the agent's prefilter on raw packets; None when a name has escapes or non-ASCII
    (then only the text match is used)."""
    out = set()
    for name in domains:
        if "\\" in name or not name.isascii():
            return None
        labels = name.split(".")
        if any(not label or len(label) > 63 for label in labels):
            return None
        out.add(b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels) + b"\x00")
    return frozenset(out)


def match_wire(name, wire_domains):
    """Whether a lower-cased wire-form name (ending in its root label) is one of
    ``wire_domains`` or under one: its suffixes start at label boundaries."""
    i = 0
    while True:
        if name[i:] in wire_domains:
            return True
        n = name[i]
        if not n:
            return False
        i += n + 1


class DnsFilter(object):
    """A question matches when its name is under one of ``domains`` (if any) and its type is
    one of ``qtypes`` (if any). ``rcodes`` (if any) selects responses by their rcode; queries
    carry no rcode, so with an rcode filter only responses are reported."""

    __slots__ = (
        "_domain_names",
        "_match_all_names",
        "_qtype_names",
        "_rcode_names",
        "domains",
        "qtypes",
        "rcodes",
        "wire_domains",
    )

    def __init__(self, domains=(), qtypes=(), rcodes=()):
        names = set()
        for d in domains:
            names.add(normalize_domain(d))
        self._match_all_names = "" in names or not names
        self.domains = frozenset(n for n in names if n)
        self.qtypes = frozenset(_code(t, dnswire.type_code, "query type") for t in qtypes)
        self.rcodes = frozenset(_code(r, dnswire.rcode_code, "rcode") for r in rcodes)
        self._domain_names = sorted(names)
        self._qtype_names = sorted(dnswire.type_name(t) for t in self.qtypes)
        self._rcode_names = sorted(dnswire.rcode_name(r) for r in self.rcodes)
        self.wire_domains = _wire_names(self.domains)

    @property
    def match_all_names(self):
        return self._match_all_names

    @property
    def active(self):
        return bool(self.domains or self.qtypes or self.rcodes)

    def match_name(self, qname):
        if self._match_all_names:
            return True
        name = qname.lower()
        domains = self.domains
        if name in domains:
            return True
        if "\\" in name:
            return any(suffix in domains for suffix in _suffixes(name))
        i = name.find(".")
        while i >= 0:
            i += 1
            if name[i:] in domains:
                return True
            i = name.find(".", i)
        return False

    def match_question(self, qname, qtype):
        if self.qtypes and qtype not in self.qtypes:
            return False
        return self.match_name(qname)

    def match_rcode(self, rcode):
        return not self.rcodes or rcode in self.rcodes

    def describe(self):
        """The filters as the ``hello`` record states them (a long name list is summarised)."""
        domains = self._domain_names
        out = {"qtypes": self._qtype_names, "rcodes": self._rcode_names,
               "domain_count": len(domains)}
        out["domains"] = domains if len(domains) <= 20 else domains[:20]
        return out
