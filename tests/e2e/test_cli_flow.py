"""init, status, catalog sync and restore from nothing, and secrets kept out of every record."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pyrage

from tests.conftest import Keys
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
    assert "\ndedup = true\n" in sample.read_text()  # the default, said where it is set
    drkit("policy", "validate", str(sample), check=True)
    # The identity is a real age identity whose public key is the recipient printed.
    secret_line = next(ln for ln in ident.read_text().splitlines() if ln.startswith("AGE-SECRET"))
    assert str(pyrage.x25519.Identity.from_str(secret_line).to_public()) == data["recipient"]
    # A second init keeps the identity: losing it would orphan every backup.
    again = json.loads(drkit("init", "--json", check=True).stdout)
    assert again["recipient"] == data["recipient"] and again["identity_created"] is False
    # Without --json the recipient is printed for a person to copy into policies.
    text = drkit("init", check=True).stdout
    assert f"recipient (public, put it in policies): {data['recipient']}" in text
    assert "AGE-SECRET" not in text


def test_ssh_ed25519_recipient_backs_up_and_restores(
    repo: RepoTarget, tmp_path: Path, other_keys: Keys
) -> None:
    """An ssh-ed25519 public key is a recipient for backup; its private key verifies
    and restores; another key is refused."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    recipient = (tmp_path / "id_ed25519.pub").read_text().strip()
    assert recipient.startswith("ssh-ed25519 ")
    app = tmp_path / "root" / "app"
    app.mkdir(parents=True)
    (app / ".env").write_text("TOKEN=ssh-recipient-test\n")
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        repo.policy,
        [recipient],
        [{"kind": "env", "name": "env-files", "paths": [f"{app}/.env"]}],
    )
    drkit("backup", "--policy", str(policy), env=repo.env, check=True)
    verify = drkit(
        "verify",
        "--policy",
        str(policy),
        "--identity",
        str(key),
        "--json",
        env=repo.env,
        check=True,
    )
    assert json.loads(verify.stdout)["results"][0]["ok"] is True
    refused = drkit(
        "verify", "--policy", str(policy), "--identity", str(other_keys.identity_file), env=repo.env
    )
    assert refused.returncode == 1 and "does not match any recipient" in refused.output
    dest = tmp_path / "dest"
    drkit(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--dest",
        str(dest),
        "--identity",
        str(key),
        env=repo.env,
        check=True,
    )
    assert (dest / str(app).lstrip("/") / ".env").read_text() == "TOKEN=ssh-recipient-test\n"


def test_every_reporting_command_speaks_json(keys: Keys, tmp_path: Path) -> None:
    """--json on each command that reports: stdout is one JSON document."""
    (tmp_path / "p").mkdir()
    policy = write_policy(
        tmp_path / "p" / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "hello", "command": ["echo", "hello"]}],
        extra='schedule = "17 3 * * *"\nrpo = "26h"',
    )
    p, ident = str(policy), str(keys.identity_file)
    commands = [
        ["init"],
        ["policy", "validate", p],
        ["backup", "--policy", p],
        ["snapshots", "--policy", p],
        ["verify", "--policy", p, "--identity", ident],
        ["restore", "--policy", p, "--plan", "--identity", ident],
        ["status", "--policy", p],
        ["catalog", "sync", "--policy", p],
        ["schedule", "--policy", p],
        ["prune", "--policy", p, "--dry-run"],
    ]
    for argv in commands:
        res = drkit(*argv, "--json", check=True)
        assert isinstance(json.loads(res.stdout), dict), argv
    # A failure reports in JSON too (and still exits non-zero).
    bad = drkit("policy", "validate", "--json", str(tmp_path / "missing.toml"))
    assert bad.returncode == 2 and json.loads(bad.stdout)["ok"] is False


def test_status_flags_rpo_breach_and_last_failure(
    pg: PgServer, uniq: str, keys: Keys, tmp_path: Path
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
    pg: PgServer, uniq: str, repo: RepoTarget, keys: Keys, tmp_path: Path, drkit_home: Path
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
    # The rebuilt catalog holds the same snapshots and artifacts as the catalog of the
    # machine that ran the backups (snapshots, digests and sizes from the manifests).
    snaps = (
        "SELECT host, snapshot_id, status, stored_bytes, plain_bytes, policy_sha256 "
        "FROM snapshots ORDER BY snapshot_id"
    )
    arts = (
        "SELECT s.snapshot_id, a.source, a.kind, a.name, a.key, a.format, a.plain_size, "
        "a.plain_sha256, a.stored_size, a.stored_sha256 FROM artifacts a "
        "JOIN snapshots s ON s.id = a.snapshot_pk ORDER BY 1, 2, 4"
    )
    laptop_db = sqlite3.connect(tmp_path / "laptop-state" / "catalog.sqlite")
    origin_db = sqlite3.connect(drkit_home / "state" / "catalog.sqlite")
    rebuilt = laptop_db.execute(snaps).fetchall()
    assert len(rebuilt) == 2 and rebuilt == origin_db.execute(snaps).fetchall()
    rebuilt_artifacts = laptop_db.execute(arts).fetchall()
    assert len(rebuilt_artifacts) == 2
    assert rebuilt_artifacts == origin_db.execute(arts).fetchall()
    # A second sync adds nothing.
    again = drkit("catalog", "sync", "--policy", str(policy), "--json", env=laptop, check=True)
    assert json.loads(again.stdout)["synced"][0]["added"] == 0
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
    pg: PgServer, uniq: str, repo: RepoTarget, keys: Keys, tmp_path: Path, drkit_home: Path
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
    outputs.append(drkit("backup", "--policy", str(bad), "--json", env=env).output)
    dest = tmp_path / "restored"
    outputs.append(
        drkit(
            "restore",
            "--yes",
            "--json",
            "--policy",
            str(policy),
            "--only",
            "env-files",
            "--dest",
            str(dest),
            "--identity",
            str(keys.identity_file),
            env=env,
            check=True,
        ).output
    )
    # The restore did bring the values back (so the greps below look for real data).
    restored = (dest / str(app).lstrip("/") / ".env").read_text()
    assert env_values[0] in restored and env_values[1] in restored
    secrets = [*env_values, pg_password]
    if repo.kind == "s3":
        secrets += [repo.env["AWS_SECRET_ACCESS_KEY"], repo.env["AWS_ACCESS_KEY_ID"]]
        # Refused credentials: the error names the bucket and S3's code, never a key.
        wrong = {**env, "AWS_SECRET_ACCESS_KEY": "wrong-" + repo.env["AWS_SECRET_ACCESS_KEY"]}
        refused = drkit("backup", "--policy", str(policy), env=wrong)
        assert refused.returncode == 1
        outputs.append(refused.output)
        secrets.append(wrong["AWS_SECRET_ACCESS_KEY"])
    # Every object in the repository (manifests, facts, artifacts, markers, locks) and
    # every file drkit keeps locally (config, catalog and its journals, state).
    stored = {key: repo.read(key) for key in repo.keys("")}
    assert any(k.endswith("manifest.json") for k in stored)
    assert any("/env-files/" in k for k in stored)
    local = {p: p.read_bytes() for p in drkit_home.rglob("*") if p.is_file()}
    assert drkit_home / "state" / "catalog.sqlite" in local
    for secret in secrets:
        for out in outputs:
            assert secret not in out
        for key, data in stored.items():
            assert secret.encode() not in data, key
        for path, data in local.items():
            assert secret.encode() not in data, path
    assert os.environ.get("TEST_PGPASSWORD") is None
