"""The log stream's bookkeeping: timestamps, resume points, and seq-based dedup/loss."""

from __future__ import annotations

from kubectl_dnstrace.kube.logstream import SeqTracker, since_time, split_timestamp, ts_seconds


def test_split_timestamp_as_the_kubelet_writes_it() -> None:
    # The shape recorded from a real kubelet (live/log-follow-stream-dnstrace.txt).
    line = b'2026-11-26T13:23:40.206427536Z {"type":"stats","seq":4}'
    assert split_timestamp(line) == ("2026-11-26T13:23:40.206427536Z", b'{"type":"stats","seq":4}')
    assert split_timestamp(b'{"type":"bye"}') == ("", b'{"type":"bye"}')


def test_resume_point_is_truncated_to_the_second() -> None:
    assert since_time("2026-11-26T13:23:40.206427536Z") == "2026-11-26T13:23:40Z"
    assert since_time("2026-11-26T13:23:40Z") == "2026-11-26T13:23:40Z"
    assert since_time("") == ""
    assert abs(ts_seconds("2026-11-26T13:23:40.5Z") - 1795699420.5) < 1e-6


def test_seq_tracker_drops_duplicates_and_counts_gaps() -> None:
    t = SeqTracker()
    assert [t.accept(s) for s in (0, 1, 2)] == [(True, 0)] * 3
    # A resumed stream replays from the last second: already seen, dropped.
    assert t.accept(1) == (False, 0)
    assert t.accept(2) == (False, 0)
    assert t.accept(3) == (True, 0)
    # Records 4..6 never arrived: counted, never silent.
    assert t.accept(7) == (True, 3)
    assert (t.lost, t.duplicates, t.gaps) == (3, 2, [(4, 6)])
