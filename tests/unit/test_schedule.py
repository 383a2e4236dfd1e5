"""schedule: `backup --due` semantics on a controlled clock, jitter, emitted cron/systemd."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from drkit.schedule import (
    check_schedule,
    due,
    emit_cron,
    emit_systemd,
    jitter_offset,
    last_slot,
    next_runs,
)

START = dt.datetime(2026, 3, 2, 0, 0, tzinfo=dt.UTC)
TEN_MIN = dt.timedelta(minutes=10)


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, minute, tzinfo=dt.UTC)


def simulate(
    schedule: str,
    end: dt.datetime,
    *,
    tick: dt.timedelta = TEN_MIN,
    start: dt.datetime = START,
    down: Callable[[dt.datetime], bool] = lambda _t: False,
    fails: Callable[[dt.datetime], bool] = lambda _t: False,
    jitter: int = 0,
    key: str = "",
    last_success: dt.datetime | None = None,
) -> list[tuple[dt.datetime, bool]]:
    """cron runs `drkit backup --due` every ``tick``: returns (time, succeeded) of each run."""
    runs: list[tuple[dt.datetime, bool]] = []
    t = start
    while t < end:
        if not down(t) and due(schedule, last_success, t, jitter, key):
            ok = not fails(t)
            runs.append((t, ok))
            if ok:
                last_success = t  # the snapshot id carries the run's start time
        t += tick
    return runs


def test_daily_schedule_runs_once_per_day_at_the_first_tick_after_its_time() -> None:
    runs = simulate("47 2 * * *", at(7, 0), last_success=at(1, 2, 50))
    assert runs == [(at(d, 2, 50), True) for d in range(2, 7)]


def test_after_missed_runs_it_runs_once_not_once_per_missed_slot() -> None:
    # The machine is off from Mar 3 01:00 to Mar 5 10:00: slots of Mar 3, 4 and 5 pass.
    def off(t: dt.datetime) -> bool:
        return at(3, 1) <= t < at(5, 10)

    runs = simulate("47 2 * * *", at(7, 0), down=off, last_success=at(1, 2, 50))
    assert [t for t, _ in runs] == [at(2, 2, 50), at(5, 10, 0), at(6, 2, 50)]


def test_a_failed_run_is_retried_at_the_next_tick_and_then_counts_once() -> None:
    runs = simulate(
        "47 2 * * *", at(4, 0), fails=lambda t: t == at(2, 2, 50), last_success=at(1, 3)
    )
    assert runs == [(at(2, 2, 50), False), (at(2, 3, 0), True), (at(3, 2, 50), True)]


def test_never_backed_up_is_due_at_once() -> None:
    assert due("47 2 * * *", None, at(2, 0, 1))
    assert simulate("47 2 * * *", at(2, 12), start=at(2, 0))[0] == (at(2, 0), True)


def test_hourly_with_ticks_every_ten_minutes() -> None:
    runs = simulate("0 * * * *", at(2, 6), last_success=START)
    assert [t for t, _ in runs] == [at(2, h) for h in range(1, 6)]


def test_slot_exactly_at_now_is_due_and_the_boundary_is_inclusive() -> None:
    assert last_slot("47 2 * * *", at(2, 2, 47)) == at(2, 2, 47)
    assert last_slot("47 2 * * *", at(2, 2, 46) + dt.timedelta(seconds=59)) == at(1, 2, 47)
    assert due("47 2 * * *", at(1, 2, 47), at(2, 2, 47))
    assert not due("47 2 * * *", at(2, 2, 47), at(2, 2, 47))


def test_jitter_is_stable_per_host_bounded_and_spreads_a_fleet() -> None:
    hosts = [f"host-{i}" for i in range(40)]
    offsets = [jitter_offset(h, 3600) for h in hosts]
    assert all(dt.timedelta(0) <= o < dt.timedelta(hours=1) for o in offsets)
    assert offsets == [jitter_offset(h, 3600) for h in hosts]  # stable
    assert len(set(offsets)) > 30  # spread
    assert jitter_offset("vultr", 0) == dt.timedelta(0)


def test_jitter_shifts_when_a_host_runs() -> None:
    offset = jitter_offset("vultr", 1800)
    assert offset > dt.timedelta(minutes=10)  # so the shift is visible with 10-minute ticks
    runs = simulate("0 3 * * *", at(4, 0), jitter=1800, key="vultr", last_success=at(1, 4))
    first_tick_after = [
        at(d, 3) + offset + (-(at(d, 3) + offset - START) % TEN_MIN) for d in (2, 3)
    ]
    assert [t for t, _ in runs] == first_tick_after
    slot = at(2, 3) + offset
    assert last_slot("0 3 * * *", slot, jitter_seconds=1800, key="vultr") == slot
    second = dt.timedelta(seconds=1)
    assert last_slot("0 3 * * *", slot - second, jitter_seconds=1800, key="vultr") == slot - (
        dt.timedelta(days=1)
    )
    # A manual run between the nominal 03:00 and this host's shifted time does not count.
    assert due("0 3 * * *", at(2, 3, 5), slot, 1800, "vultr")
    assert next_runs("0 3 * * *", at(2, 0), 2, jitter_seconds=1800, key="vultr") == [
        at(2, 3) + offset,
        at(3, 3) + offset,
    ]


def test_next_runs() -> None:
    assert next_runs("47 2 * * *", at(2, 2, 47), 3) == [at(3, 2, 47), at(4, 2, 47), at(5, 2, 47)]
    assert next_runs("@hourly", at(2, 0, 30), 2) == [at(2, 1), at(2, 2)]
    assert next_runs("0 0 30 2 *", at(2, 0), 2) == []  # never fires


def test_expression_that_never_fires_is_never_due_once_run() -> None:
    assert not due("0 0 30 2 *", at(1, 0), at(2, 0))


def test_naive_times_are_utc_and_other_time_zones_apply() -> None:
    assert last_slot("47 2 * * *", dt.datetime(2026, 3, 2, 3, 0)) == at(2, 2, 47)
    plus2 = dt.timezone(dt.timedelta(hours=2))
    # 02:47 in UTC+2 is 00:47 UTC.
    assert last_slot("47 2 * * *", at(2, 1), tz=plus2) == at(2, 0, 47)


@pytest.mark.parametrize("bad", ["bogus", "* * * *", "0 0 * * * *", "61 * * * *", ""])
def test_invalid_expressions_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a cron expression"):
        check_schedule(bad)
    with pytest.raises(ValueError, match="not a cron expression"):
        due(bad, None, START)


def test_valid_expressions_pass() -> None:
    for good in ("47 2 * * *", "*/15 * * * 1-5", "@daily", " 0 3 * * 0 "):
        assert check_schedule(good) == good.strip()


# -- property: exactly once per due time, whatever the tick and downtime --------------

SCHEDULES = ["47 2 * * *", "0 * * * *", "*/30 * * * *", "15 4 * * 1", "0 12 */3 * *", "5 */6 * * *"]


# Each example evaluates `due` at every tick of 8 days: keep the count modest.
@settings(max_examples=20, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    tick_minutes=st.sampled_from([10, 17, 60, 180]),
    outage=st.tuples(st.integers(0, 7 * 24), st.integers(0, 4 * 24)),
    jitter=st.sampled_from([0, 600, 7200]),
)
def test_each_due_time_runs_exactly_once(
    schedule: str, tick_minutes: int, outage: tuple[int, int], jitter: int
) -> None:
    down_from = START + dt.timedelta(hours=outage[0])
    down_until = down_from + dt.timedelta(hours=outage[1])
    end = START + dt.timedelta(days=8)

    def off(t: dt.datetime) -> bool:
        return down_from <= t < down_until

    last = START - dt.timedelta(days=1)
    runs = simulate(
        schedule,
        end,
        tick=dt.timedelta(minutes=tick_minutes),
        down=off,
        jitter=jitter,
        key="h",
        last_success=last,
    )
    slots = [last_slot(schedule, t, jitter_seconds=jitter, key="h") for t, _ in runs]
    # Once per due time: no two runs serve the same scheduled time ...
    assert len(slots) == len(set(slots))
    # ... each run had a slot that passed since the previous run ...
    previous = last
    for (t, _), slot in zip(runs, slots, strict=True):
        assert slot is not None and previous < slot <= t
        previous = t
    # ... and nothing stays due: after every up tick the newest slot is served.
    t = START
    served = last
    run_times = {r for r, _ in runs}
    while t < end:
        if t in run_times:
            served = t
        if not off(t):
            slot = last_slot(schedule, t, jitter_seconds=jitter, key="h")
            assert slot is None or slot <= served
        t += dt.timedelta(minutes=tick_minutes)


# -- emitted cron and systemd entries -------------------------------------------------


def test_emit_cron_line() -> None:
    text = emit_cron(command=["/usr/local/bin/drkit", "backup", "--due", "-q"])
    comment, line = text.splitlines()
    assert comment.startswith("# drkit:")
    assert line == "*/10 * * * * /usr/local/bin/drkit backup --due -q"
    assert croniter.is_valid(" ".join(line.split()[:5]))


def test_emit_cron_quotes_escapes_percent_and_takes_a_user() -> None:
    text = emit_cron(
        every_minutes=60, command=["drkit", "backup", "--policy-dir", "/etc/my policies", "50%"]
    )
    assert text.splitlines()[1] == "0 * * * * drkit backup --policy-dir '/etc/my policies' 50\\%"
    assert emit_cron(user="root").splitlines()[1] == "*/10 * * * * root drkit backup --due -q"
    with pytest.raises(ValueError, match="every_minutes must be between 1 and 60"):
        emit_cron(every_minutes=0)


def test_emit_systemd_pair() -> None:
    units = emit_systemd(
        every_minutes=5,
        command=["/usr/bin/drkit", "backup", "--due", "-q", "--policy-dir", "/etc/drkit/my pol"],
        user="backup",
        environment_file="/etc/drkit/env",
    )
    assert set(units) == {"drkit-backup.service", "drkit-backup.timer"}
    service, timer = units["drkit-backup.service"], units["drkit-backup.timer"]
    assert (
        'ExecStart=/usr/bin/drkit backup --due -q --policy-dir "/etc/drkit/my pol"'
        in service.splitlines()
    )
    assert "Type=oneshot" in service and "User=backup" in service
    assert "EnvironmentFile=-/etc/drkit/env" in service
    assert "OnCalendar=*:0/5" in timer and "Unit=drkit-backup.service" in timer
    assert "WantedBy=timers.target" in timer


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # ExecStart must name an executable that exists: use this Python.
    units = emit_systemd(command=[sys.executable, "-m", "drkit", "backup", "--due", "-q", "100%"])
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    res = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "100%%" in units["drkit-backup.service"]
    calendar = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=2", "*:0/10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert calendar.returncode == 0, calendar.stderr
