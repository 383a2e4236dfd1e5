"""`drkit status` reports the last drill once the catalog has one."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from drkit.catalog.db import Catalog
from drkit.paths import default_catalog_url
from tests.conftest import Keys
from tests.helpers import drkit, write_policy


def test_status_shows_the_last_drill(tmp_path: Path, keys: Keys) -> None:
    policy = write_policy(
        tmp_path / "vultr.toml", "vultr", {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient], [{"kind": "command", "name": "db", "command": ["echo", "x"]}],
        extra='rpo = "26h"',
    )  # fmt: skip
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
    full = write_policy(tmp_path / "full.toml", "e2i", repo, [keys.recipient], [db, venv],
                        extra='rpo = "26h"')  # fmt: skip
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
