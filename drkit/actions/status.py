"""Freshness of a host's backups: RPO, what is due, the last drill.

Everything here reads the repository (the source of truth; the catalog is a
cache) and takes ``now`` from the caller, so a test's controlled clock and a
fresh machine agree with the machine that made the backups.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from drkit.actions.repository_access import open_repository
from drkit.errors import RepositoryError
from drkit.repository.documents import lazy_adapter, parse_document

if TYPE_CHECKING:
    from drkit.catalog.db import Catalog
from drkit.durations import format_duration, parse_duration
from drkit.policy.models import Policy, source_name
from drkit.repository.layout import HostSnapshots, Repository
from drkit.repository.manifest import Manifest, snapshot_time

# A drill that passed with warnings still proves the backup restores.
PASSED_DRILL = frozenset({"pass", "warn"})


def host_status(
    policy: Policy, catalog: Catalog | None, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Freshness from the repository itself, RPO breach, the last failed run (from the
    catalog) and the last drill (``last_drill``: repository reports and catalog;
    ``drill_failed``: that drill's verdict was fail; never drilled is not a failure).

    ``age`` is that of the stalest source on the host's schedule: the time since
    the newest complete snapshot holding it (a snapshot taken for a weekly
    source alone must not hide a daily dump that keeps failing). Sources with
    their own schedule are listed in ``sources`` but do not count for the RPO,
    unless every source has its own.
    """
    now = now or dt.datetime.now(dt.UTC)
    repo = open_repository(policy)
    view = repo.read_host(policy.host)
    committed = view.ids
    names = [source_name(s) for s in policy.source]
    regular = [source_name(s) for s in policy.source if not s.schedule] or names
    newest = newest_holding(repo, policy.host, names, view) if committed else {}
    times = [snapshot_time(newest[n].snapshot) if n in newest else None for n in regular]
    stalest = None if None in times else min(t for t in times if t is not None)
    age = now - stalest if stalest is not None else None
    rpo = parse_duration(policy.rpo) if policy.rpo else None
    breach = rpo is not None and (age is None or age > rpo)
    row: dict[str, Any] = {
        "host": policy.host,
        "repository": repo.url,
        "snapshots": len(committed),
        "last_snapshot": committed[-1] if committed else None,
        "age": format_duration(age) if age is not None else None,
        "age_seconds": int(age.total_seconds()) if age is not None else None,
        "rpo": policy.rpo,
        "breach": breach,
        "sources": {n: newest[n].snapshot if n in newest else None for n in names},
        # Reported, never counted: unsigned, wrongly signed or future-dated snapshots.
        "untrusted": [{"snapshot": r.snapshot, "reason": r.reason} for r in view.untrusted],
    }
    if catalog is not None:
        run = catalog.last_run(policy.host)
        if run is not None and run.status in ("failed", "partial"):
            row["last_error"] = run.error
    drill = last_drill(repo, policy.host, catalog)
    row["drill_failed"] = drill is not None and not drill.passed
    if drill is not None:
        row["last_drill"] = drill.as_dict(now)
    return row


# -- what ran last, per source ------------------------------------------------


def complete_manifests(
    repo: Repository, host: str, view: HostSnapshots | None = None
) -> Iterator[Manifest]:
    """The host's trusted complete snapshots' manifests, newest first.

    Foreign directories, unreadable and untrusted manifests are skipped: a
    corrupt or planted manifest must not stop the next backup (it makes the
    host look due, never fresh). Listing errors raise RepositoryError.
    """
    # ``view``: the host's snapshots already read (status reads every manifest once).
    for manifest in (view or repo.read_host(host)).newest_first():
        if manifest.status == "complete":
            yield manifest


