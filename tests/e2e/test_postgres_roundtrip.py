"""Backup -> drop -> restore of a callmeback-like database, through the real CLI."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.e2e.repos import RepoTarget
from tests.helpers import (
    drkit,
    load_callmeback,
    role_exists,
    schema_dump,
    table_checksums,
    write_policy,
)
from tests.servers.postgres import PgServer


@pytest.fixture
def callmeback(pg: PgServer) -> tuple[str, str, str]:
    suffix = secrets.token_hex(3)
    db, role, password = f"callmeback_{suffix}", f"cmb_app_{suffix}", secrets.token_hex(12)
    load_callmeback(pg, db, role, password)
    yield db, role, password
    pg.psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE);", check=False)
    pg.psql("postgres", f"DROP ROLE IF EXISTS {role};", check=False)


def pg_source(pg: PgServer, db: str) -> dict[str, object]:
    return {
        "kind": "postgres",
        "name": "callmeback",
        "database": db,
        "host": "127.0.0.1",
        "port": pg.port,
        "user": "postgres",
    }


def test_roundtrip_drop_restore(
    pg: PgServer, callmeback, repo: RepoTarget, keys, tmp_path: Path
) -> None:
    """Database and its owning role dropped, then restored from either repository kind."""
    db, role, _password = callmeback
    policy = write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [pg_source(pg, db)],
    )
    schema_before = schema_dump(pg, db)
    sums_before = table_checksums(pg, db)

    res = drkit("backup", "--policy", str(policy), "--json", env=repo.env, check=True)
    snap = json.loads(res.stdout)["results"][0]["snapshot"]

    # The facts hold the per-table row counts, consistent with the dump.
    pg.psql("postgres", f"DROP DATABASE {db};")
    pg.psql("postgres", f"DROP ROLE {role};")
    assert not role_exists(pg, role)

    drkit(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        env=repo.env,
        check=True,
    )

    assert role_exists(pg, role)
    assert schema_dump(pg, db) == schema_before
    assert table_checksums(pg, db) == sums_before
    # The restored role keeps its password (globals carry the hash).
    pwd_ok = pg.psql(
        "postgres", f"SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname='{role}';"
    )
    assert pwd_ok.strip() == "t"

    verify = drkit(
        "verify",
        "--policy",
        str(policy),
        "--snapshot",
        snap,
        "--identity",
        str(keys.identity_file),
        "--json",
        env=repo.env,
        check=True,
    )
    assert json.loads(verify.stdout)["results"][0]["ok"] is True


def test_globals_larger_than_one_block_restore_every_role(
    pg: PgServer, callmeback, keys, tmp_path: Path
) -> None:
    """Roles SQL of several pipeline blocks (~360 KB): every role comes back, the last
    one included (a single read of a pipe returns one block, not the whole artifact)."""
    db, _role, _password = callmeback
    prefix = f"r{secrets.token_hex(3)}_" + "x" * 48  # long names: ~240 bytes of SQL each
    count = 1500
    make = (
        f"DO $$ BEGIN FOR i IN 1..{count} LOOP "
        f"EXECUTE format('CREATE ROLE %I', '{prefix}' || i); END LOOP; END $$;"
    )
    drop = (
        f"DO $$ BEGIN FOR i IN 1..{count} LOOP "
        f"EXECUTE format('DROP ROLE IF EXISTS %I', '{prefix}' || i); END LOOP; END $$;"
    )
    pg.psql("postgres", make)
    try:
        policy = write_policy(
            tmp_path / "vultr.toml",
            "vultr",
            {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient],
            [pg_source(pg, db)],
        )
        drkit("backup", "--policy", str(policy), check=True)
        pg.psql("postgres", drop)
        drkit("restore", "--yes", "--policy", str(policy), "--rename-db", "_roles",
              "--identity", str(keys.identity_file), check=True)  # fmt: skip
        back = pg.psql("postgres", f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{prefix}%';")
        assert int(back.strip()) == count
    finally:
        pg.psql("postgres", f"DROP DATABASE IF EXISTS {db}_roles WITH (FORCE);", check=False)
        pg.psql("postgres", drop, check=False)
