"""The agent's arguments: names from flags, files and the compact --domains-z form."""

from __future__ import annotations

import pytest

from kubectl_dnstrace import protocol
from kubectl_dnstrace.agent import main as agent_main
from kubectl_dnstrace.agent.main import UsageError, encode_domains, parse_args, read_domains
from kubectl_dnstrace.agent.volume import VolumeGate


def test_names_from_every_source(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("# comment\nfile.example\n\n  spaced.example  # trailing comment\n")
    blob = encode_domains([f"n{i}.example" for i in range(3000)])
    opts = parse_args(["--domain", "flag.example", "--domain-file", str(f), "--domains-z", blob])
    names = read_domains(opts)
    assert names[:3] == ["flag.example", "file.example", "spaced.example"]
    assert len(names) == 3 + 3000 and names[-1] == "n2999.example"
    assert len(blob) < 12_000  # thousands of names fit in container args


def test_unreadable_file_and_bad_blob_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="cannot read the domain file"):
        read_domains(parse_args(["--domain-file", str(tmp_path / "missing")]))
    with pytest.raises(UsageError, match="--domains-z"):
        read_domains(parse_args(["--domains-z", "not base64!"]))


@pytest.mark.parametrize("args", [["--duration", "0"], ["--stats-interval", "-1"],
                                  ["--max-rate", "-5"], ["--bogus"], ["--ring-mb", "0"],
                                  ["--ring-mb", "33"]])
def test_bad_values(args):
    with pytest.raises(UsageError):
        parse_args(args)


def test_defaults():
    opts = parse_args([])
    assert (opts.duration, opts.stats_interval, opts.max_rate, opts.pcap, opts.ring_mb) == \
        (300.0, 5.0, 2000, False, 8)


def test_volume_gate_switches_and_returns():
    gate = VolumeGate(3)
    assert [gate.allow_record(10.0) for _ in range(4)] == [True, True, True, False]
    assert gate.aggregating
    gate.tally(("10.0.0.1", "a.example", "A", None))
    rec = gate.take(11.0)
    assert rec["groups"] == [{"client": "10.0.0.1", "qname": "a.example", "qtype": "A",
                              "rcode": None, "count": 1}]
    assert rec["threshold"] == 3 and rec["total"] == 1
    assert not gate.aggregating  # a quiet second: back to records
    assert gate.allow_record(12.0)


def test_falling_behind_aggregates_at_once_at_any_max_rate():
    """--max-rate 0 never aggregates by rate; falling behind does, with the record rate it
    managed as the threshold, and every message of such an interval counts as shed."""
    gate = VolumeGate(0)
    assert all(gate.allow_record(10.0 + i * 0.001) for i in range(300))
    gate.fall_behind(10.5)
    assert gate.aggregating and gate.behind and not gate.allow_record(10.6)
    for i in range(40):
        gate.tally(("10.0.0.1", f"n{i}.example", "A", None))
    rec = gate.take(11.5, caught_up=False)
    assert rec["behind"] is True and rec["threshold"] == 300 and rec["total"] == 40
    assert gate.shed_records == 40
    assert gate.aggregating  # a quiet interval, but not caught up: still aggregating
    rec = gate.take(12.5, caught_up=True)
    assert rec is None and not gate.aggregating and not gate.behind
    assert gate.threshold == 0 and gate.allow_record(12.6)


def test_shed_records_are_those_max_rate_would_have_let_through():
    gate = VolumeGate(100)
    gate.fall_behind(10.0)
    for i in range(1000):
        gate.tally(("10.0.0.1", f"n{i}.example", "A", None))
    rec = gate.take(12.0, caught_up=True)
    assert rec["total"] == 1000 and gate.shed_records == 200  # 100/s for 2 s


def test_a_full_group_table_counts_the_rest_in_the_total():
    gate = VolumeGate(1, max_keys=3)
    gate.allow_record(10.0)
    assert not gate.allow_record(10.0)
    for name in ("a", "b", "c", "d", "e", "a"):
        gate.tally(("10.0.0.1", name, "A", None))
    rec = gate.take(11.0)
    assert {g["qname"]: g["count"] for g in rec["groups"]} == {"a": 2, "b": 1, "c": 1}
    assert rec["total"] == 6 and rec["ungrouped"] == 2
    assert rec["other_count"] == 2 and rec["other_groups"] == 0
    assert gate.ungrouped_total == 2 and "behind" not in rec


def test_an_agent_bug_still_ends_with_error_stats_and_bye(monkeypatch, capfd):
    """Every run ends with stats and bye: a bug in the capture loop too (simulated here,
    since a real one cannot be made to order)."""
    def broken_run(self):
        self.seen = 7
        raise RuntimeError("boom")

    monkeypatch.setattr(agent_main.Agent, "run", broken_run)
    assert agent_main.main(["--duration", "1"]) == agent_main.EXIT_FAILED
    records = [protocol.decode(line) for line in capfd.readouterr().out.splitlines()]
    assert [r["type"] for r in records] == ["error", "stats", "bye"]
    assert records[0]["message"] == "capture agent failed: RuntimeError: boom"
    assert records[1]["seen"] == 7 and records[1]["shed_packets"] == 0
    assert records[2]["reason"] == "error"
