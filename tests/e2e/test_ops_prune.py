"""`drkit prune` through the real CLI on a local repository: what retention keeps, with
reasons; the newest and the last drilled snapshot survive; leftovers of failed runs go
after the grace period; the catalog follows."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from drkit.catalog.db import Catalog
from drkit.paths import default_catalog_url
from tests.conftest import Keys
from tests.helpers import drkit, signed_drill_report, write_policy
from tests.servers.seaweed import SeaweedServer

HOST = "vultr"
DAYS = ["2030-01-01", "2030-01-02", "2030-01-03", "2030-01-04", "2030-01-05"]


def backed_up_daily(tmp_path: Path, keys: Keys) -> tuple[Path, list[str]]:
    """A host backed up once a day for five days (clock set by $DRKIT_NOW)."""
    repo = tmp_path / "repo"
    policy = write_policy(
        tmp_path / f"{HOST}.toml",
        HOST,
        {"url": repo.as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "db", "command": ["echo", "rows"]}],
    )
    policy.write_text(policy.read_text() + "[retention]\nkeep_last = 2\n")
    ids = []
    for day in DAYS:
        res = drkit("backup", "--policy", str(policy), "--json", env={"DRKIT_NOW": f"{day}T03:00Z"})
        assert res.returncode == 0, res.output
        ids.append(json.loads(res.stdout)["results"][0]["snapshot"])
    return policy, ids


def committed(tmp_path: Path) -> list[str]:
    base = tmp_path / "repo" / HOST / "snapshots"
    return sorted(p.name for p in base.iterdir() if (p / "manifest.json").exists())


# The snapshots here are taken "in 2030" ($DRKIT_NOW): read back from then, or they
# are refused as dated in the future.
LATER = "2031-01-01T00:00:00Z"


def test_prune_keeps_the_newest_and_the_drilled_and_reports_why(tmp_path: Path, keys: Keys) -> None:
    policy, ids = backed_up_daily(tmp_path, keys)
    # A drill passed on the second snapshot (a report as the drill feature stores it).
    drills = tmp_path / "repo" / HOST / "drills"
    drills.mkdir()
    report = {
        "format": "drkit-drill",
        "version": 1,
        "host": HOST,
        "drill_id": "d1",
        "snapshot": ids[1],
        "started": "2030-01-02T05:00Z",
        "verdict": "pass",
    }
    (drills / "d1.json").write_text(signed_drill_report(report))
    # A killed run's leftovers: an old one and one from a run that may still be going.
    for sid in ("20291231T030000Z-dead01", "20300105T235900Z-young1"):
        (tmp_path / "repo" / HOST / "snapshots" / sid / "db").mkdir(parents=True)
        (tmp_path / "repo" / HOST / "snapshots" / sid / "db" / "output").write_bytes(b"x")
    now = {"DRKIT_NOW": "2030-01-06T00:00:00Z"}

    dry = drkit("prune", "--policy", str(policy), "--dry-run", "--json", env=now)
    assert dry.returncode == 0, dry.output
    (result,) = json.loads(dry.stdout)["results"]
    reasons = {s["snapshot"]: (s["keep"], s["reasons"]) for s in result["snapshots"]}
    assert reasons[ids[4]] == (
        True,
        ["last 1 of 2", "newest complete snapshot", "newest complete snapshot of source db"],
    )
    assert reasons[ids[3]] == (True, ["last 2 of 2"])
    assert reasons[ids[1]] == (True, ["newest snapshot that passed a drill"])
    for sid in (ids[0], ids[2]):
        assert reasons[sid] == (False, ["matched no rule (keep_last=2)"])
    assert result["removed"] == [ids[0], ids[2]] and result["dry_run"] is True
    assert result["incomplete_removed"] == ["20291231T030000Z-dead01"]
    assert [k["snapshot"] for k in result["incomplete_kept"]] == ["20300105T235900Z-young1"]
    assert committed(tmp_path) == ids  # a dry run removes nothing

    text = drkit("prune", "--policy", str(policy), env=now)
    assert text.returncode == 0, text.output
    assert f"  remove {ids[0]}  matched no rule (keep_last=2)" in text.stdout
    assert f"  keep   {ids[1]}  newest snapshot that passed a drill" in text.stdout
    assert f"{HOST}: removed 2 snapshot(s)" in text.stdout
    assert committed(tmp_path) == [ids[1], ids[3], ids[4]]
    left = sorted(p.name for p in (tmp_path / "repo" / HOST / "snapshots").iterdir())
    assert "20291231T030000Z-dead01" not in left and "20300105T235900Z-young1" in left
    # What is left still verifies and restores: prune removed whole snapshots only.
    ok = drkit(
        "verify",
        "--policy",
        str(policy),
        "--all-snapshots",
        "--identity",
        str(keys.identity_file),
        env={"DRKIT_NOW": LATER},
    )
    assert ok.returncode == 0, ok.output
    # The catalog was synced for the host: it lists exactly what the repository holds.
    catalog = Catalog(default_catalog_url())
    try:
        assert sorted(s.snapshot_id for s in catalog.snapshots(HOST)) == committed(tmp_path)
    finally:
        catalog.close()


def test_prune_keeps_every_snapshot_the_newest_passing_drill_restored_from(
    tmp_path: Path, keys: Keys
) -> None:
    """A drill assembles sources from several snapshots: it proved them all."""
    policy, ids = backed_up_daily(tmp_path, keys)
    drills = tmp_path / "repo" / HOST / "drills"
    drills.mkdir()
    older = {
        "format": "drkit-drill",
        "version": 1,
        "host": HOST,
        "drill_id": "d0",
        "snapshot": ids[0],
        "snapshots": [ids[0]],
        "started": "2030-01-01T05:00Z",
        "verdict": "pass",
    }
    # The newest drill took the database from ids[2] and the env files from ids[1].
    newest = {
        **older,
        "drill_id": "d1",
        "snapshot": ids[2],
        "snapshots": [ids[1], ids[2]],
        "started": "2030-01-03T05:00Z",
    }
    (drills / "d0.json").write_text(signed_drill_report(older))
    (drills / "d1.json").write_text(signed_drill_report(newest))
    res = drkit(
        "prune",
        "--policy",
        str(policy),
        "--dry-run",
        "--json",
        env={"DRKIT_NOW": "2030-01-06T00:00:00Z"},
    )
    assert res.returncode == 0, res.output
    (result,) = json.loads(res.stdout)["results"]
    reasons = {s["snapshot"]: (s["keep"], s["reasons"]) for s in result["snapshots"]}
    assert reasons[ids[2]] == (True, ["newest snapshot that passed a drill"])
    assert reasons[ids[1]] == (True, ["also restored by the newest passing drill"])
    # An older drill's snapshot is not protected once a newer drill passed.
    assert reasons[ids[0]] == (False, ["matched no rule (keep_last=2)"])


def test_prune_needs_a_host_and_checks_its_flags(tmp_path: Path, keys: Keys) -> None:
    policy = write_policy(
        tmp_path / "p.toml",
        HOST,
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "db", "command": ["echo", "rows"]}],
    )
    assert drkit("prune").returncode == 2
    bad = drkit("prune", "--policy", str(policy), "--grace", "soon")
    assert bad.returncode == 2 and "--grace: not a duration" in bad.stderr
    # No retention rule: prune keeps everything, and says so.
    drkit("backup", "--policy", str(policy), check=True)
    res = drkit("prune", "--policy", str(policy))
    assert res.returncode == 0, res.output
    assert "no retention rule set: keep everything" in res.stdout


def test_prune_keeps_what_object_lock_protects_on_seaweedfs(
    tmp_path: Path, keys: Keys, seaweed: SeaweedServer
) -> None:
    """Two policies share a bucket made by `drkit init` with Object Lock: one writes with
    retention, one without. Prune removes the unretained old snapshot, keeps the retained
    ones with the reason, and every object of a kept snapshot is still there and verifies."""
    client = seaweed.client()
    bucket = seaweed.new_bucket_name("prunelock")
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}

    def policy(name: str, days: int) -> Path:
        repo = {
            "url": f"s3://{bucket}/fleet",
            "endpoint": seaweed.endpoint,
            "region": seaweed.region,
            "immutable_days": days,
        }
        path = write_policy(
            tmp_path / f"{name}.toml",
            HOST,
            repo,
            [keys.recipient],
            [{"kind": "command", "name": "db", "command": ["echo", "rows"]}],
        )
        path.write_text(path.read_text() + "[retention]\nkeep_last = 1\n")
        return path

    locked, plain = policy("locked", 1), policy("plain", 0)
    assert drkit("init", "--policy", str(locked), env=env).returncode == 0
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ids = []
    for hours, pol in ((4, plain), (3, locked), (2, locked), (1, plain)):
        at = {**env, "DRKIT_NOW": (now - dt.timedelta(hours=hours)).isoformat()}
        res = drkit("backup", "--policy", str(pol), "--json", env=at)
        assert res.returncode == 0, res.output
        ids.append(json.loads(res.stdout)["results"][0]["snapshot"])

    res = drkit("prune", "--policy", str(locked), "--json", env=env)
    assert res.returncode == 0, res.output
    (result,) = json.loads(res.stdout)["results"]
    assert result["removed"] == [ids[0]] and result["errors"] == []
    reasons = {s["snapshot"]: (s["keep"], s["reasons"]) for s in result["snapshots"]}
    for sid in ids[1:3]:
        keep, (why,) = reasons[sid]
        assert keep and why.startswith("object lock retention until "), why
        until = dt.datetime.fromisoformat(why.rsplit(" ", 1)[1].replace("Z", "+00:00"))
        assert now + dt.timedelta(hours=23) < until <= now + dt.timedelta(days=1, minutes=5)
    assert reasons[ids[3]][0] is True

    text = drkit("prune", "--policy", str(plain), env=env)  # again, as text: nothing left to do
    assert text.returncode == 0, text.output
    for sid in ids[1:3]:
        assert f"  keep   {sid}  object lock retention until " in text.stdout
    assert f"{ids[0]}" not in text.stdout
    left = client.list_objects_v2(Bucket=bucket, Prefix=f"fleet/{HOST}/snapshots/")
    snapshots = sorted({o["Key"].split("/")[3] for o in left.get("Contents", [])})
    assert snapshots == ids[1:]  # the locked ones are whole, the removed one is gone
    ok = drkit(
        "verify",
        "--policy",
        str(plain),
        "--all-snapshots",
        "--identity",
        str(keys.identity_file),
        env={**env, "DRKIT_NOW": LATER},
    )
    assert ok.returncode == 0, ok.output
