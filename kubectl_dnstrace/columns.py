"""Column widths that fit the terminal, and texts shortened in the middle to fit them.

Real names are long: search-path expansions (``api.shop.svc.cluster.local.cluster.local``),
CoreDNS pod names seen at ``kube-system/coredns-5d78c9869d-x7k2p``, "one of: ..." lists of
hostNetwork pods. Fixed widths let every such cell push the columns after it out of line; a
row as long as all its texts wraps on any terminal. Here each column gets a width from what
its cells need and a share of the terminal, and a longer text loses its middle (``…``),
where two names of one workload differ least (the start names the thing, the end tells
replicas apart). The JSON outputs and ``-o wide`` keep the texts whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TextIO

ELLIPSIS = "…"
SEP = "  "
NOT_A_TTY_WIDTH = 120


def terminal_width(out: TextIO | None = None) -> int:
    """``COLUMNS`` when set (what shells export and what a user sets to say), else the size
    of the terminal ``out`` writes to, else 120 (a file or a pipe)."""
    env = os.environ.get("COLUMNS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        if out is not None and out.isatty():
            return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    return NOT_A_TTY_WIDTH


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, its middle replaced by ``…`` if need be."""
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    keep = width - 1
    head = (keep + 1) // 2
    return text[:head] + ELLIPSIS + text[len(text) - (keep - head):]


@dataclass(slots=True)
class Column:
    """One column: its header, the widest text it has to show, and how it gives way.

    ``least``: it gets narrower than this only when nothing else can give;
    ``weight``: how readily it keeps its width when the row is too long (a name column
    more than a namespace).
    """

    header: str
    need: int = 0
    least: int = 4
    weight: float = 1.0
    most: int = 0  # 0: no limit when spare room is shared out
    typical: int = 0  # what most of its cells need: outliers give way first
    fixed: bool = False  # always ``need`` wide (times, types, codes)

    @classmethod
    def of(cls, header: str, cells: list[str], least: int = 4, weight: float = 1.0,
           most: int = 0) -> Column:
        """A column sized by its cells: ``need`` the longest, ``typical`` three in four."""
        lengths = sorted(len(c) for c in cells) or [0]
        return cls(header, lengths[-1], least, weight, most,
                   lengths[(3 * (len(lengths) - 1)) // 4])


def fit(columns: list[Column], width: int, spare: bool = False) -> list[int]:
    """Widths for ``columns`` (separated by two spaces) so a row is at most ``width`` long.

    Each starts at what it needs (its widest cell or header); while the row is too long,
    the column widest for its weight gives a character: first down to what most of its
    cells need (one long outlier gives way before the common texts do), then down to its
    ``least``, then to 1.
    ``spare`` shares out room left over (up to each column's ``most``): a live table sets
    its widths before it has seen most of its rows.
    """
    widths = [max(c.need, len(c.header)) for c in columns]
    budget = width - len(SEP) * (len(columns) - 1)
    floors = ([max(c.least, c.typical, len(c.header)) for c in columns],
              [c.least for c in columns],
              [max(c.need, len(c.header)) if c.fixed else 1 for c in columns],
              [1] * len(columns))
    for lows in floors:
        while sum(widths) > budget:
            best, score = -1, 0.0
            for i, c in enumerate(columns):
                low = lows[i]
                if widths[i] > low and widths[i] / c.weight > score:
                    best, score = i, widths[i] / c.weight
            if best < 0:
                break
            widths[best] -= 1
    if spare:
        room = budget - sum(widths)
        for wanting in (True, False):  # first back to what the cells seen need, then beyond
            while room > 0:
                best, score = -1, float("inf")
                for i, c in enumerate(columns):
                    if c.fixed or (c.most and widths[i] >= c.most) or \
                            (wanting and widths[i] >= c.need):
                        continue
                    if widths[i] / c.weight < score:
                        best, score = i, widths[i] / c.weight
                if best < 0:
                    break
                widths[best] += 1
                room -= 1
    return widths


def row(cells: list[str] | tuple[str, ...], widths: list[int], cut: bool = True) -> str:
    """One line: each cell shortened to its width (``cut``) and padded, the last unpadded."""
    parts = []
    last = len(cells) - 1
    for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
        text = shorten(cell, w) if cut else cell
        parts.append(text if i == last else text.ljust(w))
    return SEP.join(parts).rstrip() + "\n"
