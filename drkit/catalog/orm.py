"""The catalog through SQLAlchemy: every operation, on any database URL.

``drkit.catalog.db.Catalog`` uses this for everything except, on a SQLite
file, the writes a backup makes (``lite.py``). Queries return frozen
dataclasses, never ORM objects, so callers cannot change the database by
accident and rows stay usable after the session closes. Every datetime
returned is aware UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from drkit.catalog.models import Artifact, Base, Drill, Run, Snapshot
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
    to_utc,
)
from drkit.catalog.rows import now as _now
from drkit.errors import UsageError
from drkit.paths import private_file
from drkit.repository.manifest import Manifest


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory / URI-style databases."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _enable_sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


class OrmCatalog:
    """Runs, snapshots, artifacts and drills in one SQLAlchemy database.

    ``url`` is any SQLAlchemy URL (``sqlite:///path`` by default, ``postgresql://``
    for a team). The parent directory of a SQLite file is created if needed and
    the tables are created if missing.
    """

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise UsageError("catalog: not a valid SQLAlchemy database URL") from None
        self.url = parsed.render_as_string(hide_password=True)
        kwargs: dict[str, Any] = {}
        sqlite_file = _sqlite_file(parsed)
        if parsed.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_SECONDS}
        if sqlite_file is not None:
            try:
                sqlite_file.parent.mkdir(parents=True, exist_ok=True)
                private_file(sqlite_file)  # run errors name hosts and failures: owner only
            except OSError as exc:
                raise CatalogError(
                    f"catalog {self.url}: cannot create {exc.filename}: {exc.strerror}"
                ) from None
        try:
            self._engine: Engine = create_engine(parsed, **kwargs)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise UsageError(f"catalog {self.url}: {exc}") from None
        if parsed.get_backend_name() == "sqlite":
            event.listen(self._engine, "connect", _enable_sqlite_foreign_keys)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        try:
            Base.metadata.create_all(self._engine)
        except OperationalError as exc:
            self._engine.dispose()
            raise CatalogError(f"catalog {self.url}: cannot open: {exc.orig}") from None

    # -- plumbing ------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        try:
            with self._sessions() as session, session.begin():
                yield session
        except OperationalError as exc:
            raise CatalogError(f"catalog {self.url}: {exc.orig}") from None

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> OrmCatalog:
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
        with self._transaction() as s:
            run = Run(
                host=host,
                repository_url=repository_url,
                started=to_utc(started) if started else _now(),
                status="running",
            )
            s.add(run)
            s.flush()
            return run.id

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
        with self._transaction() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise CatalogError(f"catalog {self.url}: no run {run_id}")
            run.status = status
            run.snapshot_id = snapshot_id
            run.error = error
            run.finished = to_utc(finished) if finished else _now()

    def last_run(self, host: str) -> RunRow | None:
        """The most recently started run of ``host``, whatever its status."""
        return self._one_run(select(Run).where(Run.host == host))

    def last_success(self, host: str) -> RunRow | None:
        return self._one_run(select(Run).where(Run.host == host, Run.status == "success"))

    def _one_run(self, stmt: Any) -> RunRow | None:
        with self._transaction() as s:
            run = s.scalars(stmt.order_by(Run.started.desc(), Run.id.desc()).limit(1)).first()
            return _run_row(run) if run is not None else None

    # -- snapshots -----------------------------------------------------------

    def record_snapshot(
        self, repository_url: str, manifest: Manifest, *, synced: dt.datetime | None = None
    ) -> bool:
        """Insert or update a snapshot from its manifest and replace its artifacts.

        Returns True if the snapshot was new to the catalog. Raises ValueError if
        the manifest's times are unreadable (nothing is written then).
        """
        started = manifest_time(manifest.started, "started")
        finished = manifest_time(manifest.finished, "finished")
        objects = [*manifest.artifacts, *([manifest.facts] if manifest.facts else [])]
        fields = {
            "started": started,
            "finished": finished,
            "status": manifest.status,
            "stored_bytes": sum(a.stored_size for a in objects),
            "plain_bytes": sum(a.plain_size for a in objects),
            "drkit_version": manifest.drkit_version,
            "policy_sha256": manifest.policy_sha256,
            "synced": to_utc(synced) if synced else _now(),
        }
        for attempt in range(2):
            try:
                with self._transaction() as s:
                    row = s.scalars(
                        select(Snapshot).where(
                            Snapshot.repository_url == repository_url,
                            Snapshot.host == manifest.host,
                            Snapshot.snapshot_id == manifest.snapshot,
                        )
                    ).one_or_none()
                    created = row is None
                    if row is None:
                        row = Snapshot(
                            repository_url=repository_url,
                            host=manifest.host,
                            snapshot_id=manifest.snapshot,
                        )
                        s.add(row)
                    for name, value in fields.items():
                        setattr(row, name, value)
                    row.artifacts = [
                        Artifact(
                            source=a.source,
                            kind=src.kind,
                            name=a.name,
                            key=a.key,
                            format=a.format,
                            plain_size=a.plain_size,
                            plain_sha256=a.plain_sha256,
                            stored_size=a.stored_size,
                            stored_sha256=a.stored_sha256,
                        )
                        for src in manifest.sources
                        for a in src.artifacts
                    ]
                return created
            except IntegrityError:
                # Another process inserted the same snapshot between our select and
                # insert; the second attempt finds its row and updates it.
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def forget_snapshot(self, repository_url: str, host: str, snapshot_id: str) -> bool:
        """Remove a snapshot and its artifacts from the catalog; True if it was there."""
        with self._transaction() as s:
            row = s.scalars(
                select(Snapshot).where(
                    Snapshot.repository_url == repository_url,
                    Snapshot.host == host,
                    Snapshot.snapshot_id == snapshot_id,
                )
            ).one_or_none()
            if row is None:
                return False
            s.delete(row)
            return True

    def snapshots(
        self, host: str | None = None, repository_url: str | None = None
    ) -> list[SnapshotRow]:
        """Catalogued snapshots, newest first, optionally of one host and/or repository."""
        count = (
            select(func.count(Artifact.id))
            .where(Artifact.snapshot_pk == Snapshot.id)
            .correlate(Snapshot)
            .scalar_subquery()
        )
        stmt = select(Snapshot, count)
        if host is not None:
            stmt = stmt.where(Snapshot.host == host)
        if repository_url is not None:
            stmt = stmt.where(Snapshot.repository_url == repository_url)
        stmt = stmt.order_by(Snapshot.started.desc(), Snapshot.snapshot_id.desc(), Snapshot.host)
        with self._transaction() as s:
            return [_snapshot_row(row, int(n)) for row, n in s.execute(stmt)]

    def artifacts(self, repository_url: str, host: str, snapshot_id: str) -> list[ArtifactRow]:
        """The source artifacts of one catalogued snapshot, in manifest order."""
        stmt = (
            select(Artifact)
            .join(Artifact.snapshot)
            .where(
                Snapshot.repository_url == repository_url,
                Snapshot.host == host,
                Snapshot.snapshot_id == snapshot_id,
            )
            .order_by(Artifact.id)
        )
        with self._transaction() as s:
            return [
                ArtifactRow(
                    source=a.source,
                    kind=a.kind,
                    name=a.name,
                    key=a.key,
                    format=a.format,
                    plain_size=a.plain_size,
                    plain_sha256=a.plain_sha256,
                    stored_size=a.stored_size,
                    stored_sha256=a.stored_sha256,
                )
                for a in s.scalars(stmt)
            ]

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
        with self._transaction() as s:
            row = s.scalars(
                select(Drill).where(
                    Drill.repository_url == repository_url,
                    Drill.host == host,
                    Drill.drill_id == drill_id,
                )
            ).one_or_none()
            if row is None:
                row = Drill(repository_url=repository_url, host=host, drill_id=drill_id)
                s.add(row)
            row.snapshot_id = snapshot_id
            row.started = to_utc(started)
            row.finished = to_utc(finished) if finished else None
            row.verdict = verdict
            row.rto_seconds = rto_seconds
            row.rpo_seconds = rpo_seconds
            row.report_key = report_key

    def last_drill(self, host: str) -> DrillRow | None:
        """The most recently started drill of ``host``."""
        stmt = (
            select(Drill)
            .where(Drill.host == host)
            .order_by(Drill.started.desc(), Drill.id.desc())
            .limit(1)
        )
        with self._transaction() as s:
            d = s.scalars(stmt).first()
            if d is None:
                return None
            return DrillRow(
                repository_url=d.repository_url,
                host=d.host,
                drill_id=d.drill_id,
                snapshot_id=d.snapshot_id,
                started=d.started,
                finished=d.finished,
                verdict=d.verdict,
                rto_seconds=d.rto_seconds,
                rpo_seconds=d.rpo_seconds,
                report_key=d.report_key,
            )


def _run_row(run: Run) -> RunRow:
    return RunRow(
        id=run.id,
        host=run.host,
        repository_url=run.repository_url,
        started=run.started,
        finished=run.finished,
        status=run.status,
        snapshot_id=run.snapshot_id,
        error=run.error,
    )


def _snapshot_row(row: Snapshot, artifact_count: int) -> SnapshotRow:
    return SnapshotRow(
        repository_url=row.repository_url,
        host=row.host,
        snapshot_id=row.snapshot_id,
        started=row.started,
        finished=row.finished,
        status=row.status,
        drkit_version=row.drkit_version,
        policy_sha256=row.policy_sha256,
        synced=row.synced,
        artifact_count=artifact_count,
        stored_bytes=row.stored_bytes,
        plain_bytes=row.plain_bytes,
    )
