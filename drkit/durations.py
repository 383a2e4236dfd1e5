"""Durations written in policies and flags: ``90s``, ``45m``, ``26h``, ``7d``, ``2w``."""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)\s*([smhdw])")


def parse_duration(text: str) -> dt.timedelta:
    """Parse ``1d12h``-style text. Raises ValueError on anything else."""
    s = text.strip().lower().replace(" ", "")
    if not s or _PART.sub("", s):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 45m, 26h, 7d, 2w)")
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(s))
    return dt.timedelta(seconds=seconds)


def format_duration(delta: dt.timedelta) -> str:
    total = int(delta.total_seconds())
    if total < 0:
        return "-" + format_duration(-delta)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size:
            out.append(f"{total // size}{unit}")
            total %= size
    if total or not out:
        out.append(f"{total}s")
    return "".join(out[:2])


_AGO = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day|week)s?\s+ago\s*$", re.IGNORECASE)
_AGO_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def parse_when(text: str, now: dt.datetime) -> dt.datetime:
    """A point in time: ``2 days ago``, ``yesterday``, ``36h`` (ago), or ISO 8601 (UTC if naive).

    Raises ValueError on anything else.
    """
    s = text.strip()
    m = _AGO.match(s)
    if m:
        return now - dt.timedelta(seconds=int(m.group(1)) * _AGO_UNITS[m.group(2).lower()])
    if s.lower() == "yesterday":
        return now - dt.timedelta(days=1)
    if s.lower() == "now":
        return now
    try:
        return now - parse_duration(s)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use e.g. '2 days ago', '36h', or 2026-11-20T03:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
