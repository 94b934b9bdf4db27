"""The agent's arguments: names from flags, files and the compact --domains-z form."""

from __future__ import annotations

import pytest

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
                                  ["--max-rate", "-5"], ["--bogus"]])
def test_bad_values(args):
    with pytest.raises(UsageError):
        parse_args(args)


def test_defaults():
    opts = parse_args([])
    assert (opts.duration, opts.stats_interval, opts.max_rate, opts.pcap) == (300.0, 5.0, 2000, False)


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
