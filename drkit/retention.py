"""Retention: which snapshots to keep, as a pure function (restic ``forget`` semantics).

``decide`` is given every committed snapshot of one host and a policy, and
returns keep/remove with the reasons for each. It reads no clock, no store,
no catalog: the caller passes ``now``, the drilled ids and the Object Lock
dates, so the rules can be tested exhaustively.

Rules (all of them apply; a snapshot kept by any rule is kept):

- ``keep_last = n``: the n newest snapshots.
- ``keep_hourly/daily/weekly/monthly/yearly = n``: walking from the newest
  complete snapshot back, the newest complete snapshot of each of the n most
  recent hours/days/ISO weeks/months/years *that have one* (empty periods do
  not count, as in restic). If fewer than n periods exist, the oldest complete
  snapshot is kept too, so the longest history survives until the buckets fill
  (restic 0.17 does the same).
- ``keep_within = "7d"``: every snapshot at most that long before the
  *newest* snapshot (not before now: if backups stop, history is not eaten).

Calendar buckets look only at complete snapshots, so a partial run never
displaces a complete one from its day. Periods are in ``tz`` (UTC unless
given).

Guards, whatever the policy says: the newest complete snapshot, the newest
snapshot that passed a drill, snapshots under Object Lock retention (until
their retain-until date) and anything in ``pinned`` are kept. A policy with no
rule set (all None or 0) keeps everything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

from drkit.durations import format_duration, parse_duration
from drkit.repository.manifest import snapshot_time


class RetentionLike(Protocol):
    """What ``decide`` reads from a policy's ``[retention]`` (drkit.policy.models.Retention)."""

    @property
    def keep_last(self) -> int | None: ...
    @property
    def keep_hourly(self) -> int | None: ...
    @property
    def keep_daily(self) -> int | None: ...
    @property
    def keep_weekly(self) -> int | None: ...
    @property
    def keep_monthly(self) -> int | None: ...
    @property
    def keep_yearly(self) -> int | None: ...
    @property
    def keep_within(self) -> str | None: ...


@dataclass(frozen=True)
class Policy:
    """A plain RetentionLike, for callers and tests without a policy model."""

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None


@dataclass(frozen=True, order=True)
class SnapInfo:
    """One committed snapshot: its id, start time and whether it is complete."""

    time: dt.datetime
    id: str
    complete: bool = field(default=True, compare=False)

    @classmethod
    def of(cls, snapshot_id: str, complete: bool = True) -> SnapInfo:
        """A SnapInfo whose time is read from the id. Raises ValueError for a malformed id."""
        return cls(snapshot_time(snapshot_id), snapshot_id, complete)


@dataclass(frozen=True)
class Decision:
    snapshot: SnapInfo
    keep: bool
    reasons: list[str]


BucketKey = Callable[[dt.datetime], str]

# Name, policy attribute, bucket key (a label readable in reasons).
BUCKETS: tuple[tuple[str, str, BucketKey], ...] = (
    ("hourly", "keep_hourly", lambda t: t.strftime("%Y-%m-%d %H:00")),
    ("daily", "keep_daily", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", "keep_weekly", lambda t: f"{t.isocalendar()[0]:04d}-W{t.isocalendar()[1]:02d}"),
    ("monthly", "keep_monthly", lambda t: t.strftime("%Y-%m")),
    ("yearly", "keep_yearly", lambda t: t.strftime("%Y")),
)


def is_empty(policy: RetentionLike) -> bool:
    """True if no rule is set: such a policy keeps everything."""
    counts = [policy.keep_last] + [getattr(policy, attr) for _, attr, _ in BUCKETS]
    return not any(counts) and not _within(policy)


def describe(policy: RetentionLike) -> str:
    """``keep_daily=7, keep_weekly=4``: the rules set, for messages."""
    parts = [
        f"{name}={getattr(policy, name)}"
        for name in ("keep_last", *(attr for _, attr, _ in BUCKETS))
        if getattr(policy, name)
    ]
    if policy.keep_within:
        parts.append(f"keep_within={policy.keep_within}")
    return ", ".join(parts) or "no rules (keep everything)"


def _within(policy: RetentionLike) -> dt.timedelta | None:
    if not policy.keep_within:
        return None
    delta = parse_duration(policy.keep_within)
    return delta if delta > dt.timedelta(0) else None


def decide(
    snapshots: Iterable[SnapInfo],
    policy: RetentionLike,
    now: dt.datetime,
    *,
    drilled: AbstractSet[str] = frozenset(),
    locked: Mapping[str, dt.datetime] | None = None,
    pinned: Mapping[str, list[str]] | None = None,
    tz: dt.tzinfo = dt.UTC,
) -> list[Decision]:
    """Keep or remove each snapshot, with reasons; newest first.

    ``drilled``: ids of snapshots that passed a drill. ``locked``: id ->
    Object Lock retain-until (kept while that is after ``now``). ``pinned``:
    id -> reasons, kept unconditionally (callers' own guards). Every snapshot
    appears exactly once; a kept one has at least one reason, a removed one
    says why. Raises ValueError if ``keep_within`` is not a duration.
    """
    snaps = sorted(set(snapshots), reverse=True)
    reasons: dict[str, list[str]] = {s.id: [] for s in snaps}
    locked = locked or {}
    pinned = pinned or {}

    if is_empty(policy):
        for s in snaps:
            reasons[s.id].append("no retention rule set: keep everything")
    else:
        _apply_rules(snaps, policy, reasons, tz)

    complete = [s for s in snaps if s.complete]
    if complete:
        reasons[complete[0].id].append("newest complete snapshot")
    newest_drilled = next((s for s in snaps if s.id in drilled), None)
    if newest_drilled is not None:
        reasons[newest_drilled.id].append("newest snapshot that passed a drill")
    for s in snaps:
        until = locked.get(s.id)
        if until is not None and until > now:
            reasons[s.id].append(
                f"object lock retention until {until.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"
            )
        reasons[s.id].extend(pinned.get(s.id, []))

    out: list[Decision] = []
    for s in snaps:
        kept = reasons[s.id]
        if kept:
            out.append(Decision(s, True, kept))
        else:
            out.append(Decision(s, False, [f"matched no rule ({describe(policy)})"]))
    return out


def _apply_rules(
    snaps: list[SnapInfo], policy: RetentionLike, reasons: dict[str, list[str]], tz: dt.tzinfo
) -> None:
    """Add the policy's keep reasons to ``reasons``; ``snaps`` is newest first."""
    if policy.keep_last:
        for i, s in enumerate(snaps[: policy.keep_last], start=1):
            reasons[s.id].append(f"last {i} of {policy.keep_last}")

    complete = [s for s in snaps if s.complete]
    for name, attr, key in BUCKETS:
        wanted: int | None = getattr(policy, attr)
        if not wanted:
            continue
        left = wanted
        last_bucket: str | None = None
        kept_ids: set[str] = set()
        for s in complete:
            if left == 0:
                break
            bucket = key(s.time.astimezone(tz))
            if bucket == last_bucket:
                continue
            last_bucket = bucket
            left -= 1
            kept_ids.add(s.id)
            reasons[s.id].append(f"{name} {bucket}")
        if left > 0 and complete and complete[-1].id not in kept_ids:
            oldest = complete[-1]
            reasons[oldest.id].append(f"oldest snapshot ({name}: fewer than {wanted} periods)")

    within = _within(policy)
    if within is not None and snaps:
        newest = snaps[0].time
        for s in snaps:
            if newest - s.time <= within:
                reasons[s.id].append(f"within {format_duration(within)} of the newest")
