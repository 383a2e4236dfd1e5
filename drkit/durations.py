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
