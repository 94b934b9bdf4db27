"""What the agent stops doing when it cannot keep up with the traffic, and the count of it.

Stdlib only, python3 >= 3.8. The agent runs inside production pods — usually CoreDNS, whose
pod shares one memory limit with every container in it, ephemeral ones included — so it
must never keep up by growing. The sign that it is falling behind is the capture's backlog:
how much of the kernel's ring holds packets handed over and not yet read. In order:

1. A quarter of the ring waiting while the agent writes one record per message: it
   switches to per-second aggregates at once, whatever ``--max-rate`` says (the
   ``VolumeGate`` counts the messages that would have been records as ``shed_records``).
   Aggregates cost a fraction of a record per message and carry no record bodies.
2. Half the ring waiting while it already aggregates: whole blocks go back to the kernel
   unread, down to a quarter, and their packets are counted (``shed_packets``). A block
   costs nothing to skip, and the agent's reading stays within a fraction of a second of
   the traffic, where a full ring would leave the kernel dropping (counted in ``drops``)
   and the agent's view seconds late.

The agent returns to records once it has caught up and an interval's rate is under half of
what it managed (``VolumeGate.take``).
"""

BEHIND_AT = 0.25  # share of the ring waiting: records give way to aggregates
SKIP_AT = 0.5  # share waiting while aggregating: blocks go back unread, down to BEHIND_AT
CAUGHT_UP_AT = 0.1  # share waiting under which the agent has caught up


class Shedder(object):
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
