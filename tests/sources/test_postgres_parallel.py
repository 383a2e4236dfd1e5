"""Parallel PostgreSQL restore: pg_restore -j from a spool on the target.

A restore into a database that does not exist yet spools the decoded dump to
a private directory on the target and loads it into a staging database that
is renamed when complete. These tests check the data comes back equal, that
the spool never outlives the restore (success or failure), that a failure
leaves neither a staging nor a half-restored database, and that too little
room falls back to the streaming restore.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from drkit.errors import DrkitError, IntegrityError
from drkit.policy.models import PostgresConfig
from drkit.remote.local import LocalRunner
from drkit.sources import pgparallel as pgmod
from drkit.sources.base import RestoreOptions
from drkit.sources.pgsql import (
    PgConn,
    SpoolDir,
    parse_spool_setup,
    spool_budget,
    spool_remove_argv,
    spool_setup_argv,
    staging_name,
)
from drkit.sources.postgres import PostgresSource
from tests.helpers import drkit, load_callmeback, schema_dump, table_checksums, write_policy
from tests.servers.postgres import PG_BIN, PgServer


@pytest.fixture
def spool_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR of the target's commands (the local runner passes our environment on)."""
    root = tmp_path / "spool-root"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    return root


@pytest.fixture
def callmeback(pg: PgServer, uniq: str) -> Iterator[str]:
    db, role = f"cmb_par_{uniq}", f"cmb_par_{uniq}"
    load_callmeback(pg, db, role, "pw-" + uniq)
    yield db
    for name in (db, staging_name(db), f"{db}_copy"):
        pg.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);', check=False)
    pg.psql("postgres", f"DROP ROLE IF EXISTS {role};", check=False)


def _databases(pg: PgServer, like: str) -> list[str]:
    out = pg.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{like}%';")
    return sorted(out.split())


def test_cli_roundtrip_parallel_equal_and_spool_removed(
    pg: PgServer, callmeback: str, keys: Any, tmp_path: Path, spool_root: Path
) -> None:
    db = callmeback
    policy = write_policy(
        tmp_path / "h.toml",
        "par-host",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [
            {
                "kind": "postgres",
                "name": "cmb",
                "database": db,
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
                "globals": False,
            }
        ],
    )
    schema_before, sums_before = schema_dump(pg, db), table_checksums(pg, db)
    drkit("backup", "--policy", str(policy), "-q", check=True)
    pg.psql("postgres", f"DROP DATABASE {db};")

    res = drkit(
        "restore",
        "--yes",
        "--json",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        check=True,
    )
    out = json.loads(res.stdout)
    steps = "\n".join(out["results"][0]["steps"] if "results" in out else out["steps"])
    assert "pg_restore -j" in steps, steps
    assert str(spool_root) in steps  # the spool was made where TMPDIR says ...
    assert list(spool_root.iterdir()) == []  # ... and is gone
    assert schema_dump(pg, db) == schema_before
    assert table_checksums(pg, db) == sums_before
    assert _databases(pg, staging_name(db)) == []
    assert "row counts" in res.stdout and '"verdict": "pass"' in res.stdout


# ---- the source API directly: a plain custom dump file as the decoded artifact ----


def _dump(pg: PgServer, db: str, path: Path) -> None:
    """pg_dump -Fc -Z0 through a pipe, as drkit stores it (no data offsets)."""
    dump = subprocess.Popen(
        [
            str(PG_BIN / "pg_dump"),
            "-h",
            pg.host,
            "-p",
            str(pg.port),
            "-U",
            pg.user,
            "-Fc",
            "-Z0",
            "-d",
            db,
        ],
        stdout=subprocess.PIPE,
    )
    assert dump.stdout is not None
    with path.open("wb") as f:
        while chunk := dump.stdout.read(1 << 16):
            f.write(chunk)
    assert dump.wait() == 0


def _source(pg: PgServer, db: str) -> PostgresSource:
    config = PostgresConfig(
        kind="postgres", name="cmb", database=db, host="127.0.0.1", port=pg.port, user="postgres"
    )
    return PostgresSource("cmb", config, LocalRunner("par-host"))


def _facts(pg: PgServer, db: str) -> dict[str, Any]:
    size = int(pg.psql("postgres", f"SELECT pg_database_size('{db}');"))
    return {"format": "custom", "globals": False, "database_size": size}


class _Failing:
    """A stream that raises IntegrityError after ``after`` bytes (a tampered artifact)."""

    def __init__(self, raw: BinaryIO, after: int) -> None:
        self._raw, self._left = raw, after

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            raise IntegrityError("artifact cmb/database.pgdump: authentication failed")
        data = self._raw.read(min(n, self._left) if n and n > 0 else self._left)
        self._left -= len(data)
        return data


def _feed(path: Path, wrap: Callable[[BinaryIO], Any] = lambda f: f) -> Any:
    def feed(name: str, consume: Callable[[BinaryIO], object]) -> None:
        assert name == "database.pgdump"
        with path.open("rb") as f:
            consume(wrap(f))

    return feed


