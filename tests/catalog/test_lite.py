"""The sqlite3 writer (backup-time writes) against SQLAlchemy's: same schema, same rows."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from drkit.catalog.db import Catalog, CatalogError
from drkit.catalog.lite import SCHEMA, SqliteRunLog, sqlite_path
from drkit.catalog.models import Base
from drkit.catalog.orm import OrmCatalog
from tests.catalog.test_catalog import T0, make_manifest

TABLES = ("runs", "snapshots", "artifacts", "drills")


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


def test_schema_is_sqlalchemys_ddl() -> None:
    dialect = sqlite_dialect.dialect()
    expected = tuple(
        (
            t.name,
            (
                str(CreateTable(t).compile(dialect=dialect)).strip(),
                *(
                    str(CreateIndex(i).compile(dialect=dialect)).strip()
                    for i in sorted(t.indexes, key=lambda i: str(i.name))
                ),
            ),
        )
        for t in Base.metadata.sorted_tables
    )
    assert expected == SCHEMA


# Made once: snapshot ids carry a random suffix, and both writers must get the same.
M1 = make_manifest("web1", T0)
M2 = make_manifest("web1", T0 + dt.timedelta(hours=1), db_size=5000)


def writes(cat: Catalog | OrmCatalog) -> None:
    """What backups (and a sync) write: runs, a new snapshot, a re-recorded one."""
    m1, m2 = M1, M2
    run = cat.start_run("web1", "file:///r", started=T0)
    assert cat.record_snapshot("file:///r", m1, synced=T0) is True
    cat.finish_run(run, "success", m1.snapshot, None, finished=T0 + dt.timedelta(seconds=91))
    failed = cat.start_run("web1", "file:///r", started=T0 + dt.timedelta(minutes=30))
    cat.finish_run(failed, "failed", None, "host web1: source db: pg_dump exited 1",
                   finished=T0 + dt.timedelta(minutes=31, microseconds=7))  # fmt: skip
    # Re-recording (sync after a change): fields updated, artifacts replaced.
    fewer = replace(m2, sources=m2.sources[:1])
    assert cat.record_snapshot("file:///r", m2, synced=T0) is True
    assert cat.record_snapshot("file:///r", fewer, synced=T0 + dt.timedelta(days=1)) is False
    other_tz = dt.timezone(dt.timedelta(hours=5))
    cat.start_run("db1", "s3://b/x", started=T0.astimezone(other_tz))


def test_lite_and_orm_leave_identical_databases(tmp_path: Path) -> None:
    lite_file, orm_file = tmp_path / "lite.sqlite", tmp_path / "orm.sqlite"
    with Catalog(f"sqlite:///{lite_file}") as lite:
        assert lite._lite is not None and lite._orm_catalog is None
        writes(lite)
        assert lite._orm_catalog is None  # backup-time writes never opened SQLAlchemy
    orm = OrmCatalog(f"sqlite:///{orm_file}")
    try:
        writes(orm)
    finally:
        orm.close()
    assert dump(lite_file) == dump(orm_file)
    assert len(dump(lite_file)["artifacts"]) == 3 + 2  # m1's three, m2's two after the cut


def test_readers_see_what_lite_wrote(tmp_path: Path) -> None:
    with Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}") as cat:
        writes(cat)
        last = cat.last_run("web1")
        assert last is not None and last.status == "failed"
        assert last.finished == T0 + dt.timedelta(minutes=31, microseconds=7)
        assert last.finished.tzinfo is dt.UTC
        ok = cat.last_success("web1")
        assert ok is not None and ok.started == T0
        db1 = cat.last_run("db1")
        assert db1 is not None and db1.started == T0 and db1.status == "running"
        rows = cat.snapshots("web1")
        assert [r.artifact_count for r in rows] == [2, 3]
        assert rows[1].started == T0 and rows[1].synced == T0
        assert [a.name for a in cat.artifacts("file:///r", "web1", rows[1].snapshot_id)] == [
            "globals.sql",
            "app",
            "app.env",
        ]
        # ORM deletes (cascade through the foreign key) still work on lite's rows.
        assert cat.forget_snapshot("file:///r", "web1", rows[1].snapshot_id)
    conn = sqlite3.connect(tmp_path / "c.sqlite")
    assert conn.execute("SELECT count(*) FROM artifacts").fetchone() == (2,)
    conn.close()


def test_lite_adds_missing_tables_to_an_existing_catalog(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    orm = OrmCatalog(f"sqlite:///{path}")
    orm.start_run("web1", "file:///r", started=T0)
    orm.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE drills")  # as if written by a version before drills
    conn.commit()
    conn.close()
    SqliteRunLog(path, f"sqlite:///{path}")
    reference = tmp_path / "ref.sqlite"
    OrmCatalog(f"sqlite:///{reference}").close()
    assert dump(path)["schema"] == dump(reference)["schema"]
    assert len(dump(path)["runs"]) == 1  # existing rows kept


def test_lite_errors(tmp_path: Path) -> None:
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
    ("url", "path"),
    [
        ("sqlite:////var/lib/drkit/catalog.sqlite", "/var/lib/drkit/catalog.sqlite"),
        ("sqlite+pysqlite:///rel/c.db", "rel/c.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("sqlite:///file:c.db?mode=ro&uri=true", None),
        ("sqlite:///c.db?timeout=5", None),
        ("sqlite:///caf%C3%A9.db", None),
        ("postgresql://u:p@h/db", None),
    ],
)
def test_which_urls_take_the_sqlite3_path(url: str, path: str | None) -> None:
    got = sqlite_path(url)
    assert (str(got) if got else None) == path
