"""retention.decide: property tests against an independent reference, plus worked examples."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drkit.retention import Decision, Policy, SnapInfo, decide

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)


def snap(t: dt.datetime, n: int = 0, complete: bool = True) -> SnapInfo:
    return SnapInfo.of(t.strftime("%Y%m%dT%H%M%SZ") + f"-{n:06x}", complete)


def kept(decisions: list[Decision]) -> set[str]:
    return {d.snapshot.id for d in decisions if d.keep}


# -- an independent reference: group, then take, instead of walking with a cursor --

KEYS: dict[str, Callable[[dt.datetime], object]] = {
    "keep_hourly": lambda t: (t.date(), t.hour),
    "keep_daily": lambda t: t.date(),
    "keep_weekly": lambda t: t.isocalendar()[:2],
    "keep_monthly": lambda t: (t.year, t.month),
    "keep_yearly": lambda t: t.year,
}


def within_seconds(text: str) -> int:
    return int(text[:-1]) * {"h": 3600, "d": 86400}[text[-1]]


def reference(
    snaps: list[SnapInfo],
    policy: Policy,
    drilled: set[str],
    locked: dict[str, dt.datetime],
) -> set[str]:
    newest_first = sorted(snaps, key=lambda s: (s.time, s.id), reverse=True)
    counts = [policy.keep_last] + [getattr(policy, k) for k in KEYS]
    if not any(counts) and not policy.keep_within:
        return {s.id for s in snaps}
    keep: set[str] = set()
    if policy.keep_last:
        keep |= {s.id for s in newest_first[: policy.keep_last]}
    complete = [s for s in newest_first if s.complete]
    for attr, key in KEYS.items():
        n = getattr(policy, attr)
        if not n:
            continue
        groups: dict[object, list[SnapInfo]] = {}
        for s in complete:
            groups.setdefault(key(s.time), []).append(s)
        newest_per_group = [members[0] for members in groups.values()]
        keep |= {s.id for s in newest_per_group[:n]}
        if complete and len(groups) < n:
            keep.add(complete[-1].id)
    if policy.keep_within and newest_first:
        limit = newest_first[0].time - dt.timedelta(seconds=within_seconds(policy.keep_within))
        keep |= {s.id for s in snaps if s.time >= limit}
    return keep | guards(snaps, drilled, locked)


def guards(snaps: list[SnapInfo], drilled: set[str], locked: dict[str, dt.datetime]) -> set[str]:
    out: set[str] = set()
    complete = [s for s in snaps if s.complete]
    if complete:
        out.add(max(complete, key=lambda s: (s.time, s.id)).id)
    proven = [s for s in snaps if s.id in drilled]
    if proven:
        out.add(max(proven, key=lambda s: (s.time, s.id)).id)
    out |= {sid for sid, until in locked.items() if until > NOW}
    return out


# -- strategies ------------------------------------------------------------------

offsets = st.one_of(
    st.integers(0, 3 * 86400),  # dense: several per hour/day
    st.integers(0, 70 * 86400),
    st.integers(0, 3 * 366 * 86400),  # sparse: across years
)


@st.composite
def histories(draw: st.DrawFn) -> list[SnapInfo]:
    raw = draw(st.lists(st.tuples(offsets, st.integers(0, 9)), max_size=60))
    out = []
    for i, (offset, flag) in enumerate(raw):
        t = (NOW - dt.timedelta(seconds=offset)).replace(microsecond=0)
        out.append(snap(t, i, complete=flag != 0))  # about one in ten partial
    return out


counts = st.one_of(st.none(), st.integers(0, 8))
policies = st.builds(
    Policy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    keep_within=st.one_of(st.none(), st.sampled_from(["1h", "36h", "7d", "30d", "400d"])),
)


@st.composite
def cases(
    draw: st.DrawFn,
) -> tuple[list[SnapInfo], Policy, set[str], dict[str, dt.datetime]]:
    snaps = draw(histories())
    policy = draw(policies)
    ids = [s.id for s in snaps]
    drilled = set(draw(st.lists(st.sampled_from(ids), max_size=5))) if ids else set()
    locked_ids = draw(st.lists(st.sampled_from(ids), max_size=5, unique=True)) if ids else []
    locked = {
        sid: NOW + dt.timedelta(hours=draw(st.integers(-72, 72))) for sid in locked_ids
    }  # some expired, some not
    return snaps, policy, drilled, locked


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(cases())
def test_kept_set_matches_reference(
    case: tuple[list[SnapInfo], Policy, set[str], dict[str, dt.datetime]],
) -> None:
    snaps, policy, drilled, locked = case
    decisions = decide(snaps, policy, NOW, drilled=drilled, locked=locked)
    assert kept(decisions) == reference(snaps, policy, drilled, locked)


@SETTINGS
@given(cases())
def test_never_removes_newest_complete_drilled_or_locked(
    case: tuple[list[SnapInfo], Policy, set[str], dict[str, dt.datetime]],
) -> None:
    snaps, policy, drilled, locked = case
    decisions = decide(snaps, policy, NOW, drilled=drilled, locked=locked)
    removed = {d.snapshot.id for d in decisions if not d.keep}
    assert not removed & guards(snaps, drilled, locked)
    by_id = {d.snapshot.id: d for d in decisions}
    for sid, until in locked.items():
        if until > NOW:
            assert any(r.startswith("object lock retention until") for r in by_id[sid].reasons)


@SETTINGS
@given(cases())
def test_every_snapshot_decided_once_with_reasons(
    case: tuple[list[SnapInfo], Policy, set[str], dict[str, dt.datetime]],
) -> None:
    snaps, policy, drilled, locked = case
    decisions = decide(snaps, policy, NOW, drilled=drilled, locked=locked)
    assert sorted(d.snapshot.id for d in decisions) == sorted(s.id for s in snaps)
    assert all(d.reasons for d in decisions)
    times = [d.snapshot.time for d in decisions]
    assert times == sorted(times, reverse=True)  # newest first


@SETTINGS
@given(histories())
def test_empty_policy_keeps_everything(snaps: list[SnapInfo]) -> None:
    for empty in (Policy(), Policy(keep_last=0, keep_daily=0, keep_within="0s")):
        assert kept(decide(snaps, empty, NOW)) == {s.id for s in snaps}


# -- worked examples -------------------------------------------------------------------


def six_hourly(days: int) -> list[SnapInfo]:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return [snap(start + dt.timedelta(hours=6 * i), i) for i in range(days * 4)]


def test_keep_daily_keeps_the_newest_of_each_recent_day() -> None:
    decisions = decide(six_hourly(10), Policy(keep_daily=3), NOW)
    kept_times = sorted(d.snapshot.time for d in decisions if d.keep)
    assert kept_times == [dt.datetime(2026, 1, d, 18, tzinfo=dt.UTC) for d in (8, 9, 10)]
    newest = decisions[0]
    assert newest.reasons == ["daily 2026-01-10", "newest complete snapshot"]
    assert decisions[1].keep is False
    assert decisions[1].reasons == ["matched no rule (keep_daily=3)"]


def test_combined_rules_and_oldest_until_buckets_fill() -> None:
    # 10 days of history, keep_weekly=4: only 2 ISO weeks exist (Jan 1-4, Jan 5-10),
    # so the oldest snapshot is kept too, as restic does.
    decisions = decide(six_hourly(10), Policy(keep_last=2, keep_weekly=4), NOW)
    by_time = {d.snapshot.time: d for d in decisions if d.keep}
    assert sorted(by_time) == [
        dt.datetime(2026, 1, 1, 0, tzinfo=dt.UTC),  # oldest
        dt.datetime(2026, 1, 4, 18, tzinfo=dt.UTC),  # newest of 2026-W01
        dt.datetime(2026, 1, 10, 12, tzinfo=dt.UTC),  # last 2
        dt.datetime(2026, 1, 10, 18, tzinfo=dt.UTC),  # last 1, newest of 2026-W02
    ]
    assert "oldest snapshot (weekly: fewer than 4 periods)" in by_time[min(by_time)].reasons
    assert "weekly 2026-W01" in by_time[dt.datetime(2026, 1, 4, 18, tzinfo=dt.UTC)].reasons


def test_keep_within_counts_from_the_newest_snapshot_not_now() -> None:
    # Backups stopped 100 days ago: keep_within must not eat the remaining history.
    old = [snap(NOW - dt.timedelta(days=100 + d), d) for d in range(10)]
    decisions = decide(old, Policy(keep_within="7d"), NOW)
    assert len(kept(decisions)) == 8  # days 100..107 (inclusive bound)


def test_partial_snapshot_never_displaces_a_complete_one_from_its_day() -> None:
    day = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    good = snap(day.replace(hour=2), 1)
    partial = snap(day.replace(hour=20), 2, complete=False)
    decisions = decide([good, partial], Policy(keep_daily=1), NOW)
    assert kept(decisions) == {good.id}
    # ... but keep_last counts every committed snapshot.
    assert kept(decide([good, partial], Policy(keep_last=1), NOW)) == {good.id, partial.id}


def test_guards_hold_against_the_tightest_policy() -> None:
    history = six_hourly(5)
    proven = history[3]
    locked = {history[1].id: NOW + dt.timedelta(days=1), history[2].id: NOW - dt.timedelta(1)}
    decisions = decide(history, Policy(keep_last=1), NOW, drilled={proven.id}, locked=locked)
    assert kept(decisions) == {history[-1].id, proven.id, history[1].id}
    reasons = {d.snapshot.id: d.reasons for d in decisions}
    assert reasons[proven.id] == ["newest snapshot that passed a drill"]
    assert reasons[history[1].id] == [
        f"object lock retention until {NOW + dt.timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"
    ]
    assert reasons[history[-1].id] == ["last 1 of 1", "newest complete snapshot"]


def test_pinned_snapshots_are_kept_with_the_callers_reason() -> None:
    history = six_hourly(2)
    decisions = decide(history, Policy(keep_last=1), NOW, pinned={history[0].id: ["why not"]})
    assert kept(decisions) == {history[0].id, history[-1].id}


def test_buckets_follow_the_given_time_zone() -> None:
    # 23:30 UTC on Mar 1 is Mar 2 in UTC+2: a and b share a local day, not a UTC day.
    x = snap(dt.datetime(2026, 2, 27, 12, 0, tzinfo=dt.UTC), 0)
    a = snap(dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.UTC), 1)
    b = snap(dt.datetime(2026, 3, 2, 1, 0, tzinfo=dt.UTC), 2)
    policy = Policy(keep_daily=2)
    assert kept(decide([x, a, b], policy, NOW)) == {a.id, b.id}
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert kept(decide([x, a, b], policy, NOW, tz=plus2)) == {x.id, b.id}


def test_bad_keep_within_is_refused() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        decide(six_hourly(1), Policy(keep_within="a week"), NOW)


def test_no_snapshots_no_decisions() -> None:
    assert decide([], Policy(keep_daily=7), NOW) == []
