"""Catalog tables: runs, snapshots, artifacts, drills (SQLAlchemy 2.0 typed ORM).

The catalog is a cache of the repositories (``drkit catalog sync`` rebuilds the
snapshot and artifact tables from a repository alone). It never holds secrets:
it copies manifest fields, which hold none, and error strings handed to it.

Every datetime column is a ``UTCDateTime``: timezone-aware UTC in Python,
stored as naive UTC in the database on every backend (SQLite has no time
zones), so values compare and sort the same everywhere.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Re-exported: these used to live here and callers import them from here.
from drkit.catalog.rows import (
    DRILL_VERDICTS,
    RUN_STATUSES,
    DrillVerdict,
    RunStatus,
    to_utc,
)

__all__ = [
    "DRILL_VERDICTS",
    "RUN_STATUSES",
    "Artifact",
    "Base",
    "Drill",
    "DrillVerdict",
    "Run",
    "RunStatus",
    "Snapshot",
    "UTCDateTime",
    "to_utc",
]


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return to_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        # Drivers return datetime objects; SQLite text is parsed just in case.
        when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
        if when.tzinfo is None:
            return when.replace(tzinfo=dt.UTC)
        return when.astimezone(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime()}


class Run(Base):
    """One backup attempt of one host, whatever its outcome."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="ck_runs_status"),
        Index("ix_runs_host_started", "host", "started"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    repository_url: Mapped[str] = mapped_column(String(2048))
    started: Mapped[dt.datetime]
    finished: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="running")
    snapshot_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)


class Snapshot(Base):
    """A committed snapshot (its manifest), keyed by repository, host and id.

    ``stored_bytes`` / ``plain_bytes`` cover every object the manifest names:
    the source artifacts plus the encrypted facts object.
    """

    __tablename__ = "snapshots"
    __table_args__ = (
        UniqueConstraint("repository_url", "host", "snapshot_id", name="uq_snapshots_key"),
        Index("ix_snapshots_host_started", "host", "started"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repository_url: Mapped[str] = mapped_column(String(2048))
    host: Mapped[str] = mapped_column(String(255))
    snapshot_id: Mapped[str] = mapped_column(String(255))
    started: Mapped[dt.datetime]
    finished: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(String(32))
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    plain_bytes: Mapped[int] = mapped_column(BigInteger)
    drkit_version: Mapped[str] = mapped_column(String(64))
    policy_sha256: Mapped[str] = mapped_column(String(64))
    synced: Mapped[dt.datetime]  # when this row was last copied from the manifest

    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="snapshot",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Artifact.id",
    )


class Artifact(Base):
    """One source artifact of a snapshot (the facts object is not listed here)."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    snapshot_pk: Mapped[int] = mapped_column(
        ForeignKey("snapshots.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(1024))
    key: Mapped[str] = mapped_column(String(2048))
    format: Mapped[str] = mapped_column(String(64))
    plain_size: Mapped[int] = mapped_column(BigInteger)
    plain_sha256: Mapped[str] = mapped_column(String(64))
    stored_size: Mapped[int] = mapped_column(BigInteger)
    stored_sha256: Mapped[str] = mapped_column(String(64))

    snapshot: Mapped[Snapshot] = relationship(back_populates="artifacts")


class Drill(Base):
    """A drill verdict (filled by the drill feature; mirrors ``<host>/drills/<id>.json``)."""

    __tablename__ = "drills"
    __table_args__ = (
        UniqueConstraint("repository_url", "host", "drill_id", name="uq_drills_key"),
        CheckConstraint(_in("verdict", DRILL_VERDICTS), name="ck_drills_verdict"),
        Index("ix_drills_host_started", "host", "started"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repository_url: Mapped[str] = mapped_column(String(2048))
    host: Mapped[str] = mapped_column(String(255))
    drill_id: Mapped[str] = mapped_column(String(255))
    snapshot_id: Mapped[str] = mapped_column(String(255))
    started: Mapped[dt.datetime]
    finished: Mapped[dt.datetime | None]
    verdict: Mapped[str] = mapped_column(String(8))
    rto_seconds: Mapped[float | None] = mapped_column(Float)
    rpo_seconds: Mapped[float | None] = mapped_column(Float)
    report_key: Mapped[str | None] = mapped_column(String(2048))
