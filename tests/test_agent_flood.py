"""The agent under a flood it cannot keep up with: it still ends on its deadline, SIGTERM or
stop file within a second, always with ``stats`` and ``bye`` that count what it shed, and
its peak RSS (the ring included) stays within 64 MB — the budget that keeps a CoreDNS pod,
whose memory limit the agent shares, clear of the OOM killer.

Real packets: a sender in a client namespace sends as many queries per second as it can,
each for a distinct name, to dnsmasq in the DNS namespace, where the agent runs as the
debug container would run it. The agent reports every message (``--max-rate 0``), the
worst case for its work and memory. Each run floods for about two seconds.
"""

from __future__ import annotations

import pytest

from tests.lab import dnslab
from tests.lab.flood import STOPS, run_flooded_agent

pytestmark = pytest.mark.timeout(120)

RSS_BUDGET_KB = 64 * 1024
STOP_WITHIN = 1.0  # the promise
SLACK = 0.5  # a busy two-core test machine: scheduling, python's exit, wait4


@pytest.fixture
def flood_lab(lab, tmp_path):
    d = dnslab.dns_lab(lab, tmp_path, log_queries=False,
                       dnsmasq_extra=["--cache-size=10000", "--dns-forward-max=5000"])
    client, _, _ = d.add_client()
    return d, client


def _check_accounting(run) -> None:
    """Every message the agent matched is in a ``dns`` record or an ``agg`` total."""
    records = run.records
    assert records[0]["type"] == "hello"
    assert [r["type"] for r in records[-2:]] == ["stats", "bye"]
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(1, len(records) + 1))
    stats = run.stats
    dns = sum(1 for r in records if r["type"] == "dns")
    aggregated = sum(r["total"] for r in records if r["type"] == "agg")
    assert stats["emitted"] == dns
    assert dns + aggregated == stats["matched"]
    ungrouped = sum(r.get("ungrouped", 0) for r in records if r["type"] == "agg")
    assert stats["ungrouped"] == ungrouped


@pytest.mark.parametrize("stop", STOPS)
def test_a_flood_it_cannot_keep_up_with(flood_lab, tmp_path, stop):
    d, client = flood_lab
    run = run_flooded_agent(d.dns, client, d.server.ip4, tmp_path, stop, ["--max-rate", "0"],
                            flood_seconds=2.0, env=dnslab.agent_env())
    assert run.returncode == 0
    bye = run.records[-1]
    assert bye["reason"] == stop
    assert run.time_to_stop <= STOP_WITHIN + SLACK, run.time_to_stop
    assert run.peak_rss_kb <= RSS_BUDGET_KB, run.peak_rss_kb
    _check_accounting(run)
    stats = run.stats
    # The flood ran at the box's rate, far above what one record per message can follow:
    # the agent switched to aggregates and said why, and counted what it shed.
    assert run.sent / run.flood_seconds > 20_000, (run.sent, run.flood_seconds)
    assert stats["seen"] > 40_000
    assert stats["shed_records"] > 0
    aggs = [r for r in run.records if r["type"] == "agg"]
    assert aggs and all(a["behind"] is True for a in aggs)
    assert all(a["threshold"] >= 1 for a in aggs)
    # Distinct names: the interval's group table filled and the rest was counted, not kept.
    assert stats["ungrouped"] > 0
    assert all(len(a["groups"]) <= 500 for a in aggs)
    for key in ("drops", "shed_packets", "shed_records", "ungrouped"):
        assert isinstance(stats[key], int) and stats[key] >= 0
    # Whatever was not read was counted: packets the kernel passed up are read, given back
    # unread (shed_packets), or still in flight in the ring's open block at the end.
    assert stats["seen"] + stats["shed_packets"] > 0


def test_a_flood_with_the_default_rate_threshold(flood_lab, tmp_path):
    """The kubectl side's default (2,000 records/s, then aggregates): the same bounds."""
    d, client = flood_lab
    run = run_flooded_agent(d.dns, client, d.server.ip4, tmp_path, "stop-file", [],
                            flood_seconds=2.0, env=dnslab.agent_env())
    assert run.returncode == 0 and run.records[-1]["reason"] == "stop-file"
    assert run.time_to_stop <= STOP_WITHIN + SLACK, run.time_to_stop
    assert run.peak_rss_kb <= RSS_BUDGET_KB, run.peak_rss_kb
    _check_accounting(run)
    aggs = [r for r in run.records if r["type"] == "agg"]
    # By the threshold, or (on a machine slow enough to fall behind within the first
    # 2,000 records) by the rate it managed: each record says which.
    assert aggs and all(a["threshold"] == 2000 or a["behind"] for a in aggs)
    assert run.stats["emitted"] <= 2000
