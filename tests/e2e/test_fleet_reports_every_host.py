"""Fleet-wide commands report every host (issue 23, items 4 and 7): a host that cannot
be read (an unset secret, a missing signers file) gets its problem in its own row, the
others are reported, and the exit code is 3 (partial), not 1 (an RPO breach). An
interrupted backup's snapshot directory is listed with its age and when prune takes it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Keys
from tests.helpers import drkit, write_policy

# Snapshots are taken "in 2030" and read back a little later ($DRKIT_NOW).
TAKEN = {"DRKIT_NOW": "2030-01-05T03:00:00Z"}
LATER = {"DRKIT_NOW": "2030-01-05T14:00:00Z"}
INCOMPLETE = "20300105T120000Z-young1"


def fleet(tmp_path: Path, keys: Keys) -> tuple[Path, str]:
    """A policy directory: ``good`` backed up once (plus an interrupted backup's
    leftovers), ``nosecret`` (S3 keys from an unset variable), ``nosigners`` (a
    signers file that is not there). Returns (directory, good's snapshot id)."""
    pol = tmp_path / "policies"
    pol.mkdir()
    (tmp_path / "app.env").write_text("A=1\n")
    env = [{"kind": "env", "paths": [f"{tmp_path}/*.env"]}]
    repo = {"url": (tmp_path / "repo").as_uri()}
    good = write_policy(pol / "good.toml", "good", repo, [keys.recipient], env, 'rpo = "1d"')
    s3 = {
        "url": "s3://bucket/x",
        "endpoint": "http://127.0.0.1:9",
        "access_key_id": "env:DRKIT_TEST_UNSET_A",
        "secret_access_key": "env:DRKIT_TEST_UNSET_B",
    }
    write_policy(pol / "nosecret.toml", "nosecret", s3, [keys.recipient], env, 'rpo = "1d"')
    nosigners = write_policy(pol / "nosigners.toml", "nosigners", repo, [keys.recipient], env)
    gone = f'[encryption]\nsigners_file = "{tmp_path}/gone.txt"\n'
    nosigners.write_text(nosigners.read_text().replace("[encryption]\n", gone))
    res = drkit("backup", "--policy", str(good), "--json", env=TAKEN)
    assert res.returncode == 0, res.output
    sid = json.loads(res.stdout)["results"][0]["snapshot"]
    left = tmp_path / "repo" / "good" / "snapshots" / INCOMPLETE / "env"
    left.mkdir(parents=True)
    (left / "env.tar.zst.age").write_bytes(b"x")
    return pol, sid


def test_status_snapshots_and_catalog_sync_report_every_host(tmp_path: Path, keys: Keys) -> None:
    pol, sid = fleet(tmp_path, keys)
    base = ("--policy-dir", str(pol))

    status = drkit(*base, "status", "--json", env=LATER)
    assert status.returncode == 3, status.output
    rows = {r["host"]: r for r in json.loads(status.stdout)["hosts"]}
    assert rows["good"]["last_snapshot"] == sid and rows["good"]["breach"] is False
    assert "DRKIT_TEST_UNSET_A" in rows["nosecret"]["error"]
    assert rows["nosecret"]["breach"] is False
    assert f"{tmp_path}/gone.txt" in rows["nosigners"]["error"]
    text = drkit(*base, "status", env=LATER)
    assert text.returncode == 3 and "Traceback" not in text.output
    lines = text.stdout.splitlines()
    assert any(ln.startswith("good ") and " ok " in ln for ln in lines), lines
    assert any(ln.startswith("nosecret") and "ERROR: " in ln for ln in lines), lines
    assert any(ln.startswith("nosigners") and "ERROR: " in ln for ln in lines), lines

    snaps = drkit(*base, "snapshots", env=LATER)
    assert snaps.returncode == 3, snaps.output
    lines = snaps.stdout.splitlines()
    assert lines[0].split() == ["HOST", "SNAPSHOT", "STORED", "BYTES", "SOURCES"]
    assert any(ln.startswith("good ") and sid in ln for ln in lines)
    assert any(
        INCOMPLETE in ln
        and "INCOMPLETE" in ln
        and "2h old" in ln
        and "prune removes it after 2030-01-06T12:00:00Z" in ln
        for ln in lines
    ), lines
    assert any(ln.startswith("nosecret") and "ERROR: " in ln for ln in lines), lines
    as_json = json.loads(drkit(*base, "snapshots", "--json", env=LATER).stdout)
    assert as_json["incomplete"] == [
        {
            "host": "good",
            "snapshot": INCOMPLETE,
            "age": "2h",
            "age_seconds": 7200,
            "prunable_after": "2030-01-06T12:00:00Z",
        }
    ]
    assert sorted(e["host"] for e in as_json["errors"]) == ["nosecret", "nosigners"]

    sync = drkit(*base, "catalog", "sync", "--json", env=LATER)
    assert sync.returncode == 3, sync.output
    synced = {r["host"]: r for r in json.loads(sync.stdout)["synced"]}
    assert "error" not in synced["good"] and "DRKIT_TEST_UNSET_A" in synced["nosecret"]["error"]

    prune = drkit(*base, "prune", "--host", "good", "--dry-run", env=LATER)
    assert prune.returncode == 0, prune.output
    assert f"keep   {INCOMPLETE}  no manifest" in prune.stdout
    assert "0 incomplete (kept 1)" in prune.stdout
