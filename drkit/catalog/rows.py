"""What the catalog returns and checks: rows, statuses, times, errors."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final, Literal

from drkit.errors import DrkitError

RunStatus = Literal["running", "success", "failed", "partial"]
DrillVerdict = Literal["pass", "fail", "warn"]

RUN_STATUSES: Final = ("running", "success", "failed", "partial")
DRILL_VERDICTS: Final = ("pass", "fail", "warn")

SQLITE_BUSY_SECONDS: Final = 30.0  # how long a writer waits for another's lock


class CatalogError(DrkitError):
    """The catalog database could not be opened or written (names the URL, never a password)."""


@dataclass(frozen=True)
class RunRow:
    id: int
    host: str
    repository_url: str
    started: dt.datetime
    finished: dt.datetime | None
    status: str
    snapshot_id: str | None
    error: str | None


@dataclass(frozen=True)
class SnapshotRow:
    """A catalogued snapshot; sizes cover every object the manifest names (facts included)."""

    repository_url: str
    host: str
    snapshot_id: str
    started: dt.datetime
    finished: dt.datetime
    status: str
    drkit_version: str
    policy_sha256: str
    synced: dt.datetime
    artifact_count: int
    stored_bytes: int
    plain_bytes: int


@dataclass(frozen=True)
class ArtifactRow:
    source: str
    kind: str
    name: str
    key: str
    format: str
    plain_size: int
    plain_sha256: str
    stored_size: int
    stored_sha256: str


@dataclass(frozen=True)
class DrillRow:
    repository_url: str
    host: str
    drill_id: str
    snapshot_id: str
    started: dt.datetime
    finished: dt.datetime | None
    verdict: str
    rto_seconds: float | None
    rpo_seconds: float | None
    report_key: str | None


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def to_utc(value: dt.datetime) -> dt.datetime:
    """An aware datetime in UTC; naive datetimes are refused (their zone is unknown)."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"naive datetime {value.isoformat()} given to the catalog")
    return value.astimezone(dt.UTC)


def manifest_time(value: str, field: str) -> dt.datetime:
    """A manifest's ISO 8601 time as aware UTC (manifests are written in UTC; naive means UTC)."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"manifest field {field} is not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def check_run_status(status: str) -> None:
    """Raises ValueError unless ``status`` may close a run."""
    if status not in RUN_STATUSES or status == "running":
        raise ValueError(f"finish_run: invalid status {status!r}")
