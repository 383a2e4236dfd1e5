"""Snapshot ids order runs by start time, even two runs started in the same second."""

from __future__ import annotations

import datetime as dt

import pytest

from drkit.repository.manifest import new_snapshot_id, snapshot_time


def test_runs_in_the_same_second_sort_in_start_order() -> None:
    # The random suffix must never decide between runs started one after the other:
    # a `--due` tick or a retry can start the next run within the same second.
    base = dt.datetime(2026, 12, 5, 10, 58, 52, tzinfo=dt.UTC)
    starts = [base + dt.timedelta(milliseconds=ms) for ms in (1, 2, 250, 999)] * 8
    ids = [new_snapshot_id(t) for t in starts]
    pairs = sorted(zip(ids, starts, strict=True))
    assert [t for _, t in pairs] == sorted(starts)
    assert all(snapshot_time(i) == t for i, t in zip(ids, starts, strict=True))


def test_id_names_utc_start_to_the_millisecond() -> None:
    local = dt.datetime(2026, 12, 5, 11, 58, 52, 318_999, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    sid = new_snapshot_id(local)
    assert sid.startswith("20261205T105852.318Z-") and len(sid) == len("20261205T105852.318Z-") + 6


def test_ids_written_before_milliseconds_still_parse_and_sort_by_second() -> None:
    old = "20261205T105852Z-82c105"
    assert snapshot_time(old) == dt.datetime(2026, 12, 5, 10, 58, 52, tzinfo=dt.UTC)
    newer = new_snapshot_id(dt.datetime(2026, 12, 5, 10, 58, 53, tzinfo=dt.UTC))
    assert sorted([newer, old]) == [old, newer]


@pytest.mark.parametrize(
    "bad", ["latest", "2026-12-05", "20261205T1058Z-aaaaaa", "20261205T105852Z", ""]
)
def test_other_names_are_not_snapshot_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="not a snapshot id"):
        snapshot_time(bad)
