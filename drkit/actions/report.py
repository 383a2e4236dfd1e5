"""What the fleet report page shows, gathered per host (``drkit report --html``).

Everything counted comes from what the repository proves: trusted manifests and
signed drill reports (the same reads as ``drkit status`` and ``drkit prune``).
Untrusted snapshots and refused drill reports are listed with the reason, never
counted. The catalog adds only the last failed run's error. Rendering is
``drkit/actions/report_html.py``; this module decides nothing about HTML.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from drkit import __version__
from drkit.actions.repository_access import open_repository
from drkit.actions.status import _DrillDoc as StatusDrillDoc
from drkit.actions.status import complete_manifests, due_sources, host_status
from drkit.durations import parse_duration
from drkit.errors import DrkitError, RepositoryError
from drkit.policy.models import MachineImageConfig, Policy, source_name
from drkit.repository.documents import lazy_adapter, parse_document
from drkit.repository.layout import HostSnapshots, Rejected, Repository, manifest_key
from drkit.repository.manifest import snapshot_time
from drkit.retention import describe

if TYPE_CHECKING:
    from drkit.catalog.db import Catalog
    from drkit.drills.report import DrillReport

# A scheduled slot missed by more than this (and no backup since) makes a host late:
# a backup that starts on time and runs for a while is not late.
LATE_AFTER = dt.timedelta(hours=1)
FRESHNESS = ("ok", "late", "breach", "unknown")


@dataclass(frozen=True)
class CheckRow:
    status: str
    source: str
    name: str
    detail: str


@dataclass(frozen=True)
class DrillRow:
    """One trusted drill report."""

    drill_id: str
    snapshot: str
    verdict: str
    started: dt.datetime
    rto_seconds: float | None
    rpo_seconds: float | None
    error: str | None
    checks: tuple[CheckRow, ...]

    @property
    def failed_checks(self) -> list[CheckRow]:
        return [c for c in self.checks if c.status == "fail"]


@dataclass(frozen=True)
class SnapshotRow:
    """One trusted snapshot: its stored bytes (whole and per source) and, when the
    host's retention was read, whether ``drkit prune`` would keep it and why."""

    snapshot: str
    time: dt.datetime
    complete: bool
    stored_bytes: int
    by_source: dict[str, int]
    keep: bool | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceRow:
    name: str
    kind: str
    schedule: str | None
    last_snapshot: str | None
    last_time: dt.datetime | None
    due: bool
    stored_bytes: int | None  # in the newest snapshot holding it


@dataclass
class HostReport:
    host: str
    repository: str = ""
    rpo: str | None = None
    rpo_seconds: float | None = None
    freshness: str = "unknown"  # one of FRESHNESS
    why: str = ""  # the freshness in words
    age_seconds: int | None = None
    last_snapshot: str | None = None
    sources: list[SourceRow] = field(default_factory=list)
    snapshots: list[SnapshotRow] = field(default_factory=list)  # oldest first
    drills: list[DrillRow] = field(default_factory=list)  # oldest first
    untrusted: list[tuple[str, str]] = field(default_factory=list)  # (snapshot, reason)
    refused_drills: list[tuple[str, str]] = field(default_factory=list)  # (report, reason)
    retention: str = ""
    retention_error: str | None = None
    object_lock_days: int = 0
    object_lock: str = ""  # what the bucket says
    last_error: str | None = None  # the last run's, from the catalog
    error: str | None = None  # the host could not be read at all
    # Drills this process just ran whose reports the repository does not hold (no
    # trusted signing key, a setup error): shown apart, never counted.
    unstored: list[DrillRow] = field(default_factory=list)

    @property
    def last_drill(self) -> DrillRow | None:
        return self.drills[-1] if self.drills else None


@dataclass
class FleetReport:
    generated: dt.datetime
    hosts: list[HostReport]
    version: str = __version__

    def count(self, freshness: str) -> int:
        return sum(h.freshness == freshness for h in self.hosts)


def gather(
    policies: Iterable[Policy],
    catalog: Catalog | None,
    now: dt.datetime,
    *,
    retention: bool = True,
    log: Callable[[str], None] = lambda _m: None,
) -> FleetReport:
    """One HostReport per policy, in policy order. A host that cannot be read is
    reported with ``error`` (said through ``log``) and the others go on.
    ``retention``: also ask prune (a dry run) what it keeps and why."""
    hosts: list[HostReport] = []
    for policy in policies:
        try:
            hosts.append(host_report(policy, catalog, now, retention=retention))
        except (DrkitError, OSError) as exc:
            log(f"error: host {policy.host}: not read for the report: {exc}")
            hosts.append(HostReport(policy.host, rpo=policy.rpo, error=str(exc)))
    return FleetReport(now, hosts)


