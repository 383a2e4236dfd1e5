"""A restore writes only where the policy says, whatever the backup holds (issue 16).

The backed-up host is the one that may be compromised: its ``pg_dumpall`` and
``pg_dump`` here are wrappers (the policy's ``bin_dir``) adding what an
attacker would, around the real tools. Restores go into the real PostgreSQL
through the real CLI. And a database name given on the command line is a name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Keys
from tests.helpers import drkit, write_policy
from tests.servers.postgres import PG_BIN, PgServer


def compromised_bin(tmp_path: Path, *, dumpall_extra: str = "", dump_awk: str = "") -> Path:
    """A bin_dir whose pg_dumpall adds ``dumpall_extra`` after pg_dumpall's header (and
    keeps a copy of what it printed in ``globals-as-dumped.sql``) and whose pg_dump runs
    its output through ``dump_awk``; psql and pg_restore are the real ones."""
    bindir = tmp_path / "compromised-bin"
    bindir.mkdir()
    for tool in ("psql", "pg_restore"):
        (bindir / tool).symlink_to(PG_BIN / tool)
    extra = tmp_path / "extra.sql"
    extra.write_text(dumpall_extra)
    scripts = {
        "pg_dumpall": f'"{PG_BIN}/pg_dumpall" "$@" | '
        f"sed '/^SET standard_conforming_strings/r {extra}' | tee {tmp_path}/globals-as-dumped.sql",
        "pg_dump": f'"{PG_BIN}/pg_dump" "$@" | awk \'{dump_awk or "1"}\'',
    }
    for tool, body in scripts.items():
        (bindir / tool).write_text(f"#!/bin/sh\nset -e\n{body}\n")
        (bindir / tool).chmod(0o755)
    return bindir


def pg_policy(tmp_path: Path, pg: PgServer, keys: Keys, db: str, **source: object) -> Path:
    src = {
        "kind": "postgres",
        "name": "db",
        "database": db,
        "host": "127.0.0.1",
        "port": pg.port,
        "user": "postgres",
        **source,
    }
    return write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [src],
    )


def ident(keys: Keys) -> list[str]:
    return ["--identity", str(keys.identity_file)]


@pytest.fixture
def small_db(pg: PgServer, uniq: str) -> Iterator[str]:
    db = f"untrusted_{uniq}"
    pg.psql("postgres", f"CREATE DATABASE {db};")
    pg.psql(db, f"CREATE TABLE marker_{uniq} AS SELECT generate_series(1, 3) AS id;")
    yield db
    pg.psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE);", check=False)


def role_state(pg: PgServer, role: str) -> str:
    """Everything a restore could change about ``role``: attributes, password, settings,
    comment, memberships either way."""
    return pg.psql(
        "postgres",
        "SELECT row(a.*)::text, coalesce(shobj_description(a.oid, 'pg_authid'), '-'), "
        "(SELECT coalesce(string_agg(array_to_string(setconfig, ','), ';'), '-') "
        " FROM pg_db_role_setting s WHERE s.setrole = a.oid), "
        "(SELECT count(*) FROM pg_auth_members m WHERE m.roleid = a.oid OR m.member = a.oid) "
        f"FROM pg_authid a WHERE rolname = '{role}';",
    ).strip()


def test_globals_hold_only_role_statements_and_never_touch_protected_roles(
    pg: PgServer, small_db: str, uniq: str, keys: Keys, tmp_path: Path
) -> None:
    new_role = f"drkit_new_{uniq}"
    # Supabase's reserved role, as the target has it (a self-hosted Supabase would).
    pg.psql("postgres", "CREATE ROLE authenticator NOINHERIT LOGIN;")
    marker = tmp_path / "pwned"
    sneaked = (
        f"create role {new_role} login;\n"
        f"alter role postgres password 'pwned-{uniq}';\n"
        "ALTER USER postgres SET work_mem = '7MB';\n"
        "comment on role postgres is 'pwned';\n"
        f"grant postgres to {new_role};\n"
        "Alter User authenticator With Superuser Password 'pwned';\n"
    )
    bindir = compromised_bin(tmp_path, dumpall_extra=sneaked)
    policy = str(pg_policy(tmp_path, pg, keys, small_db, bin_dir=str(bindir)))
    restored = f"{small_db}_r"
    before = {r: role_state(pg, r) for r in ("postgres", "authenticator")}
    try:
        drkit("backup", "--policy", policy, check=True)
        assert (
            f"alter role postgres password 'pwned-{uniq}';"
            in (tmp_path / "globals-as-dumped.sql").read_text()
        )  # the snapshot holds what the compromised host added
        res = drkit(
            "restore",
            "--yes",
            "--policy",
            policy,
            "--rename-db",
            "_r",
            "--force",
            *ident(keys),
            "--json",
        )
        assert res.returncode == 0, res.output
        # The roles drkit must never alter are as they were, whatever the letter case.
        assert {r: role_state(pg, r) for r in before} == before
        assert role_state(pg, new_role).endswith("|0")  # created, not a member of postgres
        notes = [s for s in json.loads(res.stdout)["steps"] if "protected role" in s]
        assert notes and "authenticator" in notes[0] and "postgres" in notes[0]
        assert pg.psql(restored, f"SELECT count(*) FROM marker_{uniq};").strip() == "3"

        # A psql meta-command in globals.sql: the step is refused naming the line, and
        # nothing of the file is applied (its new role included).
        pg.psql("postgres", f"DROP DATABASE {restored} WITH (FORCE); DROP ROLE {new_role};")
        (tmp_path / "extra.sql").write_text(f"CREATE ROLE {new_role};\n\\! touch {marker}\n")
        drkit("backup", "--policy", policy, check=True)
        dumped = (tmp_path / "globals-as-dumped.sql").read_text().splitlines()
        line = dumped.index(f"\\! touch {marker}") + 1
        res = drkit("restore", "--yes", "--policy", policy, "--rename-db", "_r", *ident(keys))
        assert res.returncode != 0
        assert f"globals.sql line {line}: psql meta-command `\\!`" in res.stderr
        assert not marker.exists()
        assert (
            pg.psql(
                "postgres", f"SELECT count(*) FROM pg_roles WHERE rolname = '{new_role}';"
            ).strip()
            == "0"
        )
        gone = pg.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname='{restored}';")
        assert gone.strip() == "0"
    finally:
        pg.psql("postgres", f"DROP DATABASE IF EXISTS {restored} WITH (FORCE);", check=False)
        pg.psql(
            "postgres",
            f"DROP ROLE IF EXISTS {new_role}; DROP ROLE IF EXISTS authenticator;"
            " ALTER ROLE postgres PASSWORD NULL; ALTER ROLE postgres RESET ALL;"
            " COMMENT ON ROLE postgres IS NULL;",
            check=False,
        )


def test_plain_dump_cannot_run_meta_commands(
    pg: PgServer, small_db: str, keys: Keys, tmp_path: Path
) -> None:
    """A plain dump that lifts pg_dump's own \\restrict (its key is in the dump), runs a
    shell and restricts again: drkit's \\restrict, with a key the dump cannot know, stops
    it."""
    marker = tmp_path / "pwned"
    lift = (
        "/^\\\\restrict / { key = $2 } { print } "
        "/^SET / && !done { done = 1; "
        f'print "\\\\unrestrict " key; print "\\\\! touch {marker}"; print "\\\\restrict " key }}'
    )
    bindir = compromised_bin(tmp_path, dump_awk=lift)
    policy = str(
        pg_policy(tmp_path, pg, keys, small_db, bin_dir=str(bindir), format="plain", globals=False)
    )
    restored = f"{small_db}_plain"
    try:
        drkit("backup", "--policy", policy, check=True)
        res = drkit("restore", "--yes", "--policy", policy, "--rename-db", "_plain", *ident(keys))
        assert not marker.exists()
        assert res.returncode != 0
        assert "\\unrestrict: wrong key" in res.stderr
        empty = pg.psql(restored, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public';")
        assert empty.strip() == "0"  # one transaction: rolled back
    finally:
        pg.psql("postgres", f"DROP DATABASE IF EXISTS {restored} WITH (FORCE);", check=False)


def test_database_names_are_names_not_connection_strings(
    pg: PgServer, small_db: str, uniq: str, keys: Keys, tmp_path: Path
) -> None:
    """``--database "dbname=postgres"`` restores into a database of that very name: the
    plan's exists check and the load see the same database, never ``postgres``."""
    target = "dbname=postgres"
    policy = str(pg_policy(tmp_path, pg, keys, small_db, globals=False))
    try:
        drkit("backup", "--policy", policy, check=True)
        plan = drkit(
            "restore",
            "--policy",
            policy,
            "--database",
            target,
            "--plan",
            "--json",
            *ident(keys),
            check=True,
        )
        (step,) = json.loads(plan.stdout)["steps"]
        assert any(f"database {target} on " in a and "create" in a for a in step["actions"])
        res = drkit(
            "restore",
            "--yes",
            "--policy",
            policy,
            "--database",
            target,
            "--pg-jobs",
            "1",
            *ident(keys),
        )
        assert res.returncode == 0, res.output
        in_postgres = pg.psql("postgres", f"SELECT to_regclass('marker_{uniq}') IS NULL;")
        assert in_postgres.strip() == "t"  # nothing went into the existing postgres database
        assert pg.psql(f"dbname='{target}'", f"SELECT count(*) FROM marker_{uniq};").strip() == "3"
        # The exists/--force check now sees the database it would load into.
        again = drkit("restore", "--yes", "--policy", policy, "--database", target, *ident(keys))
        assert again.returncode == 1
        assert f"database {target}" in again.stderr and "--force" in again.stderr
    finally:
        pg.psql("postgres", f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE);', check=False)
        pg.psql("postgres", f"DROP TABLE IF EXISTS marker_{uniq};", check=False)


def test_the_loader_follows_the_policy_format_not_the_facts(
    pg: PgServer, small_db: str, keys: Keys, tmp_path: Path
) -> None:
    """A plain dump is loaded with psql only when the local policy says plain: a snapshot
    whose facts say another format than the policy is refused, naming both (#16 item 1)."""
    policy = pg_policy(tmp_path, pg, keys, small_db, format="custom")
    drkit("backup", "--policy", str(policy), check=True)
    pg.psql("postgres", f"DROP DATABASE {small_db};")
    plain = pg_policy(tmp_path, pg, keys, small_db, format="plain")
    assert plain == policy  # the same file, rewritten
    plan = drkit("restore", "--policy", str(policy), "--plan", *ident(keys))
    assert plan.returncode == 6, plan.output
    assert (
        'the snapshot holds a custom dump (database.pgdump) and the policy says format = "plain"'
        in plan.stdout
    ), plan.output
    res = drkit("restore", "--policy", str(policy), "--yes", *ident(keys))
    assert res.returncode == 1 and "nothing was restored" in res.stderr, res.output
    exists = pg.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{small_db}';")
    assert exists.strip() == "0"
