"""A small fleet in a local repository for the report page's tests: real backups
(drkit's backup path, in this process: ``backup_one`` with a fixed clock) and drill
reports signed and stored the way ``drkit drill`` stores them (``DrillReport`` ->
``Repository.write_drill_report``), without running Docker.

Four hosts: ``web`` healthy (drills pass), ``db`` whose newest drill failed,
``cache`` late (its daily backup stopped two days ago, within its 3-day RPO) and
``files`` in breach (five days ago: past its RPO).
A hostile bucket writer also planted markup where the page shows repository text.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from drkit.actions.fleet import backup_one
from drkit.actions.repository_access import open_repository
from drkit.drills.report import DrillReport
from drkit.policy.loader import load_policy
from drkit.policy.models import Policy
from drkit.sources.base import Check
from tests.helpers import write_policy

# Markup a hostile writer plants: if it ran, the page's title would change.
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"
HOSTILE_DETAIL = "<script>document.title='pwned'</script> row count 0, expected 1200"
FAILED_CHECK = "orders table row count"


@dataclass
class Fleet:
    policy_dir: Path
    repo: Path
    policies: list[Policy]
    drills: dict[str, int]  # host -> drill reports stored


def _policy(directory: Path, repo: Path, recipient: str, host: str, extra: str) -> Policy:
    sources = [
        {"kind": "command", "name": "db", "command": ["echo", f"{host} rows"]},
        {"kind": "command", "name": "env", "command": ["echo", f"{host} env"]},
    ]
    path = write_policy(
        directory / f"{host}.toml", host, {"url": repo.as_uri()}, [recipient], sources, extra
    )
    return load_policy(path)


def _backup(policy: Policy, at: dt.datetime) -> str:
    result = backup_one(policy, None, lambda _m: None, clock=lambda: at)
    assert result.status == "success", (policy.host, result)
    assert result.snapshot is not None
    return result.snapshot


def _drill(policy: Policy, snapshot: str, n: int, at: dt.datetime, rto: float, ok: bool) -> None:
    checks = [
        Check("db", "pg_restore finished", "pass", "exit 0"),
        Check("env", "file present", "pass", "/srv/app/.env 120 bytes"),
    ]
    if not ok:
        checks.append(Check("db", FAILED_CHECK, "fail", HOSTILE_DETAIL))
    report = DrillReport(
        host=policy.host,
        drill_id=f"d{n:02d}",
        snapshot=snapshot,
        started=at.isoformat(),
        finished=(at + dt.timedelta(seconds=rto)).isoformat(),
        verdict="pass" if ok else "fail",
        rto_seconds=rto,
        rpo_seconds=3600.0 * (n + 1),
        image_build_seconds=0.0,
        image=f"drkit-host-{policy.host}:test",
        checks=checks,
        snapshots=[snapshot],
    )
    repo = open_repository(policy, signing=True)
    repo.write_drill_report(policy.host, report.drill_id, json.loads(report.to_json()))


def build_fleet(root: Path, recipient: str, now: dt.datetime) -> Fleet:
    """The four hosts' policies, backups and drills (about a second of work)."""
    policy_dir, repo = root / "policies", root / "repo"
    policy_dir.mkdir(parents=True)
    daily = 'rpo = "3d"\nschedule = "0 3 * * *"\n[retention]\nkeep_daily = 3\n'
    hosts = ("web", "db", "cache", "files")
    policies = [_policy(policy_dir, repo, recipient, h, daily) for h in hosts]
    web, db, cache, files = policies
    day = dt.timedelta(days=1)
    today = now.replace(hour=3, minute=5, second=0, microsecond=0)
    if today > now:
        today -= day
    drills: dict[str, int] = {}
    for policy, last in (
        (web, today),
        (db, today),
        (cache, today - 2 * day),
        (files, today - 5 * day),
    ):
        snaps = [_backup(policy, last - i * day) for i in range(3, -1, -1)]
        if policy in (cache, files):
            continue
        count = 4 if policy is web else 3
        # An hour after each backup, but never after ``now``: between 03:05 and 04:05
        # the newest drill would be dated in the future, and a drill report from the
        # future is refused (the page would lose it: a test that failed by the clock).
        after = min(dt.timedelta(hours=1), (now - last) / 2)
        for n in range(count):
            fails = policy is db and n == count - 1
            when = last - (count - 1 - n) * day + after
            _drill(policy, snaps[-1], n, when, 40.0 + 7 * n, not fails)
        drills[policy.host] = count
    # What only the bucket's credentials can do: a directory named like markup with an
    # unsigned "manifest" (untrusted, listed with its name), and an unsigned drill report.
    planted = repo / "web" / "snapshots" / HOSTILE
    planted.mkdir(parents=True)
    (planted / "manifest.json").write_text('{"host": "web"}')
    (repo / "db" / "drills" / "forged.json").write_text(
        json.dumps({"host": "db", "drill_id": HOSTILE, "verdict": "pass"})
    )
    return Fleet(policy_dir, repo, policies, drills)
