"""Drill certificate checks: day counts for ordinary certificates, lifetimes for short ones."""

from __future__ import annotations

import datetime as dt

from drkit.drills.checks import certificate_checks

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def cert(name: str, before: dt.datetime, after: dt.datetime) -> dict[str, object]:
    return {"names": [name], "not_before": before.isoformat(), "not_after": after.isoformat()}


def statuses(*certs: dict[str, object]) -> list[tuple[str, str]]:
    checks = certificate_checks({"caddy": {"certificates": list(certs)}}, NOW, 14)
    return [(c.status, c.detail) for c in checks]


def test_ordinary_certificates_by_days_left() -> None:
    day = dt.timedelta(days=1)
    got = statuses(
        cert("a.example.test", NOW - 30 * day, NOW + 60 * day),
        cert("b.example.test", NOW - 80 * day, NOW + 10 * day),
        cert("c.example.test", NOW - 95 * day, NOW - 5 * day),
    )
    assert [s for s, _d in got] == ["pass", "warn", "fail"]


def test_caddys_12_hour_certificates_are_not_a_day_count_warning() -> None:
    hour = dt.timedelta(hours=1)
    fresh = cert("local.example.test", NOW - 2 * hour, NOW + 10 * hour)
    stale = cert("old.example.test", NOW - 20 * hour, NOW - 8 * hour)
    (s1, d1), (s2, d2) = statuses(fresh, stale)
    assert s1 == "pass" and "short-lived (12 h lifetime)" in d1  # was: warn "0 more day(s)"
    assert s2 == "warn" and "the client must renew it at start" in d2  # was: fail
