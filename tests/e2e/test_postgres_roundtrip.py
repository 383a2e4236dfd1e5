"""Backup -> drop -> restore of a callmeback-like database, through the real CLI."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
import zstandard

from tests.conftest import Keys
from tests.e2e.repos import RepoTarget
from tests.helpers import (
    drkit,
    load_callmeback,
    role_exists,
    table_checksums,
    write_policy,
)
from tests.servers.postgres import PgServer


@pytest.fixture
def callmeback(pg: PgServer) -> Iterator[tuple[str, str, str]]:
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


def full_schema(pg: PgServer, db: str) -> str:
    """``pg_dump --schema-only`` as is (comments and ACLs included), less the per-run
    random ``\\restrict`` key lines."""
    out = pg.tool("pg_dump", "--schema-only", "-d", db)
    return "".join(
        ln for ln in out.splitlines(True) if not ln.startswith(("\\restrict", "\\unrestrict"))
    )


def sequence_values(pg: PgServer, db: str) -> dict[str, str]:
    """Every sequence's last value and is_called (the bigserial ones included)."""
    rows = pg.psql(
        db,
        "SELECT schemaname || '.' || sequencename FROM pg_sequences "
        "WHERE schemaname = 'public' ORDER BY 1;",
    ).split()
    return {
        s: pg.psql(db, f"SELECT last_value || ':' || is_called FROM {s};").strip() for s in rows
    }


def role_row(pg: PgServer, role: str) -> str:
    """The role's attributes and password hash (globals must bring all of it back)."""
    return pg.psql(
        "postgres",
        "SELECT rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolpassword "
        f"FROM pg_authid WHERE rolname = '{role}';",
    ).strip()


def owners(pg: PgServer, db: str) -> set[str]:
    """Owners of every table, view, sequence and function in public."""
    return set(
        pg.psql(
            db,
            "SELECT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN "
            "('r','v','S') UNION SELECT pg_get_userbyid(proowner) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public';",
        ).split()
    )


def stored_facts(repo: RepoTarget, host: str, snapshot: str, identity: str) -> dict[str, Any]:
    """The snapshot's facts, decrypted with plain pyrage + zstd (not drkit's decoder)."""
    raw = repo.read(f"{host}/snapshots/{snapshot}/facts.json.age")
    ident = pyrage.x25519.Identity.from_str(identity)
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(pyrage.decrypt(raw, [ident]))
    return dict(json.loads(plain))


def test_roundtrip_drop_restore(
    pg: PgServer, callmeback: tuple[str, str, str], repo: RepoTarget, keys: Keys, tmp_path: Path
) -> None:
    """Acceptance: a callmeback-like database (JSONB, triggers, functions, sequences, a
    non-superuser role owning everything) -> backup -> drop the database and the role ->
    restore -> identical schema dump, per-table content checksums, sequences and role,
    on a local directory and on S3 (SeaweedFS)."""
    db, role, _password = callmeback
    policy = write_policy(
        tmp_path / "vultr.toml", "vultr", repo.policy, [keys.recipient], [pg_source(pg, db)]
    )
    schema_before = full_schema(pg, db)
    sums_before = table_checksums(pg, db)
    seqs_before = sequence_values(pg, db)
    role_before = role_row(pg, role)
    # The fixture is what the acceptance describes, not an empty shell.
    assert role_before.startswith("f|t|")  # not a superuser, can log in
    assert owners(pg, db) == {role}
    assert sums_before["public.calls"].startswith("3000:")
    assert sums_before["public.call_audit"].startswith("3000:")  # filled by the trigger
    assert "jsonb" in schema_before and "CREATE TRIGGER" in schema_before
    assert "CREATE FUNCTION public.audit_call()" in schema_before
    assert "CREATE SEQUENCE public.call_number_seq" in schema_before
    assert len(seqs_before) == 4

    res = drkit("backup", "--policy", str(policy), "--json", env=repo.env, check=True)
    snap = json.loads(res.stdout)["results"][0]["snapshot"]
    # The snapshot is in the repository under test (S3: the bucket), committed.
    stored = repo.keys(f"vultr/snapshots/{snap}/")
    assert f"vultr/snapshots/{snap}/manifest.json" in stored
    assert f"vultr/snapshots/{snap}/callmeback/globals.sql" in stored
    assert any(k.startswith(f"vultr/snapshots/{snap}/callmeback/database.") for k in stored)
    assert repo.open_uploads() == []
    # The facts hold exact row counts consistent with the dump.
    facts = stored_facts(repo, "vultr", snap, keys.identity_file.read_text().strip())
    counts = {t: str(n) for t, n in facts["callmeback"]["tables"].items()}
    assert counts == {t: v.split(":")[0] for t, v in sums_before.items() if t != "sequence"}

    pg.psql("postgres", f"DROP DATABASE {db};")
    pg.psql("postgres", f"DROP ROLE {role};")
    assert not role_exists(pg, role)
    gone = pg.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{db}';")
    assert gone.strip() == "0"

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

    assert role_row(pg, role) == role_before  # same attributes, same password hash
    assert full_schema(pg, db) == schema_before
    assert table_checksums(pg, db) == sums_before
    assert sequence_values(pg, db) == seqs_before
    assert owners(pg, db) == {role}

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
    pg: PgServer, callmeback: tuple[str, str, str], keys: Keys, tmp_path: Path
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
        drkit(
            "restore",
            "--yes",
            "--policy",
            str(policy),
            "--rename-db",
            "_roles",
            "--identity",
            str(keys.identity_file),
            check=True,
        )
        back = pg.psql("postgres", f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{prefix}%';")
        assert int(back.strip()) == count
    finally:
        pg.psql("postgres", f"DROP DATABASE IF EXISTS {db}_roles WITH (FORCE);", check=False)
        pg.psql("postgres", drop, check=False)
