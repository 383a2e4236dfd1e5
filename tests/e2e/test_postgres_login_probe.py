"""After a restore, the roles that could log in at backup time still can (issue #15).

A role restored NOLOGIN, or without the password hash it had, makes every app fail
after a restore whose row counts and roles all pass. The backup records, by name
only, which roles could log in and which had a password; the check after a restore
(a drill runs the same) probes the target for each. Real PostgreSQL 15, the real CLI:
a server of this module's own backs up (the session's shared one holds other tests'
login roles, which the check would rightly list too), a fresh one is the target.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
import zstandard

from tests.e2e.test_postgres_untrusted import pg_policy
from tests.helpers import drkit
from tests.servers.postgres import PG_BIN, PgServer, postgres_server


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """The source: this module's own server (shadows the session's shared ``pg``)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def target() -> Iterator[PgServer]:
    """A fresh server to restore onto (what a new host has: none of the source's roles)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def app(pg: PgServer, uniq: str) -> Iterator[dict[str, str]]:
    """A database owned by a role that logs in with a password, and a second role that
    logs in with none (peer or trust authentication: nothing to restore)."""
    names = {
        "db": f"logins_{uniq}",
        "app": f"app_{uniq}",
        "nopw": f"nopw_{uniq}",
        "reader": f"reader_{uniq}",
    }
    pg.psql(
        "postgres",
        f"CREATE ROLE {names['app']} LOGIN PASSWORD 'pw-{uniq}';\n"
        f"CREATE ROLE {names['nopw']} LOGIN;\n"
        f"CREATE DATABASE {names['db']} OWNER {names['app']};",
    )
    pg.psql(names["db"], "CREATE TABLE calls AS SELECT generate_series(1, 5) AS id;")
    yield names
    pg.psql("postgres", f"DROP DATABASE IF EXISTS {names['db']} WITH (FORCE);", check=False)
    for role in ("app", "nopw", "reader"):
        pg.psql("postgres", f"DROP ROLE IF EXISTS {names[role]};", check=False)


def backup_facts(policy: Path, keys: Any, tmp_path: Path) -> dict[str, Any]:
    """Back up, and return the source's facts as stored (decrypted with pyrage + zstd)."""
    res = drkit("backup", "--policy", str(policy), "--json", check=True)
    snap = json.loads(res.stdout)["results"][0]["snapshot"]
    raw = (tmp_path / "repo" / "vultr" / "snapshots" / snap / "facts.json.age").read_bytes()
    ident = pyrage.x25519.Identity.from_str(keys.identity_file.read_text().strip())
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(pyrage.decrypt(raw, [ident]))
    return dict(json.loads(plain)["db"])


def restore(policy: Path, keys: Any, target: PgServer, *args: str) -> dict[str, Any]:
    res = drkit(
        "restore",
        "--yes",
        "--json",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        "--pg-port",
        str(target.port),
        "--pg-user",
        "postgres",
        *args,
    )
    assert res.returncode == 0, res.output
    return dict(json.loads(res.stdout))


def logins_check(target: PgServer, facts: dict[str, Any], user: str = "postgres") -> Any:
    """The source's check run on its own, as a drill does, against ``target``."""
    from drkit.policy.models import PostgresConfig as Config
    from drkit.remote.local import LocalRunner
    from drkit.sources.base import RestoreOptions
    from drkit.sources.postgres import PostgresSource

    config = Config(
        kind="postgres",
        name="db",
        database=facts["database"],
        host="127.0.0.1",
        port=target.port,
        user="postgres",
    )
    src = PostgresSource("db", config, LocalRunner())
    checks = {c.name: c for c in src.check(facts, RestoreOptions(pg_user=user))}
    return checks["logins"]


