"""Fail closed: bad dumps, wrong keys and tampered objects never pass for good backups."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.repos import RepoTarget
from tests.helpers import drkit, write_policy
from tests.servers.postgres import PgServer


def test_missing_database_fails_without_manifest(
    pg: PgServer, uniq: str, repo: RepoTarget, keys, tmp_path: Path
) -> None:
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        repo.policy,
        [keys.recipient],
        [
            {
                "kind": "postgres",
                "name": "callmeback",
                "database": "no_such_db",
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
            }
        ],
    )
    res = drkit("backup", "--policy", str(policy), env=repo.env)
    assert res.returncode == 1
    assert "host vultr: source callmeback" in res.stderr
    assert "no_such_db" in res.stderr
    assert "Traceback" not in res.output
    assert repo.keys(".json") == [] or repo.keys("manifest.json") == []
    assert repo.open_uploads() == []
    assert (
        drkit(
            "snapshots", "--policy", str(policy), "--json", env=repo.env, check=True
        ).stdout.count('"snapshot"')
        == 0
    )
    status = drkit("status", "--policy", str(policy), "--json", env=repo.env)
    assert json.loads(status.stdout)["hosts"][0]["last_snapshot"] is None


def test_killed_source_midstream_fails_and_aborts_upload(
    repo: RepoTarget, keys, tmp_path: Path
) -> None:
    # 12 MiB of output, then the command is killed: parts were uploaded already.
    script = "head -c 12582912 /dev/urandom; kill -9 $$"
    policy = write_policy(
        tmp_path / "h.toml",
        "h1",
        repo.policy,
        [keys.recipient],
        [{"kind": "command", "name": "dump", "command": ["sh", "-c", script]}],
    )
    res = drkit("backup", "--policy", str(policy), env=repo.env)
    assert res.returncode == 1
    assert "host h1: source dump" in res.stderr and "killed by signal 9" in res.stderr
    assert repo.keys("manifest.json") == []
    assert repo.keys("/dump/") == []
    assert repo.open_uploads() == []


def test_wrong_identity_restores_nothing(
    pg: PgServer, uniq: str, repo: RepoTarget, keys, other_keys, tmp_path: Path
) -> None:
    pg.psql("postgres", f"CREATE DATABASE wrongkey_src_{uniq};")
    pg.psql(f"wrongkey_src_{uniq}", "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        repo.policy,
        [keys.recipient],
        [
            {
                "kind": "postgres",
                "name": "db",
                "database": f"wrongkey_src_{uniq}",
                "globals": False,
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
            }
        ],
    )
    drkit("backup", "--policy", str(policy), env=repo.env, check=True)
    res = drkit(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--database",
        f"wrongkey_dst_{uniq}",
        "--identity",
        str(other_keys.identity_file),
        env=repo.env,
    )
    assert res.returncode == 1
    assert "identity does not match any recipient" in res.stderr
    exists = pg.psql(
        "postgres", f"SELECT count(*) FROM pg_database WHERE datname='wrongkey_dst_{uniq}';"
    )
    assert exists.strip() == "0"


def test_flipped_byte_fails_verify_and_restore_naming_object(
    pg: PgServer, uniq: str, repo: RepoTarget, keys, tmp_path: Path
) -> None:
    pg.psql("postgres", f"CREATE DATABASE flip_src_{uniq};")
    pg.psql(
        f"flip_src_{uniq}",
        "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1,5000) g;",
    )
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        repo.policy,
        [keys.recipient],
        [
            {
                "kind": "postgres",
                "name": "db",
                "database": f"flip_src_{uniq}",
                "globals": False,
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
            }
        ],
    )
    drkit("backup", "--policy", str(policy), env=repo.env, check=True)
    [key] = repo.keys("/db/database.pgdump")
    repo.flip_byte(key)
    ident = str(keys.identity_file)
    res = drkit("verify", "--policy", str(policy), "--identity", ident, env=repo.env)
    assert res.returncode == 1
    assert key in res.stdout and "FAILED" in res.stdout
    quick = drkit("verify", "--policy", str(policy), "--no-decrypt", env=repo.env)
    assert quick.returncode == 1 and key in quick.stdout
    res = drkit(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--database",
        f"flip_dst_{uniq}",
        "--identity",
        ident,
        env=repo.env,
    )
    assert res.returncode == 1
    assert key in res.stderr and "nothing was restored" in res.stderr
    exists = pg.psql(
        "postgres", f"SELECT count(*) FROM pg_database WHERE datname='flip_dst_{uniq}';"
    )
    assert exists.strip() == "0"


def test_source_timeout_stops_the_command(keys, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "h.toml",
        "h1",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [
            {
                "kind": "command",
                "name": "slow",
                "command": ["sh", "-c", "echo start; sleep 60"],
                "timeout": "1s",
            }
        ],
    )
    res = drkit("backup", "--policy", str(policy))
    assert res.returncode == 1
    assert "host h1: source slow" in res.stderr and "timed out after 1s" in res.stderr
    assert not list((tmp_path / "repo").rglob("manifest.json"))
