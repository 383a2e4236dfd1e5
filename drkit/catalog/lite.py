"""Backup-time writes to a SQLite catalog with the stdlib ``sqlite3`` module.

A backup records two things at its end: its run (``runs``) and, when it
committed, the snapshot and its artifacts. Through SQLAlchemy that costs
~21 MiB of RSS (the ORM, the dialect, the mapped classes), more than the
whole data path; this module writes the same rows into the same tables
with ``sqlite3`` (~1 MiB). The schema is the one ``models.py`` declares:
``SCHEMA`` is SQLAlchemy's own DDL for it, text for text, and a test checks
that both writers leave identical rows and ``sqlite_master`` entries.

Every other operation (queries, drills, ``forget_snapshot``) and every
non-SQLite catalog go through SQLAlchemy (``orm.py``); ``db.Catalog``
decides.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

from drkit.catalog.rows import (
    SQLITE_BUSY_SECONDS,
    CatalogError,
    RunStatus,
    check_run_status,
    manifest_time,
    now,
    to_utc,
)
from drkit.paths import private_file

if TYPE_CHECKING:
    from drkit.repository.manifest import Manifest

# SQLAlchemy's CREATE statements for models.Base on SQLite, in create_all's
# order: (table, (CREATE TABLE, CREATE INDEX ...)). tests/catalog checks them.
SCHEMA: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (
        "drills",
        (
            (
                "CREATE TABLE drills (\n"
                "\tid INTEGER NOT NULL, \n"
                "\trepository_url VARCHAR(2048) NOT NULL, \n"
                "\thost VARCHAR(255) NOT NULL, \n"
                "\tdrill_id VARCHAR(255) NOT NULL, \n"
                "\tsnapshot_id VARCHAR(255) NOT NULL, \n"
                "\tstarted DATETIME NOT NULL, \n"
                "\tfinished DATETIME, \n"
                "\tverdict VARCHAR(8) NOT NULL, \n"
                "\trto_seconds FLOAT, \n"
                "\trpo_seconds FLOAT, \n"
                "\treport_key VARCHAR(2048), \n"
                "\tPRIMARY KEY (id), \n"
                "\tCONSTRAINT uq_drills_key UNIQUE (repository_url, host, drill_id), \n"
                "\tCONSTRAINT ck_drills_verdict CHECK (verdict IN ('pass', 'fail', 'warn'))\n"
                ")"
            ),
            "CREATE INDEX ix_drills_host_started ON drills (host, started)",
        ),
    ),
    (
        "runs",
        (
            (
                "CREATE TABLE runs (\n"
                "\tid INTEGER NOT NULL, \n"
                "\thost VARCHAR(255) NOT NULL, \n"
                "\trepository_url VARCHAR(2048) NOT NULL, \n"
                "\tstarted DATETIME NOT NULL, \n"
                "\tfinished DATETIME, \n"
                "\tstatus VARCHAR(16) NOT NULL, \n"
                "\tsnapshot_id VARCHAR(255), \n"
                "\terror TEXT, \n"
                "\tPRIMARY KEY (id), \n"
                "\tCONSTRAINT ck_runs_status CHECK "
                "(status IN ('running', 'success', 'failed', 'partial'))\n"
                ")"
            ),
            "CREATE INDEX ix_runs_host_started ON runs (host, started)",
        ),
    ),
    (
        "snapshots",
        (
            (
                "CREATE TABLE snapshots (\n"
                "\tid INTEGER NOT NULL, \n"
                "\trepository_url VARCHAR(2048) NOT NULL, \n"
                "\thost VARCHAR(255) NOT NULL, \n"
                "\tsnapshot_id VARCHAR(255) NOT NULL, \n"
                "\tstarted DATETIME NOT NULL, \n"
                "\tfinished DATETIME NOT NULL, \n"
                "\tstatus VARCHAR(32) NOT NULL, \n"
                "\tstored_bytes BIGINT NOT NULL, \n"
                "\tplain_bytes BIGINT NOT NULL, \n"
                "\tdrkit_version VARCHAR(64) NOT NULL, \n"
                "\tpolicy_sha256 VARCHAR(64) NOT NULL, \n"
                "\tsynced DATETIME NOT NULL, \n"
                "\tPRIMARY KEY (id), \n"
                "\tCONSTRAINT uq_snapshots_key UNIQUE (repository_url, host, snapshot_id)\n"
                ")"
            ),
            "CREATE INDEX ix_snapshots_host_started ON snapshots (host, started)",
        ),
    ),
    (
        "artifacts",
        (
            (
                "CREATE TABLE artifacts (\n"
                "\tid INTEGER NOT NULL, \n"
                "\tsnapshot_pk INTEGER NOT NULL, \n"
                "\tsource VARCHAR(255) NOT NULL, \n"
                "\tkind VARCHAR(64) NOT NULL, \n"
                "\tname VARCHAR(1024) NOT NULL, \n"
                '\t"key" VARCHAR(2048) NOT NULL, \n'
                "\tformat VARCHAR(64) NOT NULL, \n"
                "\tplain_size BIGINT NOT NULL, \n"
                "\tplain_sha256 VARCHAR(64) NOT NULL, \n"
                "\tstored_size BIGINT NOT NULL, \n"
                "\tstored_sha256 VARCHAR(64) NOT NULL, \n"
                "\tPRIMARY KEY (id), \n"
                "\tFOREIGN KEY(snapshot_pk) REFERENCES snapshots (id) ON DELETE CASCADE\n"
                ")"
            ),
            "CREATE INDEX ix_artifacts_snapshot_pk ON artifacts (snapshot_pk)",
        ),
    ),
)

# A plain file URL. Anything else (in-memory, ``file:`` URIs, query options,
# percent-escapes, other drivers) is left to SQLAlchemy to interpret.
_PLAIN_SQLITE_URL = re.compile(r"sqlite(?:\+pysqlite)?:///([^?#%]+)")


def sqlite_path(url: str) -> Path | None:
    """The database file of a plain ``sqlite:///PATH`` URL, else None."""
    match = _PLAIN_SQLITE_URL.fullmatch(url)
    if match is None:
        return None
    database = match.group(1)
    if database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def db_time(value: dt.datetime) -> str:
    """``value`` as SQLAlchemy stores a SQLite DATETIME: naive UTC with microseconds."""
    return to_utc(value).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


