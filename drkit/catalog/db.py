"""The catalog: runs, snapshots, artifacts and drills, indexed in a database.

It is a cache of the repositories: ``sync`` (in ``sync.py``) rebuilds the
snapshot rows from a repository alone. Queries return frozen dataclasses
(``rows.py``), never ORM objects, and every datetime returned is aware UTC.

``Catalog`` is what every caller uses. On a plain SQLite file (the default
catalog) the writes a backup makes at its end (``start_run``, ``finish_run``,
``record_snapshot``) go through the stdlib ``sqlite3`` module (``lite.py``),
and SQLAlchemy (``orm.py``, ~21 MiB of RSS) is imported only when something
else is asked: a backup never loads it. Any other URL (``postgresql://`` for
a team, in-memory SQLite) goes through SQLAlchemy for everything.
"""

from __future__ import annotations

import datetime as dt
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from drkit.catalog.lite import SqliteRunLog, sqlite_path

# Re-exported: callers import the rows, the error and manifest_time from here.
from drkit.catalog.rows import (
    ArtifactRow,
    CatalogError,
    DrillRow,
    DrillVerdict,
    RunRow,
    RunStatus,
    SnapshotRow,
    manifest_time,
)

if TYPE_CHECKING:
    from drkit.catalog.orm import OrmCatalog
    from drkit.repository.manifest import Manifest

__all__ = [
    "ArtifactRow",
    "Catalog",
    "CatalogError",
    "DrillRow",
    "RunRow",
    "SnapshotRow",
    "manifest_time",
]


class Catalog:
    """Runs, snapshots, artifacts and drills in one database.

    ``url`` is any SQLAlchemy URL (``sqlite:///path`` by default, ``postgresql://``
    for a team). The parent directory of a SQLite file is created if needed and
    the tables are created if missing. Raises UsageError for a URL that is not
    one, CatalogError when the database cannot be opened (never with a password).
    """

    def __init__(self, url: str) -> None:
        path = sqlite_path(url)
        self._lite = SqliteRunLog(path, url) if path is not None else None
        self._orm_catalog: OrmCatalog | None = None
        self._orm_lock = threading.Lock()
        self._url = url
        if self._lite is None:
            self.url = self._orm().url  # validates the URL now; hides a password
        else:
            self.url = url  # a plain file path: nothing to hide

    def _orm(self) -> OrmCatalog:
        """The SQLAlchemy catalog, opened on first use."""
        with self._orm_lock:
            if self._orm_catalog is None:
                from drkit.catalog.orm import OrmCatalog

                self._orm_catalog = OrmCatalog(self._url)
            return self._orm_catalog

    def close(self) -> None:
        if self._orm_catalog is not None:
            self._orm_catalog.close()

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
        if self._lite is not None:
            return self._lite.start_run(host, repository_url, started=started)
        return self._orm().start_run(host, repository_url, started=started)

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
        if self._lite is not None:
            self._lite.finish_run(run_id, status, snapshot_id, error, finished=finished)
        else:
            self._orm().finish_run(run_id, status, snapshot_id, error, finished=finished)

    def last_run(self, host: str) -> RunRow | None:
        """The most recently started run of ``host``, whatever its status."""
        return self._orm().last_run(host)

    def last_success(self, host: str) -> RunRow | None:
        return self._orm().last_success(host)

    # -- snapshots -----------------------------------------------------------

    def record_snapshot(
        self, repository_url: str, manifest: Manifest, *, synced: dt.datetime | None = None
    ) -> bool:
        """Insert or update a snapshot from its manifest and replace its artifacts.

        Returns True if the snapshot was new to the catalog. Raises ValueError if
        the manifest's times are unreadable (nothing is written then).
        """
        if self._lite is not None:
            return self._lite.record_snapshot(repository_url, manifest, synced=synced)
        return self._orm().record_snapshot(repository_url, manifest, synced=synced)

    def forget_snapshot(self, repository_url: str, host: str, snapshot_id: str) -> bool:
        """Remove a snapshot and its artifacts from the catalog; True if it was there."""
        return self._orm().forget_snapshot(repository_url, host, snapshot_id)

    def snapshots(
        self, host: str | None = None, repository_url: str | None = None
    ) -> list[SnapshotRow]:
        """Catalogued snapshots, newest first, optionally of one host and/or repository."""
        return self._orm().snapshots(host, repository_url)

    def artifacts(self, repository_url: str, host: str, snapshot_id: str) -> list[ArtifactRow]:
        """The source artifacts of one catalogued snapshot, in manifest order."""
        return self._orm().artifacts(repository_url, host, snapshot_id)

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
        self._orm().record_drill(
            repository_url, host, drill_id, snapshot_id, started, finished, verdict,
            rto_seconds, rpo_seconds, report_key,
        )  # fmt: skip

    def last_drill(self, host: str) -> DrillRow | None:
        """The most recently started drill of ``host``."""
        return self._orm().last_drill(host)
