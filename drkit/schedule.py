"""Schedules: when a backup is due, as pure functions over cron expressions (croniter).

drkit is not a daemon. cron (or a systemd timer) runs ``drkit backup --due``
every few minutes, and each run asks, per host (or source), whether a
scheduled time has passed since the last successful run:

    due  <=>  last_success is None  or  last_success < latest slot <= now

That runs a job exactly once per scheduled time, and after missed runs
(machine off, repository unreachable) once, not once per missed slot. A
failed run does not move ``last_success``, so the next tick retries.
``last_success`` is the *start* time of the newest complete snapshot (its id),
so a run that started before a slot does not count for it.

Jitter shifts every slot of one host by a fixed offset in
``[0, jitter_seconds)`` derived from a hash of the host name: a fleet with the
same schedule spreads its uploads instead of stampeding the bucket, and each
host keeps a stable time from day to day.

Cron expressions have five fields (minute hour day-of-month month
day-of-week) or are one of croniter's ``@hourly``/``@daily``/``@weekly``/
``@monthly``/``@yearly``; they are evaluated in ``tz`` (UTC by default, like
the snapshot ids).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import shlex
from collections.abc import Sequence

from croniter import CroniterBadDateError, croniter

DEFAULT_COMMAND: tuple[str, ...] = ("drkit", "backup", "--due", "-q")
_ALIASES = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")


def check_schedule(expr: str) -> str:
    """Return ``expr`` if it is a valid five-field cron expression; raise ValueError if not.

    Suitable as a pydantic ``AfterValidator`` for policy ``schedule`` fields.
    """
    text = expr.strip()
    if text in _ALIASES:
        return text
    if len(text.split()) != 5 or not _parses(text):
        raise ValueError(
            f"not a cron expression: {expr!r} (five fields: minute hour day month weekday, "
            "e.g. '47 2 * * *', or @hourly/@daily/@weekly/@monthly)"
        )
    return text


@functools.lru_cache(maxsize=256)
def _parses(text: str) -> bool:
    # Parsing costs more than evaluating; --due and tests ask about the same few.
    return bool(croniter.is_valid(text))


def jitter_offset(key: str, jitter_seconds: int) -> dt.timedelta:
    """The fixed delay in ``[0, jitter_seconds)`` for ``key`` (a host name).

    A hash, not ``random``: the same host gets the same offset in every run,
    on every machine, so its slots are stable.
    """
    if jitter_seconds <= 0:
        return dt.timedelta(0)
    digest = hashlib.sha256(key.encode()).digest()
    return dt.timedelta(seconds=int.from_bytes(digest[:8], "big") % jitter_seconds)


def _aware(t: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """``t`` in ``tz``; a naive time is taken to be UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(tz)


def last_slot(
    schedule: str,
    now: dt.datetime,
    *,
    jitter_seconds: int = 0,
    key: str = "",
    tz: dt.tzinfo = dt.UTC,
) -> dt.datetime | None:
    """The latest scheduled time (jitter included) at or before ``now``, in UTC.

    None if the expression never fired before ``now`` (e.g. ``0 0 30 2 *``).
    Raises ValueError for an invalid expression. Second resolution.
    """
    check_schedule(schedule)
    offset = jitter_offset(key, jitter_seconds)
    # croniter's get_prev is strictly before its start: start one second past
    # the (shifted) now so a slot exactly at now counts.
    start = _aware(now, tz).replace(microsecond=0) - offset + dt.timedelta(seconds=1)
    try:
        slot: dt.datetime = croniter(schedule, start).get_prev(dt.datetime)
    except CroniterBadDateError:
        return None
    return (slot + offset).astimezone(dt.UTC)


def due(
    schedule: str,
    last_success: dt.datetime | None,
    now: dt.datetime,
    jitter_seconds: int = 0,
    key: str = "",
    *,
    tz: dt.tzinfo = dt.UTC,
) -> bool:
    """True if a scheduled time has come since ``last_success`` (or nothing ever succeeded).

    ``last_success``: start time of the last successful run, None if none.
    ``key``: the host (or ``host/source``) name that seeds the jitter.
    Raises ValueError for an invalid expression.
    """
    slot = last_slot(schedule, now, jitter_seconds=jitter_seconds, key=key, tz=tz)
    if last_success is None:
        return True
    if slot is None:
        return False
    return _aware(last_success, dt.UTC) < slot


