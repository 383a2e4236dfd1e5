"""The catalog: runs, snapshots, artifacts and drills, indexed in a SQLite database.

It is a cache of the repositories: ``sync`` (in ``sync.py``) rebuilds the
snapshot rows from a repository alone. Everything goes through the stdlib
``sqlite3`` module (a backup records its run at its end, and SQLAlchemy cost
~21 MiB of RSS for that; docs/design-notes.md). Queries return frozen
dataclasses (``rows.py``) and every datetime returned is aware UTC.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

# Re-exported: callers import the rows, the error and manifest_time from here.
from drkit.catalog.rows import (
    DRILL_VERDICTS,
    SQLITE_BUSY_SECONDS,
    ArtifactRow,
    CatalogError,
    DrillRow,
    DrillVerdict,
    RunRow,
    RunStatus,
    SnapshotRow,
    check_run_status,
    manifest_time,
    now,
)
from drkit.catalog.schema import MEMORY, database_of, db_time, ensure_schema, from_db_time
from drkit.paths import private_file

if TYPE_CHECKING:
    from drkit.repository.manifest import Manifest

T = TypeVar("T")

__all__ = [
    "ArtifactRow",
    "Catalog",
    "CatalogError",
    "DrillRow",
    "RunRow",
    "RunStatus",
    "SnapshotRow",
    "manifest_time",
]

_RUN = "id, host, repository_url, started, finished, status, snapshot_id, error"
_SNAPSHOT_FIELDS = (
    "started, finished, status, stored_bytes, plain_bytes, drkit_version, policy_sha256, synced"
)
_DRILL = (
    "repository_url, host, drill_id, snapshot_id, started, finished, verdict, "
    "rto_seconds, rpo_seconds, report_key"
)


class Catalog:
    """Runs, snapshots, artifacts and drills in one SQLite database.

    ``url`` is ``sqlite:///PATH`` (the parent directory and the file are created,
    owner-only, if missing) or ``sqlite://`` for an in-memory catalog; missing
    tables are created. Each call is one transaction on a connection of its own
    (the in-memory one is shared, under a lock), so an instance may be used from
    any thread. Raises UsageError for any other URL, CatalogError (naming the URL)
    when the database cannot be created, opened or written.
    """

    def __init__(self, url: str) -> None:
        database = database_of(url)
        self.url = url
        self._path = database if isinstance(database, Path) else None
        self._shared: sqlite3.Connection | None = None
        self._shared_lock = threading.Lock()
        if self._path is not None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CatalogError(
                    f"catalog {url}: cannot create {self._path.parent}: {exc.strerror}"
                ) from None
            try:
                private_file(self._path)  # run errors name hosts and failures: owner only
            except OSError as exc:
                raise CatalogError(
                    f"catalog {url}: cannot create {self._path}: {exc.strerror}"
                ) from None
        else:
            self._shared = self._open(MEMORY)
        try:
            with self._connect() as conn:
                ensure_schema(conn)
        except sqlite3.Error as exc:
            self.close()
            raise CatalogError(f"catalog {url}: cannot open: {exc}") from None

    @staticmethod
    def _open(database: Path | str) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves. BEGIN IMMEDIATE takes
        # the write lock up front, so two writers queue (busy timeout) instead
        # of one failing to upgrade a read lock.
        conn = sqlite3.connect(
            database, timeout=SQLITE_BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self._shared is not None:
            with self._shared_lock:
                yield self._shared
            return
        assert self._path is not None
        with closing(self._open(self._path)) as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise CatalogError(f"catalog {self.url}: {exc}") from None

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._connect() as conn:
                return conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise CatalogError(f"catalog {self.url}: {exc}") from None

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------

    def start_run(
        self, host: str, repository_url: str, *, started: dt.datetime | None = None
    ) -> int:
        """Record a backup run that has just started; returns its id for ``finish_run``."""
        when = db_time(started or now())
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO runs (host, repository_url, started, finished, status, "
                "snapshot_id, error) VALUES (?, ?, ?, NULL, 'running', NULL, NULL)",
                (host, repository_url, when),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        snapshot_id: str | None,
        error: str | None,
        *,
        finished: dt.datetime | None = None,
    ) -> None:
        """Close a run. ``error`` must already be free of secrets (drkit errors are).

        Raises ValueError for a status that cannot close a run, CatalogError for
        an unknown ``run_id``."""
        check_run_status(status)
        when = db_time(finished or now())
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, snapshot_id = ?, error = ?, finished = ? WHERE id = ?",
                (status, snapshot_id, error, when, run_id),
            )
            if cur.rowcount == 0:
                raise CatalogError(f"catalog {self.url}: no run {run_id}")

    def last_run(self, host: str) -> RunRow | None:
        """The most recently started run of ``host``, whatever its status."""
        return self._one_run("host = ?", (host,))

    def last_success(self, host: str) -> RunRow | None:
        return self._one_run("host = ? AND status = 'success'", (host,))

    def _one_run(self, where: str, args: tuple[Any, ...]) -> RunRow | None:
        rows = self._query(
            f"SELECT {_RUN} FROM runs WHERE {where} ORDER BY started DESC, id DESC LIMIT 1", args
        )
        return _row(RunRow, rows[0], (3, 4)) if rows else None

    # -- snapshots -----------------------------------------------------------

    def record_snapshot(
        self, repository_url: str, manifest: Manifest, *, synced: dt.datetime | None = None
    ) -> bool:
        """Insert or update a snapshot from its manifest and replace its artifacts.

        Returns True if the snapshot was new to the catalog. Raises ValueError if
        the manifest's times are unreadable (nothing is written then).
        """
        objects = [*manifest.artifacts, *([manifest.facts] if manifest.facts else [])]
        fields = (
            db_time(manifest_time(manifest.started, "started")),
            db_time(manifest_time(manifest.finished, "finished")),
            manifest.status,
            sum(a.stored_size for a in objects),
            sum(a.plain_size for a in objects),
            manifest.drkit_version,
            manifest.policy_sha256,
            db_time(synced or now()),
        )
        key = (repository_url, manifest.host, manifest.snapshot)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id FROM snapshots WHERE repository_url = ? AND host = ? "
                "AND snapshot_id = ?",
                key,
            ).fetchone()
            if row is None:
                cur = conn.execute(
                    f"INSERT INTO snapshots (repository_url, host, snapshot_id, "
                    f"{_SNAPSHOT_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*key, *fields),
                )
                assert cur.lastrowid is not None
                pk: int = cur.lastrowid
            else:
                pk = int(row[0])
                assignments = ", ".join(f"{c.strip()} = ?" for c in _SNAPSHOT_FIELDS.split(","))
                conn.execute(f"UPDATE snapshots SET {assignments} WHERE id = ?", (*fields, pk))
            # The new artifacts go in before the old ones go (as SQLAlchemy's unit of
            # work did): ids only order rows, and they keep the manifest's order.
            (replaced,) = conn.execute(
                "SELECT max(id) FROM artifacts WHERE snapshot_pk = ?", (pk,)
            ).fetchone()
            conn.executemany(
                'INSERT INTO artifacts (snapshot_pk, source, kind, name, "key", format, '
                "plain_size, plain_sha256, stored_size, stored_sha256) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        pk,
                        a.source,
                        src.kind,
                        a.name,
                        a.key,
                        a.format,
                        a.plain_size,
                        a.plain_sha256,
                        a.stored_size,
                        a.stored_sha256,
                    )
                    for src in manifest.sources
                    for a in src.artifacts
                ],
            )
            if replaced is not None:
                conn.execute(
                    "DELETE FROM artifacts WHERE snapshot_pk = ? AND id <= ?", (pk, replaced)
                )
            return row is None

    def forget_snapshot(self, repository_url: str, host: str, snapshot_id: str) -> bool:
        """Remove a snapshot and its artifacts from the catalog; True if it was there."""
        with self._transaction() as conn:
            cur = conn.execute(  # its artifacts go with it: ON DELETE CASCADE
                "DELETE FROM snapshots WHERE repository_url = ? AND host = ? AND snapshot_id = ?",
                (repository_url, host, snapshot_id),
            )
            return cur.rowcount > 0

    def snapshots(
        self, host: str | None = None, repository_url: str | None = None
    ) -> list[SnapshotRow]:
        """Catalogued snapshots, newest first, optionally of one host and/or repository."""
        where = [("host = ?", host), ("repository_url = ?", repository_url)]
        chosen = [(clause, value) for clause, value in where if value is not None]
        rows = self._query(
            "SELECT repository_url, host, snapshot_id, started, finished, status, "
            "drkit_version, policy_sha256, synced, "
            "(SELECT count(id) FROM artifacts WHERE snapshot_pk = snapshots.id), "
            "stored_bytes, plain_bytes FROM snapshots"
            + (" WHERE " + " AND ".join(c for c, _ in chosen) if chosen else "")
            + " ORDER BY started DESC, snapshot_id DESC, host",
            tuple(v for _, v in chosen),
        )
        return [_row(SnapshotRow, r, (3, 4, 8)) for r in rows]

    def artifacts(self, repository_url: str, host: str, snapshot_id: str) -> list[ArtifactRow]:
        """The source artifacts of one catalogued snapshot, in manifest order."""
        rows = self._query(
            'SELECT a.source, a.kind, a.name, a."key", a.format, a.plain_size, '
            "a.plain_sha256, a.stored_size, a.stored_sha256 FROM artifacts AS a "
            "JOIN snapshots AS s ON a.snapshot_pk = s.id "
            "WHERE s.repository_url = ? AND s.host = ? AND s.snapshot_id = ? ORDER BY a.id",
            (repository_url, host, snapshot_id),
        )
        return [ArtifactRow(*r) for r in rows]

    # -- drills --------------------------------------------------------------

    def record_drill(
        self,
        repository_url: str,
        host: str,
        drill_id: str,
        snapshot_id: str,
        started: dt.datetime,
        finished: dt.datetime | None,
        verdict: DrillVerdict,
        rto_seconds: float | None = None,
        rpo_seconds: float | None = None,
        report_key: str | None = None,
    ) -> None:
        """Insert or update a drill verdict, keyed by repository, host and drill id."""
        if verdict not in DRILL_VERDICTS:
            raise ValueError(f"record_drill: invalid verdict {verdict!r}")
        key = (repository_url, host, drill_id)
        fields = (
            snapshot_id,
            db_time(started),
            db_time(finished) if finished else None,
            verdict,
            rto_seconds,
            rpo_seconds,
            report_key,
        )
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id FROM drills WHERE repository_url = ? AND host = ? AND drill_id = ?",
                key,
            ).fetchone()
            if row is None:
                conn.execute(
                    f"INSERT INTO drills ({_DRILL}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*key, *fields),
                )
            else:
                conn.execute(
                    "UPDATE drills SET snapshot_id = ?, started = ?, finished = ?, verdict = ?, "
                    "rto_seconds = ?, rpo_seconds = ?, report_key = ? WHERE id = ?",
                    (*fields, row[0]),
                )

    def last_drill(self, host: str) -> DrillRow | None:
        """The most recently started drill of ``host``."""
        rows = self._query(
            f"SELECT {_DRILL} FROM drills WHERE host = ? ORDER BY started DESC, id DESC LIMIT 1",
            (host,),
        )
        return _row(DrillRow, rows[0], (4, 5)) if rows else None


def _row(cls: Callable[..., T], values: tuple[Any, ...], times: tuple[int, ...]) -> T:
    """``cls`` built from a row's columns (in its fields' order), the DATETIME columns
    at ``times`` read as aware UTC."""
    return cls(
        *(from_db_time(v) if i in times and v is not None else v for i, v in enumerate(values))
    )