class SqliteRunLog:
    """Runs and snapshots written to the SQLite file ``path`` (the catalog at ``url``).

    Creates the parent directory and any missing table (as SQLAlchemy's
    ``create_all`` would). Each call is one transaction on a connection of
    its own, so an instance may be used from any thread. Raises CatalogError
    (naming the URL) when the file cannot be created, opened or written.
    """

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.url = url
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(
                f"catalog {url}: cannot create {path.parent}: {exc.strerror}"
            ) from None
        try:
            private_file(path)  # run errors name hosts and failures: owner only
        except OSError as exc:
            raise CatalogError(f"catalog {url}: cannot create {path}: {exc.strerror}") from None
        try:
            self._ensure_schema()
        except sqlite3.Error as exc:
            raise CatalogError(f"catalog {url}: cannot open: {exc}") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN ourselves. BEGIN IMMEDIATE takes
        # the write lock up front, so two writers queue (busy timeout) instead
        # of one failing to upgrade a read lock.
        conn = sqlite3.connect(self.path, timeout=SQLITE_BUSY_SECONDS, isolation_level=None)
        with closing(conn):
            conn.execute("PRAGMA foreign_keys=ON")
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

    def _ensure_schema(self) -> None:
        def missing(conn: sqlite3.Connection) -> list[tuple[str, tuple[str, ...]]]:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            have = {name for (name,) in rows}
            return [entry for entry in SCHEMA if entry[0] not in have]

        with self._connect() as conn:
            if not missing(conn):
                return  # the usual case: no write lock taken
            conn.execute("BEGIN IMMEDIATE")
            try:
                for _table, statements in missing(conn):  # again, under the lock
                    for statement in statements:
                        conn.execute(statement)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

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
        """Close a run. ``error`` must already be free of secrets (drkit errors are)."""
        check_run_status(status)
        when = db_time(finished or now())
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, snapshot_id = ?, error = ?, finished = ? WHERE id = ?",
                (status, snapshot_id, error, when, run_id),
            )
            if cur.rowcount == 0:
                raise CatalogError(f"catalog {self.url}: no run {run_id}")

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
            columns = (
                "started, finished, status, stored_bytes, plain_bytes, drkit_version, "
                "policy_sha256, synced"
            )
            if row is None:
                cur = conn.execute(
                    f"INSERT INTO snapshots (repository_url, host, snapshot_id, {columns}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*key, *fields),
                )
                assert cur.lastrowid is not None
                pk: int = cur.lastrowid
            else:
                pk = int(row[0])
                assignments = ", ".join(f"{c.strip()} = ?" for c in columns.split(","))
                conn.execute(f"UPDATE snapshots SET {assignments} WHERE id = ?", (*fields, pk))
            # The new artifacts go in before the old ones go, as SQLAlchemy's unit of
            # work does: ids then match an ORM-written catalog's (ids only order rows).
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
