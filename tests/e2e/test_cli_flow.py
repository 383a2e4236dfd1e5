"""init, status, catalog sync and restore from nothing, and secrets kept out of every record."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

from tests.e2e.repos import RepoTarget
from tests.helpers import drkit, write_policy
from tests.servers.postgres import PgServer


def test_init_creates_private_identity_and_sample_policy(drkit_home: Path) -> None:
    res = drkit("init", "--json", check=True)
    data = json.loads(res.stdout)
    ident = Path(data["identity_file"])
    assert stat.S_IMODE(ident.stat().st_mode) == 0o600
    assert data["recipient"].startswith("age1")
    assert data["recipient"] in ident.read_text()
    sample = Path(data["sample_policy"])
    assert data["recipient"] in sample.read_text()
    drkit("policy", "validate", str(sample), check=True)
    # A second init keeps the identity: losing it would orphan every backup.
    again = json.loads(drkit("init", "--json", check=True).stdout)
    assert again["recipient"] == data["recipient"] and again["identity_created"] is False


def test_status_flags_rpo_breach_and_last_failure(
    pg: PgServer, uniq: str, keys, tmp_path: Path
) -> None:
    repo = {"url": (tmp_path / "repo").as_uri()}
    (tmp_path / "p").mkdir()
    good = write_policy(
        tmp_path / "p" / "vultr.toml",
        "vultr",
        repo,
        [keys.recipient],
        [{"kind": "command", "name": "hello", "command": ["echo", "hello"]}],
        extra='rpo = "1h"',
    )
    never = write_policy(
        tmp_path / "p" / "hetzner.toml",
        "hetzner",
        repo,
        [keys.recipient],
        [{"kind": "command", "name": "fail", "command": ["false"]}],
        extra='rpo = "1h"',
    )
    drkit("backup", "--policy", str(good), check=True)
    assert drkit("backup", "--policy", str(never)).returncode == 1
    res = drkit("--policy-dir", str(tmp_path / "p"), "status", "--json")
    assert res.returncode == 1  # hetzner has no backup within its rpo
    rows = {r["host"]: r for r in json.loads(res.stdout)["hosts"]}
    assert rows["vultr"]["breach"] is False and rows["vultr"]["snapshots"] == 1
    assert rows["hetzner"]["breach"] is True and rows["hetzner"]["last_snapshot"] is None
    assert "exited with status 1" in rows["hetzner"]["last_error"]
    ok = drkit("--policy-dir", str(tmp_path / "p"), "status", "--host", "vultr")
    assert ok.returncode == 0 and "vultr" in ok.stdout


def test_catalog_sync_and_restore_from_nothing(
    pg: PgServer, uniq: str, repo: RepoTarget, keys, tmp_path: Path, drkit_home: Path
) -> None:
    """An incident laptop: a fresh catalog, the bucket and the identity are enough."""
    pg.psql("postgres", f"CREATE DATABASE fromnothing_{uniq};")
    pg.psql(f"fromnothing_{uniq}", "CREATE TABLE t AS SELECT g FROM generate_series(1, 777) g;")
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        repo.policy,
        [keys.recipient],
        [
            {
                "kind": "postgres",
                "name": "db",
                "database": f"fromnothing_{uniq}",
                "globals": False,
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
            }
        ],
    )
    drkit("backup", "--policy", str(policy), env=repo.env, check=True)
    drkit("backup", "--policy", str(policy), env=repo.env, check=True)
    laptop = {**repo.env, "DRKIT_STATE_DIR": str(tmp_path / "laptop-state")}
    res = drkit("catalog", "sync", "--policy", str(policy), "--json", env=laptop, check=True)
    assert json.loads(res.stdout)["synced"][0]["added"] == 2
    catalog = tmp_path / "laptop-state" / "catalog.sqlite"
    rows = sqlite3.connect(catalog).execute("SELECT count(*) FROM snapshots").fetchone()
    assert rows == (2,)
    drkit(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--database",
        f"fromnothing_restored_{uniq}",
        "--identity",
        str(keys.identity_file),
        env=laptop,
        check=True,
    )
    assert pg.psql(f"fromnothing_restored_{uniq}", "SELECT count(*) FROM t;").strip() == "777"


def test_no_secret_in_logs_manifests_or_catalog(
    pg: PgServer, uniq: str, repo: RepoTarget, keys, tmp_path: Path, drkit_home: Path
) -> None:
    env_values = ["sk_live_51Hx9TESTSECRET", "whsec_TEST_0b9f7e"]
    app = tmp_path / "root" / "voice-pipeline"
    app.mkdir(parents=True)
    (app / ".env").write_text(f"STRIPE_KEY={env_values[0]}\nWEBHOOK_SECRET={env_values[1]}\n")
    pg_password = "pg-password-NEVER-PRINT-31337"
    pg.psql("postgres", f"CREATE DATABASE secretsdb_{uniq};")
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        repo.policy,
        [keys.recipient],
        [
            {
                "kind": "postgres",
                "name": "db",
                "database": f"secretsdb_{uniq}",
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
                "password": "env:TEST_PGPASSWORD",
            },
            {"kind": "env", "name": "env-files", "paths": [f"{tmp_path}/root/*/.env"]},
        ],
    )
    env = {**repo.env, "TEST_PGPASSWORD": pg_password}
    outputs = [
        drkit("backup", "--policy", str(policy), env=env, check=True).output,
        drkit("snapshots", "--policy", str(policy), "--json", env=env, check=True).output,
        drkit(
            "verify",
            "--policy",
            str(policy),
            "--identity",
            str(keys.identity_file),
            env=env,
            check=True,
        ).output,
        drkit("status", "--policy", str(policy), "--json", env=env).output,
        drkit("catalog", "sync", "--policy", str(policy), env=env, check=True).output,
    ]
    # A failing run's error text goes to stderr and into the catalog: it must be clean too.
    bad = write_policy(
        tmp_path / "bad.toml",
        "vultr",
        repo.policy,
        [keys.recipient],
        [
            {
                "kind": "postgres",
                "name": "db",
                "database": "nope",
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
                "password": "env:TEST_PGPASSWORD",
            }
        ],
    )
    outputs.append(drkit("backup", "--policy", str(bad), env=env).output)
    secrets = [*env_values, pg_password]
    secrets += [v for k, v in repo.env.items() if k == "AWS_SECRET_ACCESS_KEY"]
    manifests = b"".join(repo.read(k) for k in repo.keys("manifest.json"))
    catalog = (drkit_home / "state" / "catalog.sqlite").read_bytes()
    for secret in secrets:
        for out in outputs:
            assert secret not in out
        assert secret.encode() not in manifests
        assert secret.encode() not in catalog
        # Stored artifacts are encrypted: not even the env file's values appear in them.
        for key in repo.keys("/env-files/"):
            assert secret.encode() not in repo.read(key)
    assert os.environ.get("TEST_PGPASSWORD") is None
