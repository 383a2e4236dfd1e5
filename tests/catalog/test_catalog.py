"""The catalog: runs, snapshots and drills in SQLite, and sync from a local repository."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from drkit.catalog.db import Catalog, CatalogError
from drkit.catalog.sync import sync
from drkit.repository.layout import Repository, manifest_key
from drkit.repository.local import LocalStore
from drkit.repository.manifest import (
    SIGNED_KIND,
    ArtifactRecord,
    Manifest,
    SourceRecord,
    dump_document,
    new_snapshot_id,
)
from tests.helpers import trust_for

T0 = dt.datetime(2026, 11, 22, 3, 24, 44, tzinfo=dt.UTC)
# Built at run time: only its shape matters (a key-like string must not be copied).
SECRET_LOOKING = "AGE-SECRET-KEY-" + "1NOTREALLYBUTMUSTNOTBECOPIED"


def artifact(source: str, name: str, size: int) -> ArtifactRecord:
    return ArtifactRecord(
        source=source,
        name=name,
        key=f"{source}/{name}",
        format="zstd+age/v1",
        plain_size=size,
        plain_sha256="a" * 64,
        stored_size=size // 2,
        stored_sha256="b" * 64,
    )


def make_manifest(host: str, started: dt.datetime, *, db_size: int = 1000) -> Manifest:
    return Manifest(
        host=host,
        snapshot=new_snapshot_id(started),
        started=started.isoformat(timespec="seconds"),
        finished=(started + dt.timedelta(seconds=90)).isoformat(timespec="seconds"),
        drkit_version="0.1.0",
        policy_sha256="c" * 64,
        recipients=["age1publicrecipientexample"],
        sources=[
            SourceRecord(
                "db",
                "postgres",
                [artifact("db", "globals.sql", 100), artifact("db", "app", db_size)],
                3.5,
            ),
            SourceRecord("env", "env", [artifact("env", "app.env", 40)], 0.1),
        ],
        facts=ArtifactRecord(
            "facts.json.age",
            "facts.json.age",
            "facts.json.age",
            "zstd+age/v1",
            60,
            "d" * 64,
            30,
            "e" * 64,
        ),
        extra={"note": SECRET_LOOKING},
    )


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    r = Repository(LocalStore(tmp_path / "repo"), trust_for())
    r.init()
    return r


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    yield cat
    cat.close()


def commit(repo: Repository, manifest: Manifest) -> Manifest:
    """A committed snapshot: its artifact objects, then the manifest (the commit)."""
    for a in manifest.artifacts:
        repo.store.put_bytes(f"{manifest.host}/snapshots/{manifest.snapshot}/{a.key}", b"x")
    repo.write_manifest(manifest)
    return manifest


def uncommitted(repo: Repository, host: str, started: dt.datetime) -> str:
    """A snapshot directory left by a failed run: data, no manifest."""
    sid = new_snapshot_id(started)
    repo.store.put_bytes(f"{host}/snapshots/{sid}/db/app", b"partial")
    return sid


def ids(catalog: Catalog, **kw: str) -> list[tuple[str, str]]:
    return [(r.host, r.snapshot_id) for r in catalog.snapshots(**kw)]


def test_sync_catalogues_exactly_the_committed_snapshots(
    repo: Repository, catalog: Catalog
) -> None:
    m1 = commit(repo, make_manifest("vultr", T0))
    m2 = commit(repo, make_manifest("vultr", T0 + dt.timedelta(hours=1)))
    m3 = commit(repo, make_manifest("hetzner", T0 + dt.timedelta(minutes=30)))
    partial = uncommitted(repo, "vultr", T0 + dt.timedelta(hours=2))
    assert [r.snapshot for r in repo.snapshots("vultr")][-1] == partial

    res = sync(catalog, repo)

    assert (res.added, res.removed, res.problems) == (3, 0, [])
    assert res.hosts == ["hetzner", "vultr"]
    # newest first, across hosts
    assert ids(catalog) == [
        ("vultr", m2.snapshot),
        ("hetzner", m3.snapshot),
        ("vultr", m1.snapshot),
    ]
    assert ids(catalog, host="vultr") == [("vultr", m2.snapshot), ("vultr", m1.snapshot)]
    assert ids(catalog, repository_url="file:///elsewhere") == []

    row = catalog.snapshots(host="hetzner")[0]
    assert row.repository_url == repo.url
    assert row.artifact_count == 3
    assert row.stored_bytes == m3.stored_bytes == 50 + 500 + 20 + 30
    assert row.plain_bytes == 100 + 1000 + 40 + 60
    assert (row.status, row.drkit_version, row.policy_sha256) == ("complete", "0.1.0", "c" * 64)
    assert row.started == T0 + dt.timedelta(minutes=30)
    assert row.finished == row.started + dt.timedelta(seconds=90)

    arts = catalog.artifacts(repo.url, "hetzner", m3.snapshot)
    assert [(a.source, a.kind, a.name, a.key) for a in arts] == [
        ("db", "postgres", "globals.sql", "db/globals.sql"),
        ("db", "postgres", "app", "db/app"),
        ("env", "env", "app.env", "env/app.env"),
    ]
    assert arts[1].plain_size == 1000 and arts[1].stored_sha256 == "b" * 64


def test_resync_is_idempotent(repo: Repository, catalog: Catalog) -> None:
    commit(repo, make_manifest("vultr", T0))
    commit(repo, make_manifest("vultr", T0 + dt.timedelta(hours=1)))
    uncommitted(repo, "vultr", T0 + dt.timedelta(hours=2))
    assert sync(catalog, repo).added == 2
    first = [(r.host, r.snapshot_id, r.artifact_count, r.stored_bytes) for r in catalog.snapshots()]

    again = sync(catalog, repo)

    assert (again.added, again.removed, again.problems) == (0, 0, [])
    assert [
        (r.host, r.snapshot_id, r.artifact_count, r.stored_bytes) for r in catalog.snapshots()
    ] == first
    assert len(catalog.artifacts(repo.url, "vultr", first[0][1])) == 3  # replaced, not duplicated


def test_deleted_snapshot_is_removed_by_sync(repo: Repository, catalog: Catalog) -> None:
    old = commit(repo, make_manifest("vultr", T0))
    new = commit(repo, make_manifest("vultr", T0 + dt.timedelta(hours=1)))
    gone_host = commit(repo, make_manifest("hetzner", T0))
    sync(catalog, repo)

    repo.delete_snapshot("vultr", old.snapshot)
    repo.delete_snapshot("hetzner", gone_host.snapshot)  # the host disappears entirely
    res = sync(catalog, repo)

    assert (res.added, res.removed) == (0, 2)
    assert ids(catalog) == [("vultr", new.snapshot)]
    assert catalog.artifacts(repo.url, "vultr", old.snapshot) == []


def test_uncommitting_a_snapshot_removes_it(repo: Repository, catalog: Catalog) -> None:
    """Manifest deleted first (as delete_snapshot and prune do), data still there."""
    m = commit(repo, make_manifest("vultr", T0))
    sync(catalog, repo)
    repo.store.delete(manifest_key("vultr", m.snapshot))
    assert sync(catalog, repo, hosts=["vultr"]).removed == 1
    assert ids(catalog) == []


def test_broken_manifest_is_reported_and_others_still_synced(
    repo: Repository, catalog: Catalog
) -> None:
    good = commit(repo, make_manifest("vultr", T0))
    bad = make_manifest("vultr", T0 + dt.timedelta(hours=1))
    repo.store.put_bytes(manifest_key("vultr", bad.snapshot), b"{not json")
    later = commit(repo, make_manifest("vultr", T0 + dt.timedelta(hours=2)))
    bad_time = make_manifest("hetzner", T0)
    commit(
        repo,
        replace(bad_time, started="yesterday-ish"),
    )

    res = sync(catalog, repo)

    assert res.added == 2
    assert len(res.problems) == 2
    assert manifest_key("vultr", bad.snapshot) in res.problems[1]
    assert "unreadable manifest" in res.problems[1]
    assert manifest_key("hetzner", bad_time.snapshot) in res.problems[0]
    assert "started" in res.problems[0]
    assert ids(catalog) == [("vultr", later.snapshot), ("vultr", good.snapshot)]


def test_broken_manifest_drops_its_row(repo: Repository, catalog: Catalog) -> None:
    """An unreadable manifest can no longer be trusted: the catalog never holds what a
    restore would refuse (it is reported, and comes back once the manifest is good)."""
    m = commit(repo, make_manifest("vultr", T0))
    sync(catalog, repo)
    good = repo.store.get_bytes(manifest_key("vultr", m.snapshot))
    repo.store.put_bytes(manifest_key("vultr", m.snapshot), b"garbage")
    res = sync(catalog, repo)
    assert (res.added, res.removed, len(res.problems)) == (0, 1, 1)
    assert ids(catalog) == []
    repo.store.put_bytes(manifest_key("vultr", m.snapshot), good)
    assert sync(catalog, repo).added == 1


def test_manifest_stored_under_the_wrong_host_is_reported(
    repo: Repository, catalog: Catalog
) -> None:
    """Signed by a trusted key, but for another host: refused."""
    m = make_manifest("vultr", T0)
    key = repo.trust.signing_key
    assert key is not None
    signed = dump_document(key.sign(SIGNED_KIND, m.document()))
    repo.store.put_bytes(manifest_key("hetzner", m.snapshot), signed)
    res = sync(catalog, repo)
    assert res.added == 0
    assert len(res.problems) == 1 and "not where it is stored" in res.problems[0]
    assert ids(catalog) == []


def test_sync_of_some_hosts_leaves_the_others_alone(
    tmp_path: Path, repo: Repository, catalog: Catalog
) -> None:
    v = commit(repo, make_manifest("vultr", T0))
    h = commit(repo, make_manifest("hetzner", T0))
    other = Repository(LocalStore(tmp_path / "other-repo"), trust_for())
    o = commit(other, make_manifest("vultr", T0 + dt.timedelta(hours=3)))
    sync(catalog, repo)
    sync(catalog, other)
    repo.delete_snapshot("hetzner", h.snapshot)

    res = sync(catalog, repo, hosts=["vultr"])

    assert (res.added, res.removed, res.hosts) == (0, 0, ["vultr"])
    assert set(ids(catalog, repository_url=repo.url)) == {
        ("vultr", v.snapshot),
        ("hetzner", h.snapshot),
    }
    assert ids(catalog, repository_url=other.url) == [("vultr", o.snapshot)]
    # A full sync of the first repository drops hetzner but not the other repository's rows.
    assert sync(catalog, repo).removed == 1
    assert ids(catalog, host="vultr") == [("vultr", o.snapshot), ("vultr", v.snapshot)]


def test_record_snapshot_upserts_and_replaces_artifacts(catalog: Catalog) -> None:
    m = make_manifest("vultr", T0)
    assert catalog.record_snapshot("file:///r", m) is True
    smaller = replace(m, sources=m.sources[:1], status="partial")
    assert catalog.record_snapshot("file:///r", smaller) is False
    (row,) = catalog.snapshots()
    assert (row.artifact_count, row.status) == (2, "partial")
    assert row.stored_bytes == 50 + 500 + 30
    assert catalog.forget_snapshot("file:///r", "vultr", m.snapshot) is True
    assert catalog.forget_snapshot("file:///r", "vultr", m.snapshot) is False
    assert catalog.snapshots() == []


def test_runs_record_finish_and_last_success(catalog: Catalog) -> None:
    assert catalog.last_run("vultr") is None
    assert catalog.last_success("vultr") is None

    ok = catalog.start_run("vultr", "file:///r", started=T0)
    catalog.finish_run(ok, "success", "20261122T032444Z-abcdef", None)
    bad = catalog.start_run("vultr", "file:///r", started=T0 + dt.timedelta(hours=1))
    catalog.finish_run(bad, "failed", None, "host vultr: source db: pg_dump exited 1")
    running = catalog.start_run("hetzner", "file:///r")

    last = catalog.last_run("vultr")
    assert last is not None
    assert (last.id, last.status, last.snapshot_id) == (bad, "failed", None)
    assert last.error == "host vultr: source db: pg_dump exited 1"
    success = catalog.last_success("vultr")
    assert success is not None
    assert (success.id, success.snapshot_id, success.error) == (
        ok,
        "20261122T032444Z-abcdef",
        None,
    )
    assert success.started == T0
    assert success.finished is not None and success.finished >= T0
    h = catalog.last_run("hetzner")
    assert h is not None and (h.id, h.status, h.finished) == (running, "running", None)
    assert catalog.last_success("hetzner") is None

    with pytest.raises(ValueError, match="finish_run: invalid status 'running'"):
        catalog.finish_run(running, "running", None, None)
    with pytest.raises(ValueError, match="finish_run: invalid status 'bogus'"):
        catalog.finish_run(running, "bogus", None, None)  # type: ignore[arg-type]
    with pytest.raises(CatalogError):
        catalog.finish_run(9999, "success", None, None)


def test_datetimes_come_back_aware_utc(catalog: Catalog) -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    local = dt.datetime(2026, 11, 22, 5, 24, 44, tzinfo=plus2)  # == T0
    run = catalog.start_run("vultr", "file:///r", started=local)
    catalog.finish_run(run, "partial", None, "some sources failed", finished=local)
    m = make_manifest("vultr", T0)
    catalog.record_snapshot("file:///r", replace(m, started=local.isoformat()), synced=local)
    catalog.record_drill("file:///r", "vultr", "d1", m.snapshot, local, None, "pass", 42.5, 3600.0)

    r = catalog.last_run("vultr")
    (s,) = catalog.snapshots()
    d = catalog.last_drill("vultr")
    assert r is not None and d is not None
    values = [r.started, r.finished, s.started, s.finished, s.synced, d.started]
    for value in values:
        assert value is not None
        assert value.tzinfo is dt.UTC
    assert r.started == r.finished == s.started == s.synced == d.started == T0
    assert d.finished is None

    with pytest.raises(ValueError, match="naive"):
        catalog.start_run("vultr", "file:///r", started=dt.datetime(2026, 1, 1))


def test_naive_manifest_times_are_read_as_utc(catalog: Catalog) -> None:
    m = make_manifest("vultr", T0)
    naive = replace(m, started="2026-11-22T03:24:44")
    catalog.record_snapshot("file:///r", naive)
    assert catalog.snapshots()[0].started == T0


def test_drills(catalog: Catalog) -> None:
    assert catalog.last_drill("vultr") is None
    catalog.record_drill("file:///r", "vultr", "d1", "s1", T0, T0, "fail", None, 10.0, "k1")
    catalog.record_drill("file:///r", "vultr", "d2", "s2", T0 + dt.timedelta(days=7), None, "warn")
    catalog.record_drill(  # same drill recorded again: updated, not duplicated
        "file:///r",
        "vultr",
        "d2",
        "s2",
        T0 + dt.timedelta(days=7),
        T0 + dt.timedelta(days=7, minutes=5),
        "pass",
        rto_seconds=300.0,
        rpo_seconds=7200.0,
        report_key="vultr/drills/d2.json",
    )
    d = catalog.last_drill("vultr")
    assert d is not None
    assert (d.drill_id, d.verdict, d.rto_seconds, d.rpo_seconds, d.report_key) == (
        "d2",
        "pass",
        300.0,
        7200.0,
        "vultr/drills/d2.json",
    )
    with pytest.raises(ValueError, match="record_drill: invalid verdict 'ok'"):
        catalog.record_drill("file:///r", "vultr", "d3", "s", T0, None, "ok")  # type: ignore[arg-type]


def test_sqlite_file_in_a_nested_missing_directory(tmp_path: Path, repo: Repository) -> None:
    path = tmp_path / "does" / "not" / "exist" / "catalog.sqlite"
    m = commit(repo, make_manifest("vultr", T0))
    with Catalog(f"sqlite:///{path}") as cat:
        assert sync(cat, repo).added == 1
        run = cat.start_run("vultr", repo.url)
        cat.finish_run(run, "success", m.snapshot, None)
    assert path.is_file()

    with Catalog(f"sqlite:///{path}") as reopened:  # persisted; tables not recreated
        assert ids(reopened) == [("vultr", m.snapshot)]
        last = reopened.last_success("vultr")
        assert last is not None and last.snapshot_id == m.snapshot


def test_default_catalog_url_creates_its_directory(drkit_home: Path) -> None:
    from drkit.paths import default_catalog_url

    with Catalog(default_catalog_url()) as cat:
        cat.start_run("vultr", "file:///r")
    assert (drkit_home / "state" / "catalog.sqlite").is_file()


def test_in_memory_catalog(repo: Repository) -> None:
    commit(repo, make_manifest("vultr", T0))
    with Catalog("sqlite://") as cat:
        assert sync(cat, repo).added == 1
        assert len(cat.snapshots()) == 1


def test_catalog_copies_only_manifest_index_fields(tmp_path: Path, repo: Repository) -> None:
    """Neither ``extra`` nor recipients are copied: only listing/pruning fields."""
    path = tmp_path / "cat.sqlite"
    commit(repo, make_manifest("vultr", T0))
    with Catalog(f"sqlite:///{path}") as cat:
        sync(cat, repo)
    con = sqlite3.connect(path)
    try:
        dump = "\n".join(con.iterdump())
    finally:
        con.close()
    assert SECRET_LOOKING not in dump
    assert "age1publicrecipientexample" not in dump


def test_foreign_keys_cascade_in_sqlite(tmp_path: Path) -> None:
    """Deleting a snapshot row outside the ORM still drops its artifacts."""
    path = tmp_path / "cat.sqlite"
    with Catalog(f"sqlite:///{path}") as cat:
        m = make_manifest("vultr", T0)
        cat.record_snapshot("file:///r", m)
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("DELETE FROM snapshots")
        con.commit()
        assert con.execute("SELECT count(*) FROM artifacts").fetchone() == (0,)
    finally:
        con.close()


def test_bad_url_is_a_usage_error() -> None:
    from drkit.errors import UsageError

    with pytest.raises(UsageError):
        Catalog("not a url")
    with pytest.raises(UsageError) as info:
        Catalog("nosuchdb://user:hunter2@host/db")
    assert "hunter2" not in str(info.value)
