"""Report a DNS message once even when the capture sees it several times.

Stdlib only, python3 >= 3.8. One unbound AF_PACKET socket sees every interface of the
namespace, so the same message shows up more than once:
- on a pod's veth and again on the bridge it is enslaved to (a node's namespace);
- twice on loopback (outgoing, then incoming);
- before and after kube-proxy's DNAT in a node's namespace: a query first goes to the
  Service IP, then to a DNS pod's IP (its destination changes); the reply comes from the
  pod IP, then is rewritten to come from the Service IP (its source changes).

So the key is the client side of the exchange (source of a query, destination of a
response), the transport, and the DNS message bytes — never the server address. The window
is short (duplicates are microseconds apart, a client's retry is at least hundreds of
milliseconds later) and the table is bounded: two generations of a dict, swapped when the
window passes or the current one is full. ``within`` (default: the window) is how close in
time a repeat must be to count as one: the kubectl side keeps its tables longer than that,
because the streams of several captures reach it seconds apart.
"""

DEFAULT_WINDOW = 0.2
DEFAULT_MAX_ENTRIES = 65536


class Deduper(object):
    __slots__ = ("_cur", "_old", "_start", "duplicates", "max_entries", "window", "within")

    def __init__(self, window=DEFAULT_WINDOW, max_entries=DEFAULT_MAX_ENTRIES, within=None):
        self.window = window
        self.within = window if within is None else within
        self.max_entries = max_entries
        self._cur = {}
        self._old = {}
        self._start = None
        self.duplicates = 0

    def seen(self, seg):
        """True when ``seg`` repeats a message seen within the window (and counts it)."""
        p = seg.payload
        if p[2] & 0x80:
            key = hash((seg.proto, seg.dst, seg.dport, p))
        else:
            key = hash((seg.proto, seg.src, seg.sport, p))
        return self.seen_key(key, seg.ts)

    def seen_key(self, key, ts):
        """``key``: the hash of (transport, client address, client port, message). A hash,
        not the tuple, so the table holds no message bytes (64-bit SipHash: a collision
        within a 0.2 s window is not a practical concern)."""
        prev = self.last(key, ts)
        if prev is not None and -self.within <= ts - prev <= self.within:
            self.duplicates += 1
            return True
        return False

    def last(self, key, ts):
        """When ``key`` was noted last within the window (None: not), noting it at ``ts``:
        for a caller that judges the interval itself."""
        start = self._start
        cur = self._cur
        if start is None or ts - start > self.window or len(cur) >= self.max_entries:
            self._old = cur
            cur = self._cur = {}
            self._start = ts
        prev = cur.get(key)
        if prev is None:
            prev = self._old.get(key)
        cur[key] = ts
        return prev

    def peek(self, key):
        """When ``key`` was noted last within the window, or None; notes nothing."""
        prev = self._cur.get(key)
        return self._old.get(key) if prev is None else prev
