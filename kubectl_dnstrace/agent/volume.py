"""Keep the record rate modest: above a threshold, per-second aggregates instead of one
record per message. Stdlib only, python3 >= 3.8.

The pod log is the only channel home, and every line also lands on the node's disk where
the kubelet rotates it (10 MiB by default), so an unfiltered trace of a busy cluster DNS pod
must not write a line per packet. When more than ``max_rate`` records would be written in
one second, the agent switches to ``agg`` records — (client, name, type, rcode) -> count per
second — and switches back after a second below half the threshold. Each ``agg`` record
names the threshold, so the reader knows why it came (see docs/protocol.md).

It is also where the agent sheds work when it cannot keep up with the traffic (``Shedder``
below): it never keeps up by growing. Nothing here grows with the packet rate: an interval
holds at most ``MAX_KEYS`` groups, and a message of a group that finds the table full is
counted in the interval's total and in ``ungrouped``, not dropped and not remembered.
"""

MAX_GROUPS = 500  # groups written per agg record, the largest first
MAX_KEYS = 10000  # groups counted per interval (the rest: ``ungrouped``); see performance.md


class VolumeGate(object):
    """Decides per message whether it becomes a record or a tally; owns the tallies."""

    __slots__ = (
        "_agg_start",
        "_count",
        "_groups",
        "_last_count",
        "_window_start",
        "aggregating",
        "behind",
        "max_keys",
        "max_rate",
        "raw",
        "shed_records",
        "switches",
        "threshold",
        "ungrouped",
        "ungrouped_total",
    )

    def __init__(self, max_rate, max_keys=MAX_KEYS):
        self.max_rate = max_rate
        self.threshold = max_rate  # max_rate, or the record rate managed when it fell behind
        self.max_keys = max_keys
        self.aggregating = False
        self.behind = False  # aggregating because the agent fell behind, not by max_rate
        self._window_start = None
        self._count = 0
        self._last_count = 0
        self._groups = {}
        self.raw = {}  # tallies keyed by raw bytes, filled by the agent's hot loop
        self.ungrouped = 0  # this interval's messages that found the group table full
        self.ungrouped_total = 0
        self.shed_records = 0  # messages aggregated, not recorded, because it fell behind
        self._agg_start = None
        self.switches = 0

    def allow_record(self, now):
        """True while under the threshold; counts the record against this second."""
        if self.aggregating:
            return False
        if self._window_start is None or now - self._window_start >= 1.0:
            self._window_start = now
            self._last_count = self._count
            self._count = 0
        self._count += 1
        if self.threshold and self._count > self.threshold:
            self._start_aggregating(now)
            return False
        return True

    def fall_behind(self, now):
        """The agent cannot keep up with one record per message: aggregate from now on,
        whatever ``max_rate`` says, until the rate drops to half of what it managed."""
        if self.aggregating:
            return
        self.behind = True
        self.threshold = max(1, self._count, self._last_count)
        self._start_aggregating(now)

    def _start_aggregating(self, now):
        self.aggregating = True
        self.switches += 1
        self._agg_start = now
        self._groups = {}

    def tally(self, key):
        groups = self._groups
        count = groups.get(key)
        if count is not None:
            groups[key] = count + 1
        elif len(groups) < self.max_keys:
            groups[key] = 1
        else:
            self.ungrouped += 1

    def due(self, now):
        return self.aggregating and now - self._agg_start >= 1.0

    def take(self, now, text_key=None, caught_up=True):
        """The ``agg`` record for the interval just ended, or None if it saw nothing.
        Aggregation stops when the interval stayed under half the threshold (and, after
        falling behind, once the agent has ``caught_up``). ``text_key`` turns the hot
        loop's raw keys into text keys."""
        groups = self._groups
        if self.raw:
            for key, count in self.raw.items():
                tkey = text_key(key)
                groups[tkey] = groups.get(tkey, 0) + count
            self.raw = {}
        start = self._agg_start
        interval = now - start
        ungrouped = self.ungrouped
        self.ungrouped = 0
        self.ungrouped_total += ungrouped
        total = sum(groups.values()) + ungrouped
        behind = self.behind
        rec_threshold = self.threshold
        if behind:
            # What max_rate alone would have let through as records, and falling behind
            # did not: every message at max_rate 0, else up to max_rate a second.
            shed = total if not self.max_rate else min(total, int(self.max_rate * interval))
            self.shed_records += shed
        self._groups = {}
        self._agg_start = now
        if total < self.threshold * interval / 2.0 and (caught_up or not behind):
            self.aggregating = False
            self.behind = False
            self.threshold = self.max_rate
            self._window_start = None
        if not total:
            return None
        ranked = sorted(groups.items(), key=lambda kv: -kv[1])
        shown = ranked[:MAX_GROUPS]
        rec = {
            "type": "agg",
            "ts": start,
            "interval": round(interval, 3),
            "threshold": rec_threshold,
            "groups": [{"client": c, "qname": n, "qtype": t, "rcode": r, "count": k}
                       for (c, n, t, r), k in shown],
            "total": total,
        }
        if len(ranked) > len(shown) or ungrouped:
            rec["other_groups"] = len(ranked) - len(shown)
            rec["other_count"] = total - sum(k for _, k in shown)
        if ungrouped:
            rec["ungrouped"] = ungrouped
        if behind:
            rec["behind"] = True
        return rec


BEHIND_AT = 0.25  # share of the ring waiting: records give way to aggregates
SKIP_AT = 0.5  # share waiting while aggregating: blocks go back unread, down to BEHIND_AT
CAUGHT_UP_AT = 0.1  # share waiting under which the agent has caught up


class Shedder(object):
    """What the agent stops doing when it cannot keep up with the traffic, and its count.

    The agent runs inside production pods — usually CoreDNS, whose pod shares one memory
    limit with every container in it, ephemeral ones included — so it must never keep up by
    growing. The sign that it is falling behind is the capture's backlog: how much of the
    kernel's ring holds packets handed over and not yet read. In order:

    1. A quarter of the ring waiting while the agent writes one record per message: it
       switches to per-second aggregates at once, whatever ``--max-rate`` says (the
       ``VolumeGate`` counts the messages that would have been records as ``shed_records``).
       Aggregates cost a fraction of a record per message and carry no record bodies.
    2. Half the ring waiting while it already aggregates: whole blocks go back to the kernel
       unread, down to a quarter, and their packets are counted (``shed_packets``). A block
       costs nothing to skip, and the agent's reading stays within a fraction of a second of
       the traffic, where a full ring would leave the kernel dropping (counted in ``drops``)
       and the agent's view seconds late.

    The agent returns to records once it has caught up and an interval's rate is under half
    of what it managed (``VolumeGate.take``).
    """

    __slots__ = ("capture", "caught_up", "shed_packets", "volume")

    def __init__(self, capture, volume):
        self.capture = capture
        self.volume = volume
        self.shed_packets = 0
        self.caught_up = True

    def check(self, wall_now):
        """After a turn that read packets: look at the backlog and shed what must go."""
        fill = self.capture.backlog()
        self.caught_up = fill < CAUGHT_UP_AT
        if fill < BEHIND_AT:
            return
        if not self.volume.aggregating:
            self.volume.fall_behind(wall_now)
        elif fill >= SKIP_AT:
            blocks = int((fill - BEHIND_AT) * self.capture.ring_blocks + 0.5)
            self.shed_packets += self.capture.skip(blocks)

    def leave(self):
        """At the end: count what is still waiting in the ring as shed, and give it back."""
        self.shed_packets += self.capture.skip(self.capture.ring_blocks)
