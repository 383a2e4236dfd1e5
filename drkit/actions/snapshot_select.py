"""Which snapshot(s) an action reads: one whole snapshot (verify), or per source the
newest complete snapshot holding it (restore, drill: an ``Assembly``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from drkit.errors import ObjectNotFound, RestoreError, UsageError
from drkit.policy.models import Policy, source_name
from drkit.repository.layout import Repository
from drkit.repository.manifest import Manifest, SourceRecord, snapshot_time


def select_snapshot(
    repo: Repository, host: str, snapshot: str | None = None, at: dt.datetime | None = None
) -> Manifest:
    """The named snapshot, else the newest committed one (at or before ``at``).

    For one whole snapshot (verify). A restore assembles per source: ``select_sources``.
    """
    if snapshot:
        return repo.manifest(host, snapshot)
    candidates = repo.read_host(host).trusted
    if at is not None:
        candidates = [m for m in candidates if snapshot_time(m.snapshot) <= at]
    if candidates:
        return candidates[-1]
    when = f" at or before {at.isoformat()}" if at else ""
    raise ObjectNotFound(f"{repo.url}: host {host} has no trusted committed snapshot{when}")


Pick = tuple[Manifest, SourceRecord]


@dataclass(frozen=True)
class Assembly:
    """What a restore restores: per source, the snapshot it comes from.

    ``picks`` maps a source name to (manifest of its snapshot, its record there).
    ``anchor`` is the snapshot named by ``--snapshot`` (None otherwise); ``as_of``
    says which point in time the picks are the newest for, for people.
    """

    host: str
    picks: dict[str, Pick]
    as_of: str = "now"
    anchor: str | None = None

    @classmethod
    def of(cls, manifest: Manifest, only: list[str] | None = None) -> Assembly:
        """Every source of one snapshot (or those in ``only``; an unknown one is an error)."""
        names = {s.name for s in manifest.sources}
        unknown = sorted(set(only or ()) - names)
        if unknown:
            raise RestoreError(
                f"host {manifest.host}: snapshot {manifest.snapshot} has no source "
                f"{', '.join(unknown)} (it has: {', '.join(sorted(names))})"
            )
        picks = {s.name: (manifest, s) for s in manifest.sources if not only or s.name in only}
        return cls(manifest.host, picks, f"snapshot {manifest.snapshot}", manifest.snapshot)

    @property
    def manifests(self) -> list[Manifest]:
        """The distinct snapshots used, newest first."""
        unique = {m.snapshot: m for m, _ in self.picks.values()}
        return [unique[k] for k in sorted(unique, reverse=True)]

    @property
    def newest(self) -> Manifest:
        return self.manifests[0]

    @property
    def oldest(self) -> Manifest:
        return self.manifests[-1]

    def snapshot_of(self, source: str) -> str:
        return self.picks[source][0].snapshot


def select_sources(
    repo: Repository,
    host: str,
    needed: set[str],
    snapshot: str | None = None,
    at: dt.datetime | None = None,
    *,
    optional: set[str] | None = None,
) -> Assembly:
    """For each needed source, the newest complete snapshot holding it, at or before the
    point: ``snapshot`` (that snapshot first, then older ones for what it lacks), else
    ``at``, else the newest. With ``backup --due`` a snapshot may hold a subset of the
    host's sources (the database every 6 h, certificates weekly): each source comes
    from its own newest snapshot rather than all from the newest one holding them all.

    ``optional``: sources taken if a snapshot holds them, never refused (provider
    snapshots: the plan points to ``drkit restore-machine``). Reads manifests
    newest first and stops once every source is found. Raises
    ObjectNotFound when there is no committed snapshot at the point, or when no
    snapshot holds a needed source (naming it, and where the others would come from).
    """
    if not needed:
        raise UsageError(f"host {host}: the policy has no data source to restore")
    anchor = repo.manifest(host, snapshot) if snapshot else None  # raises if not trusted
    trusted = {m.snapshot: m for m in repo.read_host(host).trusted}
    ids = sorted(trusted)
    if snapshot:
        ids, as_of = [s for s in ids if s <= snapshot], f"snapshot {snapshot}"
    elif at is not None:
        ids, as_of = [s for s in ids if snapshot_time(s) <= at], at.isoformat(timespec="seconds")
    else:
        as_of = "now"
    when = f" at or before {as_of}" if snapshot or at else ""
    if not ids:
        raise ObjectNotFound(f"{repo.url}: host {host} has no trusted committed snapshot{when}")
    picks: dict[str, Pick] = {}
    wanted = needed | (optional or set())
    for sid in reversed(ids):
        manifest = anchor if anchor and sid == snapshot else trusted[sid]
        if manifest.status != "complete":
            continue
        for record in manifest.sources:
            if record.name in wanted and record.name not in picks:
                picks[record.name] = (manifest, record)
        if len(picks) == len(wanted):
            break
    missing = sorted(needed - set(picks))
    if missing:
        held = sorted(set(picks) & needed)
        found = "; ".join(f"{n} from {picks[n][0].snapshot}" for n in held)
        hint = " ".join(f"--only {n}" for n in held)
        raise ObjectNotFound(
            f"{repo.url}: host {host}: no complete snapshot{when} holds source(s) "
            f"{', '.join(missing)}; nothing was restored"
            + (f" (found: {found}; to restore those alone: {hint})" if held else "")
        )
    return Assembly(host, picks, as_of, snapshot)


def data_sources(policy: Policy, only: list[str] | None = None) -> set[str]:
    """Names of the policy's sources a restore needs (provider snapshots excluded): all,
    or those in ``only``. Raises UsageError naming an ``only`` entry that is not one."""
    names = {source_name(s) for s in policy.source if getattr(s, "kind", "") != "snapshot"}
    unknown = sorted(set(only or ()) - names)
    if unknown:
        raise UsageError(
            f"host {policy.host}: --only {', '.join(unknown)}: not a data source of the policy "
            f"(it has: {', '.join(sorted(names))}; a machine is booted from a provider "
            "snapshot with drkit restore-machine)"
        )
    return names & set(only) if only else names


def provider_snapshots(policy: Policy) -> set[str]:
    """Names of the policy's provider snapshot sources (not restored as data)."""
    return {source_name(s) for s in policy.source if getattr(s, "kind", "") == "snapshot"}