def newest_holding(
    repo: Repository, host: str, names: Iterable[str], view: HostSnapshots | None = None
) -> dict[str, Manifest]:
    """For each source name, the newest complete manifest holding it (absent: none)."""
    wanted = set(names)
    found: dict[str, Manifest] = {}
    for manifest in complete_manifests(repo, host, view):
        for record in manifest.sources:
            if record.name in wanted and record.name not in found:
                found[record.name] = manifest
        if len(found) == len(wanted):
            break
    return found


@dataclass(frozen=True)
class SourceDue:
    """Whether one source's schedule has come due.

    ``slot``: the latest scheduled time (jitter included) at or before now.
    ``last_success``: start of the newest complete snapshot holding the
    source, if one exists at or after ``slot`` (older ones are not read: they
    would not change the answer).
    """

    source: str
    schedule: str | None
    slot: dt.datetime | None
    last_success: dt.datetime | None
    due: bool

    def as_dict(self) -> dict[str, Any]:
        def stamp(t: dt.datetime | None) -> str | None:
            return t.isoformat(timespec="seconds") if t else None

        return {
            "source": self.source,
            "schedule": self.schedule,
            "slot": stamp(self.slot),
            "last_success": stamp(self.last_success),
            "due": self.due,
        }


def jitter_seconds(policy: Policy) -> int:
    return int(parse_duration(policy.jitter).total_seconds()) if policy.jitter else 0


def due_sources(policy: Policy, repo: Repository, now: dt.datetime) -> list[SourceDue]:
    """Each source's due-ness, in policy order.

    A source runs on its own ``schedule``, else the host's; with neither it
    is never due. Due means nothing holding it ever completed, or the newest
    complete snapshot holding it started before the latest slot <= ``now``
    (so each slot runs once, and missed slots run once). Manifests are read
    newest first only back to the oldest slot in question.
    """
    from drkit.schedule import last_slot  # croniter: only when schedules are asked about

    jitter = jitter_seconds(policy)
    schedules: dict[str, str] = {}
    slots: dict[str, dt.datetime | None] = {}
    for src in policy.source:
        expr = src.schedule or policy.schedule
        if expr is not None:
            name = source_name(src)
            schedules[name] = expr
            slots[name] = last_slot(expr, now, jitter_seconds=jitter, key=policy.host)
    found: dict[str, dt.datetime] = {}
    pending = set(schedules)
    if pending:
        for manifest in complete_manifests(repo, policy.host):
            started = snapshot_time(manifest.snapshot)
            for record in manifest.sources:
                if record.name in pending:
                    found[record.name] = started
                    pending.discard(record.name)
            # Past a source's slot, an older success cannot make it not due.
            pending = {n for n in pending if _open(slots[n], started)}
            if not pending:
                break
    out: list[SourceDue] = []
    for src in policy.source:
        name = source_name(src)
        expr = schedules.get(name)
        if expr is None:
            out.append(SourceDue(name, None, None, None, False))
            continue
        slot, last = slots[name], found.get(name)
        due = last is None or (slot is not None and last < slot)
        out.append(SourceDue(name, expr, slot, last, due))
    return out


def _open(slot: dt.datetime | None, started: dt.datetime) -> bool:
    """Whether a snapshot that started at ``started`` or earlier may still be the success
    that makes a source with ``slot`` not due (a slot None needs any success at all)."""
    return slot is None or started >= slot


# -- drills --------------------------------------------------------------------