def test_roles_that_logged_in_still_can_and_a_nologin_one_fails_by_name(
    pg: PgServer, target: PgServer, app: dict[str, str], keys: Any, tmp_path: Path
) -> None:
    policy = pg_policy(tmp_path, pg, keys, app["db"])
    facts = backup_facts(policy, keys, tmp_path)
    # Names only: which roles could log in, which of them had a password; no hash.
    logins = facts["logins"]
    assert {app["app"], app["nopw"], "postgres"} <= set(logins["roles"])
    assert app["app"] in logins["passwords"] and app["nopw"] not in logins["passwords"]
    assert "SCRAM-SHA-256" not in json.dumps(facts)

    out = restore(policy, keys, target)
    assert out["verdict"] == "pass", out["checks"]
    check = next(c for c in out["checks"] if c["name"] == "logins")
    assert check["status"] == "pass", check
    # postgres is the target's own superuser: never altered, so not probed.
    assert " role(s) can log in as at backup, " in check["detail"], check
    assert check["detail"].endswith("; protected role(s) postgres left as the target has them")

    # The owner restored NOLOGIN: the check fails naming it.
    target.psql("postgres", f"ALTER ROLE {app['app']} NOLOGIN;")
    check = logins_check(target, facts)
    assert check.status == "fail"
    assert check.detail.startswith(f"cannot log in as at backup: {app['app']} (NOLOGIN)")
    # It logs in again but lost its password (what a globals.sql without hashes brings
    # back): fails too; the role that never had one is not asked for one.
    target.psql("postgres", f"ALTER ROLE {app['app']} LOGIN PASSWORD NULL;")
    check = logins_check(target, facts)
    assert check.status == "fail"
    assert f"{app['app']} (no password; it had one at backup)" in check.detail
    assert app["nopw"] not in check.detail
    target.psql("postgres", f"ALTER ROLE {app['nopw']} NOLOGIN;")
    check = logins_check(target, facts)
    assert f"{app['nopw']} (NOLOGIN)" in check.detail

    # Put right, but probed as a role that cannot read pg_authid: LOGIN is checked, the
    # passwords are a warning saying they could not be verified.
    target.psql(
        "postgres",
        f"ALTER ROLE {app['app']} PASSWORD 'again';\n"
        f"ALTER ROLE {app['nopw']} LOGIN;\n"
        f"CREATE ROLE {app['reader']} LOGIN;",
    )
    target.psql(app["db"], f"GRANT SELECT ON calls TO {app['reader']};")  # the row counts
    check = logins_check(target, facts)
    assert check.status == "pass", check.detail
    check = logins_check(target, facts, user=app["reader"])
    assert check.status == "warn", check.detail
    unverified = check.detail.split("; password(s) of ", 1)[1]
    assert unverified.startswith(
        f"{app['app']} not verified (the connecting role cannot read pg_authid)"
    ), check.detail
    target.psql("postgres", f"ALTER ROLE {app['app']} NOLOGIN;")
    check = logins_check(target, facts, user=app["reader"])
    assert (
        check.status,
        check.detail.startswith(f"cannot log in as at backup: {app['app']} "),
    ) == ("fail", True)


def test_backup_without_pg_authid_plan_and_check_name_roles_needing_a_password(
    pg: PgServer, target: PgServer, app: dict[str, str], keys: Any, tmp_path: Path
) -> None:
    """A role that cannot read pg_authid backs up with ``pg_dumpall --no-role-passwords``
    (the usual way on a managed server): the facts say the passwords were not recorded,
    the plan names the login roles that will need one, the check warns naming them."""
    reader = app["reader"]
    pg.psql("postgres", f"CREATE ROLE {reader} LOGIN;")
    pg.psql(app["db"], f"GRANT SELECT ON calls TO {reader};")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("psql", "pg_dump", "pg_restore"):
        (bindir / tool).symlink_to(PG_BIN / tool)
    wrapper = bindir / "pg_dumpall"
    wrapper.write_text(f'#!/bin/sh\nexec "{PG_BIN}/pg_dumpall" --no-role-passwords "$@"\n')
    os.chmod(wrapper, 0o755)  # noqa: S103 (a program, run as the restore's user)
    policy = pg_policy(tmp_path, pg, keys, app["db"], user=reader, bin_dir=str(bindir))
    facts = backup_facts(policy, keys, tmp_path)
    assert facts["logins"]["passwords"] is None
    assert {app["app"], reader} <= set(facts["logins"]["roles"])

    plan = drkit(
        "restore",
        "--plan",
        "--json",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        "--pg-port",
        str(target.port),
        "--pg-user",
        "postgres",
        check=True,
    )
    actions = json.loads(plan.stdout)["steps"][0]["actions"]
    [line] = [a for a in actions if "could not read password hashes" in a]
    named = line.split("login role(s) ", 1)[1].split(" will need a new password")[0]
    assert {app["app"], reader} <= set(named.split(", ")), line

    out = restore(policy, keys, target)
    check = next(c for c in out["checks"] if c["name"] == "logins")
    assert check["status"] == "warn", check
    assert (
        "; the backup could not read pg_authid, so no password was restored; " in (check["detail"])
    )
    none = check["detail"].split("; no password on the target: ", 1)[1].split(" (set one")[0]
    assert {app["app"], reader} <= set(none.split(", ")), check
    target.psql("postgres", f"DROP DATABASE {app['db']} WITH (FORCE);")