def test_api_restore_copy_equal(
    pg: PgServer, callmeback: str, tmp_path: Path, spool_root: Path
) -> None:
    db, copy = callmeback, f"{callmeback}_copy"
    _dump(pg, db, tmp_path / "d.pgdump")
    report = _source(pg, db).restore(
        _feed(tmp_path / "d.pgdump"), _facts(pg, db), RestoreOptions(database=copy)
    )
    assert any("pg_restore -j" in a for a in report.actions), report.actions
    assert schema_dump(pg, copy) == schema_dump(pg, db)
    assert table_checksums(pg, copy) == table_checksums(pg, db)
    assert list(spool_root.iterdir()) == []


@pytest.mark.parametrize("how", ["truncated dump", "integrity error mid-stream"])
def test_api_failure_removes_spool_and_staging(
    pg: PgServer, callmeback: str, tmp_path: Path, spool_root: Path, how: str
) -> None:
    db, copy = callmeback, f"{callmeback}_copy"
    full = tmp_path / "d.pgdump"
    _dump(pg, db, full)
    size = full.stat().st_size
    if how == "truncated dump":
        cut = tmp_path / "cut.pgdump"
        cut.write_bytes(full.read_bytes()[: size - size // 3])
        feed = _feed(cut)
    else:
        feed = _feed(full, lambda f: _Failing(f, size // 2))
    with pytest.raises(DrkitError) as err:
        _source(pg, db).restore(feed, _facts(pg, db), RestoreOptions(database=copy))
    text = str(err.value)
    if how == "truncated dump":  # pg_restore's failure, named with host, source, database
        assert "host par-host" in text and "source cmb" in text and copy in text, text
    assert list(spool_root.iterdir()) == []
    assert _databases(pg, copy) == []  # neither the database nor its staging twin


def test_api_no_room_falls_back_to_streaming(
    pg: PgServer,
    callmeback: str,
    tmp_path: Path,
    spool_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pgmod, "spool_budget", lambda spool, need: None)
    db, copy = callmeback, f"{callmeback}_copy"
    _dump(pg, db, tmp_path / "d.pgdump")
    report = _source(pg, db).restore(
        _feed(tmp_path / "d.pgdump"), _facts(pg, db), RestoreOptions(database=copy)
    )
    notes = [a for a in report.actions if a.startswith("note:")]
    assert notes and "streamed into one pg_restore" in notes[0], report.actions
    assert not any("pg_restore -j" in a for a in report.actions)
    assert table_checksums(pg, copy) == table_checksums(pg, db)
    assert list(spool_root.iterdir()) == []
    assert _databases(pg, staging_name(db)) == []


@pytest.mark.parametrize("keep", ["toc only", "part of the toc"])
def test_api_spool_cut_short(
    pg: PgServer,
    callmeback: str,
    tmp_path: Path,
    spool_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    keep: str,
) -> None:
    """The spool keeps only the dump's head: enough for the TOC (-j from it), or too
    little (post-data from a second pass over the stream); the data is equal either way."""
    db, copy = callmeback, f"{callmeback}_copy"
    dump = tmp_path / "d.pgdump"
    _dump(pg, db, dump)
    size = dump.stat().st_size
    monkeypatch.setattr(pgmod, "TOC_SPOOL_MAX", size - 100 if keep == "toc only" else 200)
    report = _source(pg, db).restore(_feed(dump), _facts(pg, db), RestoreOptions(database=copy))
    text = "\n".join(report.actions)
    if keep == "toc only":
        assert "pg_restore -j" in text and "note:" not in text, text
    else:
        assert "TOC exceeds" in text and "pg_restore -j" not in text, text
    assert schema_dump(pg, copy) == schema_dump(pg, db)
    assert table_checksums(pg, copy) == table_checksums(pg, db)
    assert list(spool_root.iterdir()) == []
    assert _databases(pg, staging_name(db)) == []


def test_spool_dir_is_private_and_removed(spool_root: Path) -> None:
    runner, conn = LocalRunner(), PgConn(None, 5432, None, None)
    res = runner.run(spool_setup_argv(conn))
    assert res.returncode == 0, res.stderr
    spool = parse_spool_setup(res.stdout.decode())
    path = Path(spool.path)
    assert path.parent == spool_root
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert path.stat().st_uid == os.getuid()
    assert spool.cpus >= 1 and 0 < spool.free_bytes <= spool.total_bytes
    assert runner.run(spool_remove_argv(conn, spool)).returncode == 0
    assert not path.exists()


def test_budget_keeps_a_reserve_and_staging_names_fit() -> None:
    gib = 1 << 30
    spool = SpoolDir("/var/tmp/drkit-pgrestore.x", total_bytes=20 * gib, free_bytes=5 * gib, cpus=2)
    assert spool_budget(spool, 2 * gib) == 3 * gib  # 10% of the disk stays free
    assert spool_budget(spool, 4 * gib) is None
    assert staging_name("app") == "app_drkit_restoring"
    long = "x" * 60
    assert len(staging_name(long).encode()) <= 63 and staging_name(long) != staging_name(long + "y")
    with pytest.raises(ValueError, match="unexpected spool directory '/etc'"):
        parse_spool_setup("/etc\n1 1\n1\n")
