"""`drkit backup --due` with a controlled clock ($DRKIT_NOW): once per slot, missed slots
once, per-source schedules, jitter, and hosts without a schedule never."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from drkit.schedule import jitter_offset
from tests.conftest import Keys
from tests.helpers import drkit, write_policy


def tick(pdir: Path, when: str, *args: str) -> dict[str, dict[str, Any]]:
    """One cron tick at ``when``: host -> result."""
    res = drkit(
        "--policy-dir", str(pdir), "backup", "--due", "--json", *args, env={"DRKIT_NOW": when}
    )
    assert res.returncode == 0, res.output
    return {r["host"]: r for r in json.loads(res.stdout)["results"]}


def ran(results: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    return {h: r["sources"] for h, r in results.items() if r["status"] == "success"}


def snapshot_ids(repo: Path, host: str) -> list[str]:
    base = repo / host / "snapshots"
    return sorted(p.name for p in base.iterdir() if (p / "manifest.json").exists())


def test_each_slot_runs_once_and_missed_slots_run_once(tmp_path: Path, keys: Keys) -> None:
    pdir = tmp_path / "policies"
    pdir.mkdir()
    repo = tmp_path / "repo"
    sources = [
        {"kind": "command", "name": "db", "command": ["echo", "db"]},
        # Weekly, on Sundays at 04:00 (2030-01-06 is a Sunday).
        {"kind": "command", "name": "venv", "command": ["echo", "venv"], "schedule": "0 4 * * 0"},
    ]
    write_policy(
        pdir / "daily.toml",
        "daily",
        {"url": repo.as_uri()},
        [keys.recipient],
        sources,
        extra='schedule = "0 3 * * *"',
    )
    write_policy(
        pdir / "manual.toml",
        "manual",
        {"url": repo.as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "x", "command": ["echo", "x"]}],
    )

    # Never backed up: due at once, every source; the host without a schedule never.
    first = tick(pdir, "2030-01-01T02:00:00Z")
    assert ran(first) == {"daily": ["db", "venv"]}
    assert first["manual"]["status"] == "not-due"
    # Before the next slot (03:00): nothing.
    assert ran(tick(pdir, "2030-01-01T02:50:00Z")) == {}
    # The slot came: the daily sources only (the weekly one ran after its last slot).
    assert ran(tick(pdir, "2030-01-01T03:00:00Z")) == {"daily": ["db"]}
    # Later ticks of the same day: nothing, however many.
    assert ran(tick(pdir, "2030-01-01T03:10:00Z")) == {}
    assert ran(tick(pdir, "2030-01-01T23:50:00Z")) == {}
    # The machine was off for four days (slots Jan 2..5 missed): one run, not four.
    assert ran(tick(pdir, "2030-01-05T12:00:00Z")) == {"daily": ["db"]}
    assert ran(tick(pdir, "2030-01-05T12:10:00Z")) == {}
    # Sunday: 03:00 is the daily slot, 04:00 the weekly one.
    assert ran(tick(pdir, "2030-01-06T03:00:00Z")) == {"daily": ["db"]}
    assert ran(tick(pdir, "2030-01-06T04:00:00Z")) == {"daily": ["venv"]}
    assert ran(tick(pdir, "2030-01-06T04:10:00Z")) == {}

    # Snapshot ids name each run's start: exactly one per slot.
    assert [s[:20] for s in snapshot_ids(repo, "daily")] == [
        "20300101T020000.000Z",
        "20300101T030000.000Z",
        "20300105T120000.000Z",
        "20300106T030000.000Z",
        "20300106T040000.000Z",
    ]
    assert not (repo / "manual").exists()
    # An explicit backup still backs up a host without a schedule, every source.
    res = drkit("--policy-dir", str(pdir), "backup", "--host", "manual", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["results"][0]["sources"] == ["x"]


def test_a_failed_run_is_retried_at_the_next_tick(tmp_path: Path, keys: Keys) -> None:
    pdir = tmp_path / "policies"
    pdir.mkdir()
    flag = tmp_path / "broken"
    flag.touch()
    source = {
        "kind": "command",
        "name": "db",
        "command": ["sh", "-c", f"test ! -e {flag} && echo db"],
    }
    write_policy(
        pdir / "h.toml",
        "h",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [source],
        extra='schedule = "0 3 * * *"',
    )
    failed = drkit(
        "--policy-dir", str(pdir), "backup", "--due", env={"DRKIT_NOW": "2030-01-01T01:00:00Z"}
    )
    assert failed.returncode == 1 and "error: host h: source db" in failed.stderr
    flag.unlink()
    # ...and the next tick tries again (a failure does not count as the slot's run).
    assert ran(tick(pdir, "2030-01-01T01:10:00Z")) == {"h": ["db"]}
    assert ran(tick(pdir, "2030-01-01T01:20:00Z")) == {}


def test_jitter_delays_each_slot_by_a_stable_per_host_offset(tmp_path: Path, keys: Keys) -> None:
    pdir = tmp_path / "policies"
    pdir.mkdir()
    write_policy(
        pdir / "j.toml",
        "jittery",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "a", "command": ["echo", "a"]}],
        extra='schedule = "0 3 * * *"\njitter = "30m"',
    )
    offset = jitter_offset("jittery", 30 * 60)
    assert offset > dt.timedelta(minutes=1)  # this host's offset is not ~0 (else no test)
    slot = dt.datetime(2030, 1, 2, 3, 0, tzinfo=dt.UTC) + offset

    def at(t: dt.datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    assert ran(tick(pdir, "2030-01-01T12:00:00Z")) == {"jittery": ["a"]}  # never backed up
    assert ran(tick(pdir, at(slot - dt.timedelta(seconds=30)))) == {}  # 03:00 is not its time
    assert ran(tick(pdir, at(slot))) == {"jittery": ["a"]}
    assert ran(tick(pdir, at(slot + dt.timedelta(minutes=10)))) == {}

    listing = drkit(
        "--policy-dir",
        str(pdir),
        "schedule",
        "--json",
        "-n",
        "2",
        env={"DRKIT_NOW": "2030-01-01T12:00:00Z"},
    )
    assert listing.returncode == 0, listing.output
    (row,) = json.loads(listing.stdout)["hosts"]
    assert row["next"][0] == at(slot)
    assert row["next"][1] == at(slot + dt.timedelta(days=1))


def test_schedule_emits_cron_and_systemd_entries(tmp_path: Path, keys: Keys) -> None:
    pdir = tmp_path / "policies"
    pdir.mkdir()
    cron = drkit("--policy-dir", str(pdir), "schedule", "--emit", "cron", "--every", "5")
    assert cron.returncode == 0, cron.output
    line = cron.stdout.splitlines()[-1]
    assert line.startswith("*/5 * * * * ")
    assert f"--policy-dir {pdir.resolve()} backup --due -q" in line
    units = json.loads(
        drkit("--policy-dir", str(pdir), "schedule", "--emit", "systemd", "--json").stdout
    )["units"]
    assert set(units) == {"drkit-backup.service", "drkit-backup.timer"}
    assert "OnCalendar=*:0/10" in units["drkit-backup.timer"]
    assert "EnvironmentFile=-/etc/drkit/env" in units["drkit-backup.service"]


def test_schedules_and_durations_are_checked_at_load(tmp_path: Path, keys: Keys) -> None:
    path = write_policy(
        tmp_path / "bad.toml",
        "bad",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "a", "command": ["echo"], "schedule": "61 * * * *"}],
        extra='schedule = "*/5 * * * * *"\njitter = "soon"\nlock_ttl = "0s"\n'
        'notify = { timeout = "10 s x", prometheus_textfile = "drkit.prom" }',
    )
    res = drkit("policy", "validate", str(path))
    assert res.returncode == 2
    for problem in (
        "schedule: not a valid cron expression: '*/5 * * * * *'",
        "source[0].schedule: not a valid cron expression: '61 * * * *'",
        "jitter: not a duration",
        "lock_ttl: must be longer than 0s",
        "notify.timeout: not a duration",
        "notify.prometheus_textfile: must be an absolute path",
    ):
        assert f"{path}: {problem}" in res.stderr, problem
