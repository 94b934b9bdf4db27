"""The back half shared by live traces and ``analyze``: events in, rendered answers out.

``trace`` and ``analyze`` are only sources: each feeds ``DnsEvent`` objects into a
``Pipeline`` and calls ``finish`` at the end. What happens between (attribution,
aggregation, rendering, pcap writing) is decided here from the output options.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import TextIO

from kubectl_dnstrace.errors import ExitCode
from kubectl_dnstrace.model import DnsEvent, OutputOptions


class Pipeline:
    """Consumes events one by one; ``finish`` returns MATCHED or NO_MATCH like grep."""

    def __init__(self, output: OutputOptions, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.output = output
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.count = 0

    def feed(self, event: DnsEvent) -> None:
        self.count += 1
        record = asdict(event)
        record.pop("raw", None)
        record.pop("linktype", None)
        self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.out.flush()

    def notice(self, text: str) -> None:
        """A progress line or warning for the human: always stderr, never mixed with data."""
        self.err.write(text.rstrip("\n") + "\n")
        self.err.flush()

    def finish(self) -> ExitCode:
        return ExitCode.MATCHED if self.count else ExitCode.NO_MATCH
