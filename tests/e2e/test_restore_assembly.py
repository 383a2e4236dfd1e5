"""Restore assembled per source: with `backup --due` schedules the newest snapshot holds the
database only; a restore takes each source from its own newest snapshot (at or before --at,
or as of --snapshot), says so per step, and restores the newest data of each. Also: a
PostgreSQL dump restored into a fresh database is verified while it loads (no second read),
and a tampered one still leaves no database behind."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from drkit.actions.restore import Progress
from drkit.actions.snapshot_select import Assembly
from drkit.errors import RestoreError
from drkit.pipeline.age import parse_recipient
from drkit.pipeline.codec import encode
from drkit.repository.manifest import Manifest, SourceRecord, snapshot_time
from tests.conftest import Keys
from tests.helpers import drkit, load_callmeback, table_checksums, write_policy
from tests.servers.postgres import PG_BIN, PgServer


def ident(keys: Keys) -> list[str]:
    return ["--identity", str(keys.identity_file)]


def tick(pdir: Path, when: str) -> list[str]:
    """One cron tick at ``when``: the sources backed up (none if nothing was due)."""
    res = drkit("--policy-dir", str(pdir), "backup", "--due", "--json", env={"DRKIT_NOW": when})
    assert res.returncode == 0, res.output
    [result] = json.loads(res.stdout)["results"]
    return list(result["sources"]) if result["status"] == "success" else []


def snapshot_at(repo: Path, host: str, when: str) -> str:
    """The id of the committed snapshot started at ``when`` (an ISO time)."""
    at = dt.datetime.fromisoformat(when)
    [sid] = [p.name for p in (repo / host / "snapshots").iterdir() if snapshot_time(p.name) == at]
    return sid


def plan(policy: Path, keys: Keys, *args: str) -> dict[str, object]:
    res = drkit("restore", "--policy", str(policy), "--plan", "--json", *ident(keys), *args)
    # 6: a step is refused (the live database is there); which snapshots is what counts.
    assert res.returncode in (0, 6), res.output
    out: dict[str, object] = json.loads(res.stdout)
    return out


def sources_of(p: dict[str, object]) -> dict[str, str]:
    return {s["source"]: s["snapshot"] for s in p["steps"]}  # type: ignore[attr-defined]


def test_mixed_schedules_restore_the_newest_of_each_source(
    pg: PgServer, uniq: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Snapshots are taken "in 2030" (each tick sets $DRKIT_NOW): everything else runs
    # from a later "now", or they are refused as dated in the future.
    monkeypatch.setenv("DRKIT_NOW", "2031-01-01T00:00:00Z")
    db, role = f"mixed_{uniq}", f"mixed_user_{uniq}"
    load_callmeback(pg, db, role, "pw-" + uniq)
    pg.psql(db, "CREATE TABLE marks (stage text);")
    root = tmp_path / "root"
    env_file = root / "api" / ".env"
    env_file.parent.mkdir(parents=True)
    pdir, repo = tmp_path / "policies", tmp_path / "repo"
    pdir.mkdir()
    sources: list[dict[str, Any]] = [
        {
            "kind": "postgres",
            "name": "db",
            "database": db,
            "host": "127.0.0.1",
            "port": pg.port,
            "user": "postgres",
        },
        # Weekly, Sundays at 04:00 (2030-01-06 is a Sunday); the database every 6 h.
        {"kind": "env", "name": "env-files", "paths": [f"{root}/*/.env"], "schedule": "0 4 * * 0"},
    ]
    policy = write_policy(
        pdir / "mixed.toml",
        "mixed",
        {"url": repo.as_uri()},
        [keys.recipient],
        sources,
        extra='schedule = "0 */6 * * *"',
    )

    def stage(name: str, env: str) -> dict[str, str]:
        pg.psql(db, f"INSERT INTO marks VALUES ('{name}');")
        env_file.write_text(env)
        return table_checksums(pg, db)

    stage("s0", "PORT=1\nTOKEN=zero\n")
    assert tick(pdir, "2030-01-05T23:00:00Z") == ["db", "env-files"]  # never backed up
    db1 = stage("s1", "PORT=1\nTOKEN=one\n")
    assert tick(pdir, "2030-01-06T00:00:00Z") == ["db"]
    stage("s2", "PORT=2\nTOKEN=two\n")
    assert tick(pdir, "2030-01-06T04:00:00Z") == ["env-files"]
    db3 = stage("s3", "PORT=3\nTOKEN=never-backed-up\n")
    assert tick(pdir, "2030-01-06T06:00:00Z") == ["db"]
    s0, s1, s2, s3 = (
        snapshot_at(repo, "mixed", t)
        for t in (
            "2030-01-05T23:00Z",
            "2030-01-06T00:00Z",
            "2030-01-06T04:00Z",
            "2030-01-06T06:00Z",
        )
    )

    # Default: the database from the newest snapshot, the env files from the weekly one.
    p = plan(policy, keys)
    assert sources_of(p) == {"db": s3, "env-files": s2}
    assert p["snapshot"] == s3 and p["snapshots"] == [s3, s2]
    steps = p["steps"]
    assert [s["source"] for s in steps] == ["db", "env-files"]  # type: ignore[attr-defined]
    assert all(s["taken"] and s["note"] is None for s in steps)  # type: ignore[attr-defined]
    shown = drkit("restore", "--policy", str(policy), "--plan", *ident(keys))
    assert shown.returncode == 6, shown.output  # both are live: refused, as p["refused"] says
    assert p["refused"] == ["db", "env-files"]
    text = shown.stdout
    assert "2 snapshots, each source from the newest complete snapshot holding it" in text
    assert f" 1. db (postgres) from snapshot {s3} (taken " in text
    assert f" 2. env-files (env) from snapshot {s2} (taken " in text
    # --at picks per source; --snapshot is "as of that snapshot", older ones fill its gaps.
    assert sources_of(plan(policy, keys, "--at", "2030-01-06T05:00:00Z")) == {
        "db": s1,
        "env-files": s2,
    }
    assert sources_of(plan(policy, keys, "--at", "2030-01-06T01:00:00Z")) == {
        "db": s1,
        "env-files": s0,
    }
    as_of = plan(policy, keys, "--snapshot", s1)
    assert sources_of(as_of) == {"db": s1, "env-files": s0}
    notes = {s["source"]: s["note"] for s in as_of["steps"]}  # type: ignore[attr-defined]
    assert notes["db"] is None and f"not in snapshot {s1}" in notes["env-files"]
    assert sources_of(plan(policy, keys, "--only", "db")) == {"db": s3}
    none = drkit(
        "restore", "--policy", str(policy), "--at", "2030-01-05T22:00:00Z", "--plan", *ident(keys)
    )
    assert none.returncode == 1 and "no trusted committed snapshot at or before" in none.stderr

    # Incident: the database and the env file are gone. Everything comes back as newest.
    pg.psql("postgres", f"DROP DATABASE {db};")
    env_file.unlink()
    res = drkit("restore", "--policy", str(policy), "--yes", "--json", *ident(keys))
    assert res.returncode == 0, res.output
    out = json.loads(res.stdout)
    assert out["verdict"] == "pass" and out["sources"] == {"db": s3, "env-files": s2}
    assert table_checksums(pg, db) == db3
    assert env_file.read_text() == "PORT=2\nTOKEN=two\n"
    # --at restores that point's data, here the database beside the live one.
    res = drkit(
        "restore",
        "--policy",
        str(policy),
        "--at",
        "2030-01-06T05:00:00Z",
        "--only",
        "db",
        "--rename-db",
        "_at",
        "--yes",
        "--json",
        *ident(keys),
    )
    assert res.returncode == 0, res.output
    assert json.loads(res.stdout)["sources"] == {"db": s1}
    assert table_checksums(pg, f"{db}_at") == db1

    # A source no snapshot holds (added to the policy since) is named, nothing restored.
    grown = policy.read_text() + (
        f'[[source]]\nkind = "files"\nname = "apps"\npaths = ["{root}/api"]\n'
    )
    policy.write_text(grown)
    res = drkit("restore", "--policy", str(policy), "--plan", *ident(keys))
    assert res.returncode == 1
    assert "holds source(s) apps; nothing was restored" in res.stderr
    assert "--only db --only env-files" in res.stderr
    assert sources_of(plan(policy, keys, "--only", "db")) == {"db": s3}


def _manifest(sid: str, names: list[str]) -> Manifest:
    return Manifest(
        "h", sid, "", "", "", "", [], [SourceRecord(n, "env", [], 0.0) for n in names], None
    )


def test_resume_of_a_different_assembly_is_refused() -> None:
    old, new = (
        _manifest("20300101T000000Z-aaaaaa", ["db", "env"]),
        _manifest("20300102T000000Z-bbbbbb", ["db"]),
    )
    first = Assembly("h", {"db": (old, old.sources[0]), "env": (old, old.sources[1])})
    progress = Progress(first, "local", resume=False)
    progress.mark("db")
    assert Progress(first, "local", resume=True).done == ["db"]
    # A backup ran since: the database would now come from the new snapshot.
    second = Assembly("h", {"db": (new, new.sources[0]), "env": (old, old.sources[1])})
    with pytest.raises(RestoreError) as err:
        Progress(second, "local", resume=True)
    assert f"db from {old.snapshot}" in str(err.value) and f"--snapshot {old.snapshot}" in str(
        err.value
    )
    assert Progress(first, "other-target", resume=True).done == []  # per target


@pytest.fixture
def pg_host(pg: PgServer, uniq: str, keys: Keys, tmp_path: Path) -> dict[str, object]:
    """A host with one database (no globals) and one env file, backed up once."""
    db = f"staged_src_{uniq}"
    pg.psql("postgres", f"CREATE DATABASE {db};")
    pg.psql(
        db,
        "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1,20000) g;"
        "CREATE INDEX ON t (md5);",
    )
    env_file = tmp_path / "root" / "app" / ".env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text("PORT=1\n")
    repo = tmp_path / "repo"
    policy = write_policy(
        tmp_path / "h.toml",
        "staged",
        {"url": repo.as_uri()},
        [keys.recipient],
        [
            {
                "kind": "postgres",
                "name": "db",
                "database": db,
                "globals": False,
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
            },
            {"kind": "env", "name": "env-files", "paths": [str(env_file)]},
        ],
    )
    drkit("backup", "--policy", str(policy), check=True)
    [snap] = list((repo / "staged" / "snapshots").iterdir())
    env_file.unlink()
    return {"policy": policy, "db": db, "snap": snap, "env": env_file}


def _exists(pg: PgServer, name: str) -> bool:
    sql = f"SELECT count(*) FROM pg_database WHERE datname LIKE '{name}%';"
    return pg.psql("postgres", sql).strip() != "0"


@pytest.mark.parametrize("tamper", ["flipped-byte", "other-dump"])
def test_tampered_dump_into_a_fresh_database_leaves_no_database(
    pg: PgServer, pg_host: dict[str, object], uniq: str, keys: Keys, tamper: str
) -> None:
    dump = Path(str(pg_host["snap"])) / "db" / "database.pgdump"
    if tamper == "flipped-byte":
        data = bytearray(dump.read_bytes())
        data[len(data) // 2] ^= 0x01
        dump.write_bytes(bytes(data))
    else:
        # A valid age file to the policy's own recipient (anyone can write one) holding
        # another database's dump: it decrypts and loads; only the digests catch it.
        other = f"staged_other_{uniq}"
        pg.psql("postgres", f"CREATE DATABASE {other};")
        pg.psql(other, "CREATE TABLE t AS SELECT 1 AS g, 'evil' AS md5;")
        plain = subprocess.run(
            [
                str(PG_BIN / "pg_dump"),
                "-Fc",
                "-Z0",
                "-h",
                pg.host,
                "-p",
                str(pg.port),
                "-U",
                pg.user,
                other,
            ],
            capture_output=True,
            check=True,
        ).stdout
        with dump.open("wb") as out:
            encode(
                io.BytesIO(plain), [parse_recipient(keys.recipient)], lambda s: out.write(s.read())
            )
    target = f"staged_dst_{uniq}"
    res = drkit(
        "restore",
        "--policy",
        str(pg_host["policy"]),
        "--database",
        target,
        "--pg-jobs",
        "2",
        "--yes",
        *ident(keys),
    )
    assert res.returncode == 1, res.output
    # The dump was not read twice: it was verified while loading into the staging database.
    assert "db/database.pgdump: verified while it loads into a staging area" in res.stderr
    assert "staged/snapshots/" in res.stderr and "/db/database.pgdump:" in res.stderr
    assert "nothing was restored" in res.stderr
    assert not _exists(pg, target)  # neither the database nor its staging copy
    assert not Path(str(pg_host["env"])).exists()  # the later step never ran


def test_a_tampered_env_artifact_is_still_checked_before_anything(
    pg: PgServer, pg_host: dict[str, object], uniq: str, keys: Keys
) -> None:
    [env] = list((Path(str(pg_host["snap"])) / "env-files").iterdir())
    data = bytearray(env.read_bytes())
    data[-5] ^= 0x01
    env.write_bytes(bytes(data))
    target = f"staged_dst_{uniq}"
    res = drkit(
        "restore", "--policy", str(pg_host["policy"]), "--database", target, "--yes", *ident(keys)
    )
    assert res.returncode == 1, res.output
    # A whole artifact fails its stored digest; a chunk index (dedup, the default) is
    # checked line by line against its end line before any chunk is read.
    named = f"env-files/{env.name}: "
    assert (
        named + "stored digest does not match" in res.stderr
        or named + "unreadable chunk index" in res.stderr
    ), res.stderr
    assert "nothing was restored" in res.stderr
    assert not _exists(pg, target)  # the database step (first) never ran


def test_a_fresh_database_restore_verified_while_loading_equals_the_source(
    pg: PgServer, pg_host: dict[str, object], uniq: str, keys: Keys
) -> None:
    before = pg.psql(
        str(pg_host["db"]), "SELECT count(*), md5(string_agg(md5, '' ORDER BY g)) FROM t;"
    )
    target = f"staged_ok_{uniq}"
    res = drkit(
        "restore",
        "--policy",
        str(pg_host["policy"]),
        "--database",
        target,
        "--pg-jobs",
        "2",
        "--yes",
        "--json",
        *ident(keys),
    )
    assert res.returncode == 0, res.output
    out = json.loads(res.stdout)
    assert out["verdict"] == "pass"
    assert any("renamed when complete" in s for s in out["steps"]), out["steps"]
    assert pg.psql(target, "SELECT count(*), md5(string_agg(md5, '' ORDER BY g)) FROM t;") == before
    assert Path(str(pg_host["env"])).read_text() == "PORT=1\n"