def next_runs(
    schedule: str,
    now: dt.datetime,
    n: int,
    *,
    jitter_seconds: int = 0,
    key: str = "",
    tz: dt.tzinfo = dt.UTC,
) -> list[dt.datetime]:
    """The next ``n`` scheduled times strictly after ``now`` (jitter included), in UTC.

    Fewer than ``n`` if the expression runs out of dates. Raises ValueError
    for an invalid expression.
    """
    check_schedule(schedule)
    offset = jitter_offset(key, jitter_seconds)
    it = croniter(schedule, _aware(now, tz) - offset)
    out: list[dt.datetime] = []
    while len(out) < n:
        try:
            t: dt.datetime = it.get_next(dt.datetime)
        except CroniterBadDateError:
            break
        out.append((t + offset).astimezone(dt.UTC))
    return out


@functools.lru_cache(maxsize=64)
def shortest_gap(schedule: str) -> dt.timedelta:
    """The shortest time between two slots of ``schedule`` over a week (a week if it
    fires once or never in a week). Raises ValueError for an invalid expression."""
    check_schedule(schedule)
    start = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)  # a Monday
    week = dt.timedelta(days=7)
    it = croniter(schedule, start)
    gap, prev = week, None
    for _ in range(7 * 24 * 60 + 1):
        try:
            t: dt.datetime = it.get_next(dt.datetime)
        except CroniterBadDateError:
            break
        if t - start > week:
            break
        if prev is not None:
            gap = min(gap, t - prev)
        prev = t
    return gap


# -- emitting cron and systemd entries ---------------------------------------

# How often the emitted entries run `backup --due`: slots closer than this are
# taken at most once per interval (policy validate warns about such schedules).
DUE_EVERY_MINUTES = 10


def _cron_every(every_minutes: int) -> str:
    if not 1 <= every_minutes <= 60:
        raise ValueError("every_minutes must be between 1 and 60")
    return "0 * * * *" if every_minutes == 60 else f"*/{every_minutes} * * * *"


def emit_cron(
    *,
    every_minutes: int = DUE_EVERY_MINUTES,
    command: Sequence[str] = DEFAULT_COMMAND,
    user: str | None = None,
) -> str:
    """A crontab entry that runs ``command`` every ``every_minutes`` minutes.

    With ``user`` the line has the user field of ``/etc/cron.d`` files;
    without it, it is for ``crontab -e``. Arguments are shell-quoted and ``%``
    (special to cron) is escaped. ``-q`` in the default command keeps cron's
    mail for failures only. Raises ValueError for a bad interval.
    """
    line = " ".join(shlex.quote(arg) for arg in command).replace("%", "\\%")
    fields = [_cron_every(every_minutes)]
    if user:
        fields.append(user)
    fields.append(line)
    return (
        f"# drkit: back up every host whose schedule has come due (checked every "
        f"{every_minutes} min)\n" + " ".join(fields) + "\n"
    )


def _systemd_quote(arg: str) -> str:
    """One ExecStart argument: systemd's own quoting, ``%`` and ``$`` escaped."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in " \t\"'\\;"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def emit_systemd(
    *,
    every_minutes: int = DUE_EVERY_MINUTES,
    command: Sequence[str] = DEFAULT_COMMAND,
    user: str | None = None,
    environment_file: str | None = None,
    name: str = "drkit-backup",
) -> dict[str, str]:
    """A service + timer pair: ``{"<name>.service": text, "<name>.timer": text}``.

    ``command[0]`` should be an absolute path (systemd does not search PATH
    on older versions). ``environment_file`` (optional, ``-`` prefixed so a
    missing file is not an error) is where ``env:NAME`` secrets live. Raises
    ValueError for a bad interval.
    """
    if not 1 <= every_minutes <= 60:
        raise ValueError("every_minutes must be between 1 and 60")
    calendar = "hourly" if every_minutes == 60 else f"*:0/{every_minutes}"
    service = [
        "[Unit]",
        "Description=drkit: back up every host whose schedule has come due",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        "ExecStart=" + " ".join(_systemd_quote(a) for a in command),
    ]
    if user:
        service.append(f"User={user}")
    if environment_file:
        service.append(f"EnvironmentFile=-{environment_file}")
    service += [
        # Backups yield to interactive work; drkit's own lock prevents overlaps.
        "Nice=10",
        "IOSchedulingClass=best-effort",
        "IOSchedulingPriority=7",
    ]
    timer = [
        "[Unit]",
        f"Description=Run {name}.service every {every_minutes} minutes",
        "",
        "[Timer]",
        f"OnCalendar={calendar}",
        # drkit jitters per host itself (stable offsets); keep systemd's tick exact.
        "AccuracySec=1s",
        "Persistent=true",
        f"Unit={name}.service",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]
    return {
        f"{name}.service": "\n".join(service) + "\n",
        f"{name}.timer": "\n".join(timer) + "\n",
    }