def host_report(
    policy: Policy, catalog: Catalog | None, now: dt.datetime, *, retention: bool = True
) -> HostReport:
    """Everything the page shows of one host. Raises DrkitError when its repository
    cannot be read (a listing, the format marker, its secrets)."""
    status = host_status(policy, catalog, now)
    repo = ReadOnce(open_repository(policy))
    out = HostReport(
        policy.host,
        repository=str(status["repository"]),
        rpo=policy.rpo,
        rpo_seconds=parse_duration(policy.rpo).total_seconds() if policy.rpo else None,
        age_seconds=status["age_seconds"],
        last_snapshot=status["last_snapshot"],
        untrusted=[(u["snapshot"], u["reason"]) for u in status["untrusted"]],
        last_error=status.get("last_error"),
        retention=describe(policy.retention),
        object_lock_days=policy.repository.immutable_days,
    )
    manifests = list(reversed(list(complete_manifests(repo, policy.host))))
    out.snapshots = [_snapshot_row(m) for m in manifests]
    due = {d.source: d for d in due_sources(policy, repo, now)}
    out.sources = _source_rows(policy, manifests, due)
    out.freshness, out.why = _freshness(policy, status, due.values(), now)
    out.drills, out.refused_drills = drill_rows(repo, policy.host)
    out.object_lock = _object_lock(repo, policy.host, out.last_snapshot)
    if retention:
        _add_retention(policy, repo, catalog, now, out)
    return out


def add_unstored(fleet: FleetReport, reports: Iterable[DrillReport]) -> None:
    """Add the drills just run (``drkit drill --report``) that the repository does not
    hold to their hosts' ``unstored``: without them, a drill machine without a trusted
    signing key would publish a page of older drills only."""
    by_host = {h.host: h for h in fleet.hosts}
    for r in reports:
        host = by_host.get(r.host)
        if host is None or any(d.drill_id == r.drill_id for d in host.drills):
            continue
        started = dt.datetime.fromisoformat(r.started) if r.started else fleet.generated
        checks = tuple(CheckRow(c.status, c.source, c.name, c.detail) for c in r.checks)
        host.unstored.append(
            DrillRow(
                r.drill_id,
                r.snapshot,
                r.verdict,
                started,
                r.rto_seconds,
                r.rpo_seconds,
                r.error,
                checks,
            )
        )


class ReadOnce(Repository):
    """A repository whose hosts' snapshots and drill reports are read once: the report's
    figures for one host all come from the same read, and 60 snapshots' manifests are
    not fetched and verified again for each figure."""

    def __init__(self, repo: Repository) -> None:
        super().__init__(repo.store, repo.trust)
        self._views: dict[str, HostSnapshots] = {}
        self._drills: dict[str, tuple[list[dict[str, object]], list[Rejected]]] = {}

    def read_host(self, host: str) -> HostSnapshots:
        if host not in self._views:
            self._views[host] = super().read_host(host)
        return self._views[host]

    def drill_reports(self, host: str) -> tuple[list[dict[str, object]], list[Rejected]]:
        if host not in self._drills:
            self._drills[host] = super().drill_reports(host)
        return self._drills[host]


def _snapshot_row(manifest: Any) -> SnapshotRow:
    by_source = {
        s.name: sum(a.stored_size + a.new_bytes for a in s.artifacts) for s in manifest.sources
    }
    return SnapshotRow(
        manifest.snapshot,
        snapshot_time(manifest.snapshot),
        manifest.status == "complete",
        manifest.stored_bytes,
        by_source,
    )


def _source_rows(policy: Policy, manifests: list[Any], due: dict[str, Any]) -> list[SourceRow]:
    rows: list[SourceRow] = []
    for src in policy.source:
        name = source_name(src)
        newest = next((m for m in reversed(manifests) if m.source(name) is not None), None)
        record = newest.source(name) if newest is not None else None
        d = due.get(name)
        rows.append(
            SourceRow(
                name,
                str(getattr(src, "kind", "")),
                src.schedule or policy.schedule,
                newest.snapshot if newest else None,
                snapshot_time(newest.snapshot) if newest else None,
                bool(d and d.due),
                sum(a.stored_size + a.new_bytes for a in record.artifacts) if record else None,
            )
        )
    return rows


def _freshness(
    policy: Policy, status: dict[str, Any], due: Iterable[Any], now: dt.datetime
) -> tuple[str, str]:
    """ok / late / breach, and why. Breach: the stalest source is older than the RPO (or
    was never backed up). Late: within the RPO, but a scheduled backup is more than
    LATE_AFTER overdue (the RPO is being used up). With no RPO, only late or ok."""
    age = status["age_seconds"]
    if status["breach"]:
        if age is None:
            return "breach", f"no complete backup of every source; RPO {policy.rpo}"
        return "breach", f"newest backup {status['age']} old, more than the RPO {policy.rpo}"
    missed = [d for d in due if d.due and d.slot is not None and now - d.slot > LATE_AFTER]
    if missed:
        names = ", ".join(d.source for d in missed)
        slot = min(d.slot for d in missed)
        return "late", f"scheduled backup of {names} missed (due {slot:%Y-%m-%d %H:%M} UTC)"
    if age is None:
        return ("late", "never backed up") if policy.source else ("ok", "no sources")
    rpo = f"; RPO {policy.rpo}" if policy.rpo else "; no RPO set"
    return "ok", f"newest backup {status['age']} old{rpo}"