@dataclass(frozen=True)
class DrillSummary:
    """One drill's outcome, from its report in the repository or from the catalog."""

    drill: str
    snapshot: str
    verdict: str
    started: dt.datetime  # timezone-aware
    rto_seconds: float | None = None
    used: tuple[str, ...] = ()  # every snapshot the drill restored from (reports since 0.1)

    @property
    def passed(self) -> bool:
        return self.verdict in PASSED_DRILL

    def as_dict(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """For ``--json``; with ``now``, also ``age`` (e.g. "3d2h")."""
        out: dict[str, Any] = {
            "drill": self.drill,
            "snapshot": self.snapshot,
            "verdict": self.verdict,
            "started": self.started.isoformat(timespec="seconds"),
            "rto_seconds": self.rto_seconds,
        }
        if now is not None:
            out["age"] = format_duration(max(now - self.started, dt.timedelta(0)))
        return out


class _DrillDoc(BaseModel):
    """The fields of a drill report that status and prune decide from."""

    model_config = ConfigDict(extra="ignore", defer_build=True)
    drill_id: StrictStr
    snapshot: Annotated[StrictStr, Field(max_length=64)]
    verdict: Annotated[StrictStr, Field(max_length=16)]
    started: dt.datetime
    rto_seconds: Annotated[float, Field(allow_inf_nan=False)] | None = None
    snapshots: list[StrictStr] = []


_DRILL_DOC = lazy_adapter(lambda: _DrillDoc)


def drill_reports(repo: Repository, host: str) -> list[DrillSummary]:
    """Each trusted drill report of ``host`` in the repository, oldest first.

    Reports are ``<host>/drills/<id>.json``, signed by a machine the policy trusts
    for drill reports (Repository.drill_reports); unsigned, wrongly signed,
    malformed and future-dated ones are left out: prune and status never decide
    from them. Listing errors raise RepositoryError.
    """
    out: list[DrillSummary] = []
    trusted, _rejected = repo.drill_reports(host)
    latest = repo.trust.latest_acceptable()
    for data in trusted:
        try:
            doc: _DrillDoc = parse_document(
                _DRILL_DOC(), data, f"{repo.url}/{host}/drills", "drill report"
            )
        except RepositoryError:
            continue
        started = _aware(doc.started)
        if started > latest:
            continue
        out.append(
            DrillSummary(
                doc.drill_id,
                doc.snapshot,
                doc.verdict,
                started,
                doc.rto_seconds,
                tuple(doc.snapshots),
            )
        )
    return sorted(out, key=lambda d: (d.started, d.drill))


def last_drill(repo: Repository, host: str, catalog: Catalog | None = None) -> DrillSummary | None:
    """The most recently started drill of ``host``: from the repository's reports (what
    a fresh machine sees) or the catalog (a drill whose report could not be stored)."""
    candidates = drill_reports(repo, host)[-1:]
    row = catalog.last_drill(host) if catalog is not None else None
    if row is not None:
        candidates.append(
            DrillSummary(
                row.drill_id, row.snapshot_id, row.verdict, _aware(row.started), row.rto_seconds
            )
        )
    return max(candidates, key=lambda d: d.started) if candidates else None


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def drill_verdicts(repo: Repository, host: str) -> list[tuple[str, str, str]]:
    """(started, snapshot, verdict) of each drill report in the repository, oldest first."""
    return [(d.started.isoformat(), d.snapshot, d.verdict) for d in drill_reports(repo, host)]


def drilled_snapshots(
    repo: Repository, host: str, catalog: Catalog | None = None
) -> frozenset[str]:
    """Ids of snapshots that passed a drill, from the repository's reports and the catalog."""
    ids = {snap for _, snap, verdict in drill_verdicts(repo, host) if verdict in PASSED_DRILL}
    if catalog is not None:
        drill = catalog.last_drill(host)
        if drill is not None and drill.verdict in PASSED_DRILL:
            ids.add(drill.snapshot_id)
    return frozenset(ids)


def newest_drill_used(repo: Repository, host: str) -> frozenset[str]:
    """The older snapshots the newest passing drill also restored from (a drill takes
    each source from the newest snapshot holding it; its ``snapshot`` is the newest)."""
    passed = [d for d in drill_reports(repo, host) if d.passed]
    return frozenset(passed[-1].used) - {passed[-1].snapshot} if passed else frozenset()


def last_drill_passed(repo: Repository, host: str) -> bool | None:
    """True/False for the newest drill's verdict in the repository; None if no drill ran."""
    reports = drill_reports(repo, host)
    return reports[-1].passed if reports else None
