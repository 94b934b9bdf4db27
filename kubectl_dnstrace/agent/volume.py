"""Keep the record rate modest: above a threshold, per-second aggregates instead of one
record per message. Stdlib only, python3 >= 3.8.

The pod log is the only channel home, and every line also lands on the node's disk where
the kubelet rotates it (10 MiB by default), so an unfiltered trace of a busy cluster DNS pod
must not write a line per packet. When more than ``max_rate`` records would be written in
one second, the agent switches to ``agg`` records — (client, name, type, rcode) -> count per
second — and switches back after a second below half the threshold. Each ``agg`` record
names the threshold, so the reader knows why it came (see docs/protocol.md).
"""

MAX_GROUPS = 500


class VolumeGate(object):
    """Decides per message whether it becomes a record or a tally; owns the tallies."""

    __slots__ = (
        "_agg_start",
        "_count",
        "_groups",
        "_window_start",
        "aggregating",
        "max_rate",
        "raw",
        "switches",
    )

    def __init__(self, max_rate):
        self.max_rate = max_rate
        self.aggregating = False
        self._window_start = None
        self._count = 0
        self._groups = {}
        self.raw = {}  # tallies keyed by raw bytes, filled by the agent's hot loop
        self._agg_start = None
        self.switches = 0

    def allow_record(self, now):
        """True while under the threshold; counts the record against this second."""
        if self.aggregating or not self.max_rate:
            return not self.aggregating
        if self._window_start is None or now - self._window_start >= 1.0:
            self._window_start = now
            self._count = 0
        self._count += 1
        if self._count > self.max_rate:
            self.aggregating = True
            self.switches += 1
            self._agg_start = now
            self._groups = {}
            return False
        return True

    def tally(self, key):
        groups = self._groups
        groups[key] = groups.get(key, 0) + 1

    def due(self, now):
        return self.aggregating and now - self._agg_start >= 1.0

    def take(self, now, text_key=None):
        """The ``agg`` record for the interval just ended, or None if it saw nothing.
        Aggregation stops when the interval stayed under half the threshold. ``text_key``
        turns the hot loop's raw keys into text keys."""
        groups = self._groups
        if self.raw:
            for key, count in self.raw.items():
                tkey = text_key(key)
                groups[tkey] = groups.get(tkey, 0) + count
            self.raw.clear()
        start = self._agg_start
        interval = now - start
        total = sum(groups.values())
        self._groups = {}
        self._agg_start = now
        if total < self.max_rate * interval / 2.0:
            self.aggregating = False
            self._window_start = None
        if not groups:
            return None
        ranked = sorted(groups.items(), key=lambda kv: -kv[1])
        shown = ranked[:MAX_GROUPS]
        rec = {
            "type": "agg",
            "ts": start,
            "interval": round(interval, 3),
            "threshold": self.max_rate,
            "groups": [{"client": c, "qname": n, "qtype": t, "rcode": r, "count": k}
                       for (c, n, t, r), k in shown],
            "total": total,
        }
        if len(ranked) > len(shown):
            rec["other_groups"] = len(ranked) - len(shown)
            rec["other_count"] = total - sum(k for _, k in shown)
        return rec