class _Check(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)
    status: Annotated[StrictStr, Field(max_length=16)]
    source: StrictStr = ""
    name: StrictStr = ""
    detail: StrictStr = ""


class _DrillDoc(StatusDrillDoc):
    """A drill report as the page shows it: what status reads, and its checks."""

    rpo_seconds: Annotated[float, Field(allow_inf_nan=False)] | None = None
    error: StrictStr | None = None
    checks: list[_Check] = []


_DRILL_DOC = lazy_adapter(lambda: _DrillDoc)


def drill_rows(repo: Repository, host: str) -> tuple[list[DrillRow], list[tuple[str, str]]]:
    """The host's trusted drill reports, oldest first, and those refused (report, why):
    unsigned, wrongly signed, malformed or dated in the future (as drkit status)."""
    trusted, rejected = repo.drill_reports(host)
    refused = [(r.snapshot, r.reason) for r in rejected]
    latest = repo.trust.latest_acceptable()
    rows: list[DrillRow] = []
    for data in trusted:
        origin = f"{repo.url}/{host}/drills/{data.get('drill_id', '?')}.json"
        try:
            doc: _DrillDoc = parse_document(_DRILL_DOC(), data, origin, "drill report")
        except RepositoryError as exc:
            refused.append((str(data.get("drill_id", "?")), str(exc)))
            continue
        started = doc.started if doc.started.tzinfo else doc.started.replace(tzinfo=dt.UTC)
        if started > latest:
            refused.append(
                (doc.drill_id, f"{origin}: started {started:%Y-%m-%d %H:%M} UTC, later than now")
            )
            continue
        checks = tuple(CheckRow(c.status, c.source, c.name, c.detail) for c in doc.checks)
        rows.append(
            DrillRow(
                doc.drill_id,
                doc.snapshot,
                doc.verdict,
                started,
                doc.rto_seconds,
                doc.rpo_seconds,
                doc.error,
                checks,
            )
        )
    rows.sort(key=lambda d: (d.started, d.drill_id))
    return rows, refused


def _object_lock(repo: Repository, host: str, newest: str | None) -> str:
    """Whether the bucket has Object Lock and, if so, until when the newest snapshot's
    manifest is held (one request: proof the lock is applied, not only configured)."""
    try:
        if not repo.store.object_lock_enabled():
            return "not enabled"
    except RepositoryError as exc:
        return f"unknown: {exc}"
    if newest is None:
        return "enabled"
    try:
        until = repo.store.object_retention(manifest_key(host, newest))
    except DrkitError as exc:
        return f"enabled; the newest snapshot's lock could not be read: {exc}"
    if until is None:
        return "enabled, but the newest snapshot is not locked"
    if until.year == dt.MAXYEAR:
        return "enabled; the newest snapshot is under legal hold"
    return f"enabled; the newest snapshot is locked until {until:%Y-%m-%d %H:%M} UTC"


def _add_retention(
    policy: Policy, repo: Repository, catalog: Catalog | None, now: dt.datetime, out: HostReport
) -> None:
    """What ``drkit prune`` would keep and why: prune's own dry run (nothing is written),
    as ``prune_one`` runs it, on the report's one read of the host."""
    from drkit.actions.prune import prune
    from drkit.actions.status import drilled_snapshots, newest_drill_used

    # A provider snapshot's retention is for the provider's copies (as prune_one).
    sources = {
        source_name(s): (None if isinstance(s, MachineImageConfig) else s.retention)
        for s in policy.source
    }
    try:
        result = prune(
            repo,
            policy.host,
            policy.retention,
            now=now,
            dry_run=True,
            drilled=drilled_snapshots(repo, policy.host, catalog),
            drilled_with=newest_drill_used(repo, policy.host),
            sources=sources,
        )
    except DrkitError as exc:
        out.retention_error = str(exc)
        return
    decided = {d.snapshot.id: d for d in result.decisions}
    rows = []
    for row in out.snapshots:
        d = decided.get(row.snapshot)
        if d is None:
            rows.append(row)
            continue
        rows.append(
            SnapshotRow(
                row.snapshot,
                row.time,
                row.complete,
                row.stored_bytes,
                row.by_source,
                d.keep,
                tuple(d.reasons),
            )
        )
    out.snapshots = rows
    if result.errors:
        out.retention_error = "; ".join(result.errors)
