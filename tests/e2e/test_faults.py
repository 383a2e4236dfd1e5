"""Fail closed: bad dumps, wrong keys and tampered objects never pass for good backups."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import Keys
from tests.e2e.repos import RepoTarget
from tests.helpers import drkit, role_exists, write_policy
from tests.servers.postgres import PgServer


def test_missing_database_fails_without_manifest(
    pg: PgServer, uniq: str, repo: RepoTarget, keys: Keys, tmp_path: Path
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
    # Host, source, the command (psql opens the snapshot pg_dump then dumps: it fails
    # first) and the command's stderr tail.
    assert "host vultr: source callmeback (postgres)" in res.stderr
    assert "no_such_db" in res.stderr.split("psql: error")[0], res.stderr  # the command
    assert 'database "no_such_db" does not exist' in res.stderr
    assert "Traceback" not in res.output
    # No manifest, and nothing else either: globals.sql (dumped first, successfully)
    # was removed with the failed snapshot.
    assert repo.keys("manifest.json") == []
    assert repo.keys("/snapshots/") == []
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
    repo: RepoTarget, keys: Keys, tmp_path: Path
) -> None:
    """A source killed while its upload is open (S3: a multipart upload with parts
    already sent; local: the temp file) -> exit 1, the upload aborted, no object.

    Whole artifacts (``dedup = false``): a deduplicated backup spools its packs locally
    and has no upload open mid-source; its kill loops are in tests/faults."""
    pidfile = tmp_path / "source.pid"
    # 40 MiB of incompressible output (more than two 16 MiB parts), then wait to be killed.
    script = f"head -c 41943040 /dev/urandom; echo $$ > {pidfile}; exec sleep 600"
    policy = write_policy(
        tmp_path / "h.toml",
        "h1",
        {**repo.policy, "dedup": False},
        [keys.recipient],
        [{"kind": "command", "name": "dump", "command": ["sh", "-c", script]}],
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "drkit", "backup", "--policy", str(policy)],
        env={**os.environ, **repo.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (pidfile.exists() and pidfile.read_text().strip() and repo.open_uploads()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no open upload while the source ran"
            time.sleep(0.2)
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "host h1: source dump" in err and "killed by signal 9" in err
    assert repo.keys("manifest.json") == []
    assert repo.keys("/snapshots/") == []
    assert repo.open_uploads() == []


def test_wrong_identity_restores_nothing(
    pg: PgServer, uniq: str, repo: RepoTarget, keys: Keys, other_keys: Keys, tmp_path: Path
) -> None:
    """A database with its owning role and an .env file, all gone; restore with an
    identity that is not a recipient -> a clear error and nothing written: no role,
    no database (not even a staging one), no file."""
    db, role = f"wrongkey_{uniq}", f"wrongkey_owner_{uniq}"
    pg.psql("postgres", f"CREATE ROLE {role} LOGIN;")
    pg.psql("postgres", f"CREATE DATABASE {db} OWNER {role};")
    pg.psql(db, f"CREATE TABLE t (x int); INSERT INTO t VALUES (1); ALTER TABLE t OWNER TO {role};")
    app = tmp_path / "root" / "app"
    app.mkdir(parents=True)
    (app / ".env").write_text("A=1\n")
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        repo.policy,
        [keys.recipient],
        [
            {
                "kind": "postgres",
                "name": "db",
                "database": db,
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
            },
            {"kind": "env", "name": "env-files", "paths": [f"{app}/.env"]},
        ],
    )
    drkit("backup", "--policy", str(policy), env=repo.env, check=True)
    pg.psql("postgres", f"DROP DATABASE {db};")
    pg.psql("postgres", f"DROP ROLE {role};")
    dest = tmp_path / "dest"
    try:
        res = drkit(
            "restore",
            "--yes",
            "--policy",
            str(policy),
            "--dest",
            str(dest),
            "--identity",
            str(other_keys.identity_file),
            env=repo.env,
        )
        assert res.returncode == 1
        assert "the identity does not match any recipient of this backup" in res.stderr
        assert "Traceback" not in res.output
        assert not role_exists(pg, role)
        dbs = pg.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '%{uniq}%';")
        assert dbs.strip() == ""
        assert not dest.exists() or list(dest.rglob("*")) == []
        # The right identity then restores all of it: the failure was the key alone.
        drkit(
            "restore",
            "--yes",
            "--policy",
            str(policy),
            "--dest",
            str(dest),
            "--identity",
            str(keys.identity_file),
            env=repo.env,
            check=True,
        )
        assert role_exists(pg, role)
        assert pg.psql(db, "SELECT count(*) FROM t;").strip() == "1"
        assert (dest / str(app).lstrip("/") / ".env").read_text() == "A=1\n"
    finally:
        pg.psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE);", check=False)
        pg.psql("postgres", f"DROP ROLE IF EXISTS {role};", check=False)


def test_flipped_byte_fails_verify_and_restore_naming_object(
    pg: PgServer, uniq: str, repo: RepoTarget, keys: Keys, tmp_path: Path
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
    # No database, not even a staging one.
    dbs = pg.psql(
        "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE 'flip_dst%{uniq}%';"
    )
    assert dbs.strip() == ""


def test_source_timeout_stops_the_command(keys: Keys, tmp_path: Path) -> None:
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
