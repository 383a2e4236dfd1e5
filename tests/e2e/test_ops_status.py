"""`drkit status`: freshness against the RPO (exit 1 on a breach) and the last drill, from the
repository's drill reports and the catalog; the Prometheus textfile's drill series."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from drkit.catalog.db import Catalog
from drkit.paths import default_catalog_url
from tests.conftest import Keys
from tests.helpers import drkit, signed_drill_report, write_policy


def test_status_shows_the_last_drill(tmp_path: Path, keys: Keys) -> None:
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "db", "command": ["echo", "x"]}],
        extra='rpo = "26h"',
    )
    res = drkit("backup", "--policy", str(policy), "--json")
    assert res.returncode == 0, res.output
    snapshot = json.loads(res.stdout)["results"][0]["snapshot"]

    before = json.loads(drkit("status", "--policy", str(policy), "--json").stdout)["hosts"][0]
    assert "last_drill" not in before
    started = dt.datetime.now(dt.UTC)
    catalog = Catalog(default_catalog_url())
    try:
        url = (tmp_path / "repo").as_uri()
        catalog.record_drill(url, "vultr", "d-1", snapshot, started, started, "pass", 42.0, 60.0)
    finally:
        catalog.close()

    after = drkit("status", "--policy", str(policy), "--json")
    assert after.returncode == 0, after.output
    row = json.loads(after.stdout)["hosts"][0]
    assert row["last_drill"].pop("age").endswith("s")  # seconds since the drill started
    assert row["last_drill"] == {
        "drill": "d-1",
        "snapshot": snapshot,
        "verdict": "pass",
        "started": started.isoformat(timespec="seconds"),
        "rto_seconds": 42.0,
    }


def test_a_snapshot_of_one_weekly_source_does_not_hide_a_stale_daily_one(
    tmp_path: Path, keys: Keys
) -> None:
    repo = {"url": (tmp_path / "repo").as_uri()}
    db = {"kind": "command", "name": "db", "command": ["echo", "db"]}
    venv = {"kind": "command", "name": "venv", "command": ["echo", "v"], "schedule": "0 4 * * 0"}
    full = write_policy(
        tmp_path / "full.toml", "e2i", repo, [keys.recipient], [db, venv], extra='rpo = "26h"'
    )
    only_venv = write_policy(tmp_path / "venv.toml", "e2i", repo, [keys.recipient], [venv])
    now = dt.datetime.now(dt.UTC)

    def ago(hours: int) -> dict[str, str]:
        return {"DRKIT_NOW": (now - dt.timedelta(hours=hours)).isoformat(timespec="seconds")}

    first = drkit("backup", "--policy", str(full), "--json", env=ago(33))
    second = drkit("backup", "--policy", str(only_venv), "--json", env=ago(8))
    assert first.returncode == 0 and second.returncode == 0, first.output + second.output
    ids = [json.loads(r.stdout)["results"][0]["snapshot"] for r in (first, second)]

    res = drkit("status", "--policy", str(full), "--json")
    assert res.returncode == 1, res.output  # db is 33h old: a breach, though a snapshot is 8h old
    row = json.loads(res.stdout)["hosts"][0]
    assert row["last_snapshot"] == ids[1]
    assert row["sources"] == {"db": ids[0], "venv": ids[1]}
    assert row["age"] == "1d9h" and row["breach"] is True


def drill_report(
    repo: Path, host: str, drill: str, snapshot: str, started: str, verdict: str
) -> None:
    """A drill report where `drkit drill` stores it (drkit.drills.report.DrillReport)."""
    folder = repo / host / "drills"
    folder.mkdir(parents=True, exist_ok=True)
    report = {
        "format": "drkit-drill",
        "version": 1,
        "host": host,
        "drill_id": drill,
        "snapshot": snapshot,
        "started": started,
        "finished": started,
        "verdict": verdict,
        "rto_seconds": 12.5,
        "rpo_seconds": 60.0,
        "checks": [],
    }
    (folder / f"{drill}.json").write_text(signed_drill_report(report))


def test_status_shows_drill_and_breach_from_the_repository_alone(
    tmp_path: Path, keys: Keys
) -> None:
    """A fresh laptop (empty catalog) sees the last drill next to freshness, text and JSON."""
    repo = tmp_path / "repo"
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": repo.as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "db", "command": ["echo", "x"]}],
        extra='rpo = "26h"',
    )
    day0 = {"DRKIT_NOW": "2030-03-01T03:00:00Z"}
    res = drkit("backup", "--policy", str(policy), "--json", env=day0)
    assert res.returncode == 0, res.output
    snapshot = json.loads(res.stdout)["results"][0]["snapshot"]
    drill_report(repo, "vultr", "d-old", snapshot, "2030-03-01T05:00:00+00:00", "fail")
    drill_report(repo, "vultr", "d-new", snapshot, "2030-03-01T09:30:00Z", "pass")
    (repo / "vultr" / "drills" / "junk.json").write_text("{not json")  # skipped

    fresh = {"DRKIT_NOW": "2030-03-01T12:00:00Z"}
    ok = drkit("status", "--policy", str(policy), "--json", env=fresh)
    assert ok.returncode == 0, ok.output
    row = json.loads(ok.stdout)["hosts"][0]
    assert row["breach"] is False and row["age"] == "9h"
    assert row["last_drill"] == {
        "drill": "d-new",
        "snapshot": snapshot,
        "verdict": "pass",
        "started": "2030-03-01T09:30:00+00:00",
        "rto_seconds": 12.5,
        "age": "2h30m",
    }
    text = drkit("status", "--policy", str(policy), env=fresh)
    assert text.returncode == 0, text.output
    assert "age 9h" in text.stdout and "rpo 26h" in text.stdout
    assert "ok     drill PASS 2030-03-01 09:30 (2h30m ago)" in text.stdout

    # Two days later without a backup: a breach (exit 1), the drill still shown.
    late = {"DRKIT_NOW": "2030-03-03T03:00:01Z"}
    breach = drkit("status", "--policy", str(policy), env=late)
    assert breach.returncode == 1, breach.output
    assert "BREACH drill PASS 2030-03-01 09:30 (1d17h ago)" in breach.stdout
    as_json = drkit("status", "--policy", str(policy), "--json", env=late)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["hosts"][0]["breach"] is True

    # A newer drill recorded only in the catalog (its report could not be stored) wins.
    catalog = Catalog(default_catalog_url())
    try:
        started = dt.datetime(2030, 3, 2, 8, 0, tzinfo=dt.UTC)
        catalog.record_drill(
            repo.as_uri(), "vultr", "d-cat", snapshot, started, started, "fail", 30.0, 60.0
        )
    finally:
        catalog.close()
    text = drkit("status", "--policy", str(policy), env=late)
    assert "BREACH drill FAIL 2030-03-02 08:00 (19h1s ago)" in text.stdout


def test_status_without_a_drill_or_a_backup(tmp_path: Path, keys: Keys) -> None:
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "db", "command": ["echo", "x"]}],
        extra='rpo = "26h"',
    )
    res = drkit("status", "--policy", str(policy))
    assert res.returncode == 1, res.output  # never backed up: a breach
    assert "age never" in res.stdout and "BREACH drill never" in res.stdout


def test_prometheus_textfile_follows_the_newest_drill(tmp_path: Path, keys: Keys) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    repo = tmp_path / "repo"
    prom = tmp_path / "metrics" / "drkit.prom"
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": repo.as_uri()},
        [keys.recipient],
        [
            {"kind": "command", "name": "db", "command": ["echo", "x"]},
            {"kind": "command", "name": "env", "command": ["echo", "y"]},
        ],
        extra=f'rpo = "26h"\nnotify = {{ prometheus_textfile = "{prom}" }}',
    )

    def drill_samples() -> dict[str, float]:
        families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
        family = families.get("drkit_last_drill_success")
        samples = family.samples if family else []
        return {s.labels["source"]: s.value for s in samples if s.labels["host"] == "vultr"}

    first = drkit("backup", "--policy", str(policy), "--json")
    assert first.returncode == 0, first.output
    snapshot = json.loads(first.stdout)["results"][0]["snapshot"]
    assert drill_samples() == {}  # no drill yet: no sample (not a false 0)

    drill_report(repo, "vultr", "d1", snapshot, "2026-01-01T00:00:00Z", "pass")
    assert drkit("backup", "--policy", str(policy)).returncode == 0
    assert drill_samples() == {"db": 1.0, "env": 1.0}

    drill_report(repo, "vultr", "d2", snapshot, "2026-01-02T00:00:00Z", "fail")
    assert drkit("backup", "--policy", str(policy)).returncode == 0
    assert drill_samples() == {"db": 0.0, "env": 0.0}


def test_the_drill_command_rewrites_the_textfile_after_a_drill(tmp_path: Path, keys: Keys) -> None:
    """What `drkit drill` calls once its reports are stored: the textfile follows the drill
    at once (a real drill needs Docker images: tests/drills covers the drill itself)."""
    from prometheus_client.parser import text_string_to_metric_families

    from drkit.cli.commands_drill import rewrite_metrics
    from drkit.policy.loader import load_policy

    repo = tmp_path / "repo"
    prom = tmp_path / "metrics" / "drkit.prom"
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": repo.as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "db", "command": ["echo", "x"]}],
        extra=f'notify = {{ prometheus_textfile = "{prom}" }}',
    )
    plain = write_policy(
        tmp_path / "e2i.toml",
        "e2i",
        {"url": repo.as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "db", "command": ["echo", "x"]}],
    )
    res = drkit("backup", "--policy", str(policy), "--json")
    assert res.returncode == 0, res.output
    snapshot = json.loads(res.stdout)["results"][0]["snapshot"]

    def drill_success() -> list[float]:
        families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
        family = families.get("drkit_last_drill_success")
        return [s.value for s in family.samples] if family else []

    assert drill_success() == []
    logged: list[str] = []
    for verdict, want in (("fail", 0.0), ("pass", 1.0)):
        drill_report(
            repo, "vultr", f"d-{verdict}", snapshot, dt.datetime.now(dt.UTC).isoformat(), verdict
        )
        rewrite_metrics([load_policy(policy), load_policy(plain)], logged.append)
        assert drill_success() == [want], verdict
    assert logged == []
    assert 'host="e2i"' not in prom.read_text()  # its policy names no textfile


def test_status_exits_1_when_the_last_drill_failed(tmp_path: Path, keys: Keys) -> None:
    """A monitor hears of a failed drill; never drilled (no rpo, no breach) stays exit 0."""
    repo = tmp_path / "repo"
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": repo.as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "db", "command": ["echo", "x"]}],
    )
    res = drkit("backup", "--policy", str(policy), "--json")
    assert res.returncode == 0, res.output
    snapshot = json.loads(res.stdout)["results"][0]["snapshot"]

    never = drkit("status", "--policy", str(policy), "--json")
    assert never.returncode == 0, never.output
    assert json.loads(never.stdout)["hosts"][0]["drill_failed"] is False

    drill_report(repo, "vultr", "d1", snapshot, "2026-01-01T00:00:00Z", "fail")
    failed = drkit("status", "--policy", str(policy))
    assert failed.returncode == 1, failed.output
    assert "ok     drill FAIL 2026-01-01 00:00" in failed.stdout  # fresh, yet exit 1
    as_json = drkit("status", "--policy", str(policy), "--json")
    assert as_json.returncode == 1
    row = json.loads(as_json.stdout)["hosts"][0]
    assert row["breach"] is False and row["drill_failed"] is True

    # A later drill that passes with warnings clears it.
    drill_report(repo, "vultr", "d2", snapshot, "2026-01-02T00:00:00Z", "warn")
    assert drkit("status", "--policy", str(policy)).returncode == 0
