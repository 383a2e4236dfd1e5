"""The catalog file itself: the rows drkit writes, catalogs written by older
versions (through SQLAlchemy), missing tables, errors and the URLs accepted."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from drkit.catalog.db import Catalog, CatalogError
from drkit.catalog.schema import MEMORY, SCHEMA, database_of
from drkit.errors import UsageError
from tests.catalog.test_catalog import T0, make_manifest

TABLES = ("runs", "snapshots", "artifacts", "drills")
SID = "20261122T032444Z-0a1b2c"
A, B, C = "a" * 64, "b" * 64, "c" * 64

# The rows drkit wrote through SQLAlchemy (until issue #22) for what ``writes`` does,
# as sqlite3's iterdump printed them: a new catalog must leave the very same rows, and
# read an old one.
ORM_WRITTEN: dict[str, list[tuple[Any, ...]]] = {
    "runs": [
        (
            1,
            "web1",
            "file:///r",
            "2026-11-22 03:24:44.000000",
            "2026-11-22 03:26:15.000005",
            "success",
            SID,
            None,
        ),
        (
            2,
            "web1",
            "file:///r",
            "2026-11-22 04:24:44.000000",
            "2026-11-22 04:24:47.000000",
            "failed",
            None,
            "host web1: source db: pg_dump exited 1",
        ),
    ],
    "snapshots": [
        (
            1,
            "file:///r",
            "web1",
            SID,
            "2026-11-22 03:24:44.000000",
            "2026-11-22 03:26:14.000000",
            "complete",
            580,
            1160,
            "0.1.0",
            C,
            "2026-11-22 03:26:44.000000",
        ),
    ],
    "artifacts": [
        (1, 1, "db", "postgres", "globals.sql", "db/globals.sql", "zstd+age/v1", 100, A, 50, B),
        (2, 1, "db", "postgres", "app", "db/app", "zstd+age/v1", 1000, A, 500, B),
    ],
    "drills": [
        (
            1,
            "file:///r",
            "web1",
            "d1",
            SID,
            "2026-11-23 03:24:44.000000",
            "2026-11-23 03:29:44.000000",
            "pass",
            300.0,
            7200.5,
            "web1/drills/d1.json",
        ),
    ],
}


def dump(path: Path) -> dict[str, Any]:
    """Every row of every table and every schema entry, as the database holds them."""
    conn = sqlite3.connect(path)
    try:
        out: dict[str, Any] = {
            "schema": sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        }
        for table in TABLES:
            out[table] = conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
        return out
    finally:
        conn.close()


def writes(cat: Catalog) -> None:
    m = replace(make_manifest("web1", T0), snapshot=SID)
    m = replace(m, sources=m.sources[:1])
    run = cat.start_run("web1", "file:///r", started=T0)
    cat.record_snapshot("file:///r", m, synced=T0 + dt.timedelta(minutes=2))
    finished = T0 + dt.timedelta(seconds=91, microseconds=5)
    cat.finish_run(run, "success", m.snapshot, None, finished=finished)
    bad = cat.start_run("web1", "file:///r", started=T0 + dt.timedelta(hours=1))
    error = "host web1: source db: pg_dump exited 1"
    cat.finish_run(bad, "failed", None, error, finished=T0 + dt.timedelta(hours=1, seconds=3))
    day = T0 + dt.timedelta(days=1)
    key = "web1/drills/d1.json"
    cat.record_drill(
        "file:///r",
        "web1",
        "d1",
        SID,
        day,
        day + dt.timedelta(minutes=5),
        "pass",
        300.0,
        7200.5,
        key,
    )


def test_writes_leave_the_rows_sqlalchemy_wrote(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with Catalog(f"sqlite:///{path}") as cat:
        writes(cat)
    got = dump(path)
    assert {t: got[t] for t in TABLES} == ORM_WRITTEN
    expected = sorted(sql for _table, statements in SCHEMA for sql in statements)
    assert sorted(sql for _type, _name, _table, sql in got["schema"] if sql) == expected


def test_reads_a_catalog_written_by_sqlalchemy(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    Catalog(f"sqlite:///{path}").close()  # the same tables (test above)
    conn = sqlite3.connect(path)
    for table in TABLES:
        for row in ORM_WRITTEN[table]:
            conn.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    conn.commit()
    conn.close()
    with Catalog(f"sqlite:///{path}") as cat:
        last = cat.last_run("web1")
        assert last is not None and (last.id, last.status) == (2, "failed")
        assert last.finished == T0 + dt.timedelta(hours=1, seconds=3)
        ok = cat.last_success("web1")
        assert ok is not None and ok.finished == T0 + dt.timedelta(seconds=91, microseconds=5)
        (snap,) = cat.snapshots("web1", "file:///r")
        assert (snap.snapshot_id, snap.artifact_count, snap.stored_bytes) == (SID, 2, 580)
        assert snap.started == T0 and snap.synced == T0 + dt.timedelta(minutes=2)
        assert snap.started.tzinfo is dt.UTC
        names = [a.name for a in cat.artifacts("file:///r", "web1", SID)]
        assert names == ["globals.sql", "app"]
        drill = cat.last_drill("web1")
        assert drill is not None and (drill.verdict, drill.rpo_seconds) == ("pass", 7200.5)
        assert drill.finished == T0 + dt.timedelta(days=1, minutes=5)
        # Rewriting a snapshot the old version wrote: fields updated, artifacts replaced.
        again = replace(make_manifest("web1", T0), snapshot=SID)
        assert cat.record_snapshot("file:///r", again) is False
        assert cat.snapshots()[0].artifact_count == 3
        assert cat.forget_snapshot("file:///r", "web1", SID)
    assert dump(path)["artifacts"] == []  # gone with their snapshot (ON DELETE CASCADE)


def test_missing_tables_are_added_to_an_existing_catalog(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with Catalog(f"sqlite:///{path}") as cat:
        cat.start_run("web1", "file:///r", started=T0)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE drills")  # as if written by a version before drills
    conn.commit()
    conn.close()
    reference = tmp_path / "ref.sqlite"
    Catalog(f"sqlite:///{reference}").close()
    Catalog(f"sqlite:///{path}").close()
    assert dump(path)["schema"] == dump(reference)["schema"]
    assert len(dump(path)["runs"]) == 1  # existing rows kept


def test_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with Catalog(f"sqlite:///{path}") as cat:
        with pytest.raises(CatalogError, match="no run 42"):
            cat.finish_run(42, "success", None, None)
        with pytest.raises(ValueError, match="invalid status"):
            cat.finish_run(1, "running", None, None)
        bad = replace(make_manifest("web1", T0), started="yesterday")
        with pytest.raises(ValueError, match="started"):
            cat.record_snapshot("file:///r", bad)
        assert cat.snapshots() == []  # nothing written
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CatalogError, match="cannot create"):
        Catalog(f"sqlite:///{blocker / 'sub' / 'c.sqlite'}")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(CatalogError, match=f"catalog sqlite:///{garbage}: cannot open"):
        Catalog(f"sqlite:///{garbage}")


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("sqlite:////var/lib/drkit/catalog.sqlite", "/var/lib/drkit/catalog.sqlite"),
        ("sqlite+pysqlite:///rel/c.db", "rel/c.db"),
        ("sqlite:///caf%C3%A9.db", "café.db"),
        ("sqlite://", MEMORY),
        ("sqlite:///:memory:", MEMORY),
    ],
)
def test_sqlite_urls(url: str, database: str) -> None:
    assert str(database_of(url)) == database


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///file:c.db?mode=ro&uri=true",
        "sqlite:///c.db?timeout=5",
        "postgresql://u:hunter2@h/db",
        "not a url",
    ],
)
def test_other_urls_are_usage_errors_without_their_password(url: str) -> None:
    with pytest.raises(UsageError) as info:
        database_of(url)
    assert "hunter2" not in str(info.value)
