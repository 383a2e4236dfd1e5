"""Prune one host's snapshots by its retention policy; clear leftovers of failed runs.

``prune`` combines the pure ``retention.decide`` with what only the
repository knows: which snapshots are committed, complete, and under S3
Object Lock retention. It then

1. removes the committed snapshots retention does not keep (manifest first,
   so a half-removed snapshot is never listed as committed);
2. removes snapshot directories without a manifest whose newest object is
   older than ``grace`` (a failed or killed run);
3. on S3, aborts this host's multipart uploads started more than ``grace``
   ago (a killed run's dangling upload, billed until aborted).

It never removes the newest complete snapshot, the newest snapshot that
passed a drill, or anything under Object Lock retention (each kept with its
reason). Run it under ``locks.host_lock`` so a backup of the same host is
not running meanwhile: ``grace`` is only the second line of defence for an
in-progress snapshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from drkit.actions.repack import collect_packs, repack_share
from drkit.durations import format_duration
from drkit.errors import DrkitError, ObjectNotFound, RepositoryError
from drkit.logs import Log
from drkit.repository.layout import Repository, manifest_key, snapshot_prefix
from drkit.repository.manifest import Manifest, snapshot_time
from drkit.repository.store import Store
from drkit.retention import Decision, RetentionLike, SnapInfo, decide, describe
from drkit.signing import SigningKey

DEFAULT_GRACE = dt.timedelta(hours=24)
# Object Lock "legal hold" has no end date.
FOREVER = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclass
class PruneResult:
    """What prune did (or, with ``dry_run``, would do) for one host."""

    host: str
    dry_run: bool
    policy: str
    decisions: list[Decision] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    incomplete_removed: list[str] = field(default_factory=list)
    incomplete_kept: list[tuple[str, str]] = field(default_factory=list)
    uploads_aborted: list[str] = field(default_factory=list)
    chunks_removed: int = 0  # deduplicated chunk objects no kept snapshot references
    packs_removed: int = 0  # packs no kept snapshot references
    packs_locked: list[str] = field(default_factory=list)  # unreferenced, kept: Object Lock
    packs_repacked: int = 0  # mostly garbage: live chunks moved to new packs, then removed
    packs_written: int = 0  # the new packs
    moves_removed: int = 0  # move records no kept snapshot needs any more
    would_repack: list[str] = field(default_factory=list)  # dry run
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "dry_run": self.dry_run,
            "policy": self.policy,
            "snapshots": [
                {
                    "snapshot": d.snapshot.id,
                    "time": d.snapshot.time.isoformat(),
                    "complete": d.snapshot.complete,
                    "keep": d.keep,
                    "reasons": d.reasons,
                }
                for d in self.decisions
            ],
            "removed": self.removed,
            "freed_bytes": self.freed_bytes,
            "incomplete_removed": self.incomplete_removed,
            "incomplete_kept": [{"snapshot": s, "reason": r} for s, r in self.incomplete_kept],
            "uploads_aborted": self.uploads_aborted,
            "chunks_removed": self.chunks_removed,
            "packs_removed": self.packs_removed,
            "packs_locked": self.packs_locked,
            "packs_repacked": self.packs_repacked,
            "packs_written": self.packs_written,
            "moves_removed": self.moves_removed,
            "would_repack": self.would_repack,
            "skipped": [{"snapshot": s, "reason": r} for s, r in self.skipped],
            "errors": self.errors,
        }


UNTRUSTED = "unreadable or untrusted"


def prune(
    repo: Repository,
    host: str,
    retention: RetentionLike,
    *,
    now: dt.datetime,
    dry_run: bool,
    drilled: AbstractSet[str] = frozenset(),
    drilled_with: AbstractSet[str] = frozenset(),
    grace: dt.timedelta = DEFAULT_GRACE,
    sources: Mapping[str, RetentionLike | None] | None = None,
    log: Log = lambda _msg: None,
    repack: float | None = None,
) -> PruneResult:
    """Apply ``retention`` to ``host``'s snapshots in ``repo``.

    ``drilled``: ids of snapshots that passed a drill. ``drilled_with``: the older
    snapshots the newest passing drill also restored from (all kept). ``sources``: the
    policy's source names with their own retention (or None): the newest
    complete snapshot holding each source is kept, and a source's retention
    keeps the snapshots it selects among those holding it (it can lengthen
    the host's retention, not shorten it: a snapshot is removed whole).
    ``repack``: the garbage share over which a pack is repacked (None: ``$DRKIT_REPACK``,
    unset: none is); repacking signs a move record with this machine's key
    (actions/repack.py), loaded here when the repository was opened without it.
    Errors removing one object are collected in ``errors`` (the rest goes on);
    listing errors raise RepositoryError naming the host.

    A listing is not trusted to be whole (an eventually consistent store may miss a
    key once): a snapshot directory listed without a manifest, or whose listed
    manifest then read as absent, has its manifest asked for by key before it counts
    as incomplete; one that is there but cannot be read blocks chunk collection.
    """
    result = PruneResult(host, dry_run, describe(retention))
    manifests, rejected, incomplete = _census(repo, host, result, log)
    snaps = [
        SnapInfo.of(sid, complete=manifests[sid].status == "complete") for sid in sorted(manifests)
    ]

    pinned = _source_pins(snaps, manifests, sources or {}, now)
    for snap in snaps:
        if snap.id in drilled_with:
            pinned.setdefault(snap.id, []).append("also restored by the newest passing drill")
    first = _decide(snaps, manifests, retention, now, drilled=drilled, pinned=pinned)
    locks = ObjectLocks(repo.store)
    locked = _lock_pins(locks, repo, host, first, now, pinned, result)
    result.decisions = _decide(
        snaps, manifests, retention, now, drilled=drilled, locked=locked, pinned=pinned
    )

    verb = "would remove" if dry_run else "removing"
    for d in sorted(result.decisions, key=lambda d: d.snapshot):  # oldest first
        if d.keep:
            continue
        sid = d.snapshot.id
        log(f"{host}: {verb} snapshot {sid}: {d.reasons[0]}")
        if _remove(repo, host, sid, dry_run, result):
            result.removed.append(sid)
            # Chunks it shares are freed (and counted) by collect_packs, if at all.
            shared = sum(a.new_bytes for a in manifests[sid].artifacts)
            result.freed_bytes += manifests[sid].stored_bytes - shared

    with _naming(host):
        _prune_incomplete(repo, host, incomplete, locks, now, grace, dry_run, result, log)
        _abort_uploads(repo.store, host, now, grace, dry_run, result, log)
    if rejected:
        # Their chunk references are unknown or not to be believed: remove no chunk.
        sid, why = rejected[0]
        more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
        result.errors.append(
            f"host {host}: chunks not collected: snapshot {sid}{more} is {UNTRUSTED}: {why}"
        )
    else:
        # Every snapshot still committed keeps its chunks: those retention keeps, and
        # those it would remove but that could not be (still listed, still restorable).
        gone = set(result.removed)
        kept = [m for sid, m in manifests.items() if sid not in gone]
        share = _repack_share(repack, result)
        if share is not None and not dry_run:
            repo = _with_signing_key(repo, host, result)
        with _naming(host):
            gc = collect_packs(
                repo, host, kept, now=now, grace=grace, dry_run=dry_run, log=log, repack=share
            )
        result.chunks_removed, result.errors = gc.removed, result.errors + gc.errors
        result.packs_removed, result.packs_locked = gc.packs_removed, gc.locked_kept
        result.packs_repacked, result.packs_written = gc.packs_repacked, gc.packs_written
        result.moves_removed, result.would_repack = gc.moves_removed, gc.would_repack
        result.freed_bytes += gc.freed_bytes
    return result


def _repack_share(repack: float | None, result: PruneResult) -> float | None:
    if repack is not None:
        return repack
    try:
        return repack_share()
    except DrkitError as exc:
        result.errors.append(f"host {result.host}: packs not repacked: {exc}")
        return None


def _with_signing_key(repo: Repository, host: str, result: PruneResult) -> Repository:
    """``repo`` able to sign the move records of a repack: this machine's key, if the
    repository was opened without one (prune does not sign otherwise)."""
    if repo.trust.signing_key is not None:
        return repo
    try:
        key = SigningKey.load()
    except DrkitError as exc:
        result.errors.append(f"host {host}: packs not repacked: {exc}")
        return repo
    return Repository(repo.store, dataclasses.replace(repo.trust, signing_key=key))


def _census(
    repo: Repository, host: str, result: PruneResult, log: Log
) -> tuple[dict[str, Manifest], list[tuple[str, str]], list[str]]:
    """The host's snapshots as prune sees them: (trusted manifests by id, untrusted ids
    with why, incomplete ids). Ids that are no drkit snapshot id and untrusted snapshots
    are named in ``result.skipped``. A snapshot listed without its manifest (or whose
    listed manifest then read as absent) has it asked for by key before it counts as
    incomplete."""
    listed: dict[str, bool] = {}  # snapshot id -> its manifest was listed
    with _naming(host):
        for ref in repo.snapshots(host):
            try:
                snapshot_time(ref.snapshot)
            except ValueError:
                result.skipped.append((ref.snapshot, "not a drkit snapshot id: left alone"))
                continue
            listed[ref.snapshot] = ref.committed
        # Only trusted snapshots count for retention or are removed; the others are left
        # alone and named (a planted snapshot must neither push out nor shield real ones).
        view = repo.read_host(host)
    rejected = [(r.snapshot, r.reason) for r in view.untrusted]
    trusted = {m.snapshot: m for m in view.trusted}
    incomplete: list[str] = []
    for sid, was_committed in listed.items():
        if sid in trusted or sid in {r for r, _ in rejected}:
            continue
        found = _unlisted_manifest(repo, host, sid, was_committed)
        if isinstance(found, Manifest):
            log(f"{host}: snapshot {sid}: its manifest was missing from a listing; read by key")
            trusted[sid] = found
        elif found is None:
            incomplete.append(sid)
        else:
            rejected.append((sid, found))
    for sid, reason in rejected:
        result.skipped.append((sid, f"{UNTRUSTED}, left alone: {reason}"))
    return trusted, rejected, incomplete


def _lock_pins(
    locks: ObjectLocks,
    repo: Repository,
    host: str,
    first: list[Decision],
    now: dt.datetime,
    pinned: dict[str, list[str]],
    result: PruneResult,
) -> dict[str, dt.datetime]:
    """Object Lock of the snapshots retention would remove (only those need it read):
    their lock's end by id; a legal hold or an unreadable lock pins the snapshot."""
    locked: dict[str, dt.datetime] = {}
    for d in first:
        if d.keep:
            continue
        sid = d.snapshot.id
        until, problem = _snapshot_lock(locks, repo, host, sid, now)
        if problem is not None:
            result.errors.append(f"host {host}: snapshot {sid}: {problem}")
            pinned.setdefault(sid, []).append(problem)
        elif until == FOREVER:
            pinned.setdefault(sid, []).append("object lock legal hold")
        elif until is not None:
            locked[sid] = until
    return locked


@contextlib.contextmanager
def _naming(host: str) -> Iterator[None]:
    """Let a RepositoryError out (of a listing) with the host in front of its message."""
    try:
        yield
    except RepositoryError as exc:
        if str(exc).startswith(f"host {host}:"):
            raise
        raise RepositoryError(f"host {host}: {exc}") from exc


def _unlisted_manifest(
    repo: Repository, host: str, sid: str, was_listed: bool
) -> Manifest | str | None:
    """The manifest of snapshot ``sid``, which the host's listings showed without one
    (``was_listed`` False) or with one that was not read (it answered absent), asked for
    by key: the Manifest; None if there is none (an incomplete snapshot); else why it
    cannot be used (unreadable, untrusted, or there and absent at once: what the store
    says of it is not certain)."""
    try:
        if not was_listed and repo.store.stat(manifest_key(host, sid)) is None:
            return None
        return repo.manifest(host, sid)
    except ObjectNotFound as exc:
        return f"its manifest is there, then absent ({exc})"
    except RepositoryError as exc:
        return str(exc)


def _decide(
    snaps: list[SnapInfo],
    manifests: Mapping[str, Manifest],
    retention: RetentionLike,
    now: dt.datetime,
    **guards: Any,
) -> list[Decision]:
    """``decide`` for snapshots holding data, and apart for those holding only provider
    snapshots (a backup commits those after its data snapshot): the host's rules apply
    to each group alone, so a provider snapshot's record never takes a data snapshot's
    place in ``keep_last`` or in a calendar bucket. Newest first."""
    records = [s for s in snaps if _provider_only(manifests[s.id])]
    data = [s for s in snaps if s not in records]
    out = decide(data, retention, now, **guards)
    if records:
        out += decide(records, retention, now, **guards)
    return sorted(out, key=lambda d: d.snapshot, reverse=True)


def _provider_only(manifest: Manifest) -> bool:
    return bool(manifest.sources) and all(s.kind == "snapshot" for s in manifest.sources)


def _source_pins(
    snaps: list[SnapInfo],
    manifests: Mapping[str, Manifest],
    sources: Mapping[str, RetentionLike | None],
    now: dt.datetime,
) -> dict[str, list[str]]:
    """Per-source guards: the newest complete snapshot of each source, and what a
    source's own retention keeps among the snapshots holding it."""
    pinned: dict[str, list[str]] = {}
    for name, own in sources.items():
        holding = [s for s in snaps if manifests[s.id].source(name) is not None]
        complete = [s for s in holding if s.complete]
        if complete:
            newest = max(complete)
            pinned.setdefault(newest.id, []).append(f"newest complete snapshot of source {name}")
        if own is None:
            continue
        for d in decide(holding, own, now):
            if d.keep:
                pinned.setdefault(d.snapshot.id, []).extend(
                    f"source {name}: {r}" for r in d.reasons if not r.startswith("newest complete")
                )
    return {k: v for k, v in pinned.items() if v}


def _remove(repo: Repository, host: str, sid: str, dry_run: bool, result: PruneResult) -> bool:
    if dry_run:
        return True
    try:
        repo.delete_snapshot(host, sid)
    except DrkitError as exc:
        result.errors.append(f"host {host}: could not remove snapshot {sid}: {exc}")
        return False
    return True


@dataclass(frozen=True)
class Incomplete:
    """A snapshot directory without a manifest: left by an interrupted backup (or one
    still running). ``age``: since its newest object; prune removes it once that is
    over the grace period, at ``prunable_after``."""

    snapshot: str
    age: dt.timedelta
    grace: dt.timedelta
    prunable_after: dt.datetime

    @property
    def why(self) -> str:
        return (
            f"no manifest (an interrupted or running backup), {format_duration(self.age)} "
            f"old: younger than the grace period {format_duration(self.grace)}, "
            f"prune removes it after {_stamp(self.prunable_after)}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "age": format_duration(self.age),
            "age_seconds": int(self.age.total_seconds()),
            "prunable_after": _stamp(self.prunable_after),
        }


def incomplete_snapshot(
    repo: Repository, host: str, sid: str, now: dt.datetime, grace: dt.timedelta = DEFAULT_GRACE
) -> Incomplete:
    """How old the uncommitted snapshot ``sid`` is and when prune will take it."""
    objects = list(repo.store.list(snapshot_prefix(host, sid)))
    newest = max([snapshot_time(sid), *(o.modified for o in objects)])
    return Incomplete(sid, now - newest, grace, newest + grace)


def incomplete_snapshots(
    repo: Repository, host: str, now: dt.datetime, grace: dt.timedelta = DEFAULT_GRACE
) -> list[Incomplete]:
    """Every uncommitted snapshot directory of ``host`` named like a drkit snapshot."""
    out = []
    for ref in repo.snapshots(host):
        if ref.committed:
            continue
        try:
            snapshot_time(ref.snapshot)
        except ValueError:
            continue  # not a drkit snapshot id: prune leaves it alone too
        out.append(incomplete_snapshot(repo, host, ref.snapshot, now, grace))
    return out


def _prune_incomplete(
    repo: Repository,
    host: str,
    incomplete: list[str],
    locks: ObjectLocks,
    now: dt.datetime,
    grace: dt.timedelta,
    dry_run: bool,
    result: PruneResult,
    log: Log,
) -> None:
    """Remove snapshot directories without a manifest once they are older than ``grace``."""
    for sid in incomplete:
        left = incomplete_snapshot(repo, host, sid, now, grace)
        if left.age <= grace:
            result.incomplete_kept.append((sid, left.why))
            continue
        until, problem = _snapshot_lock(locks, repo, host, sid, now)
        if problem is not None:
            result.errors.append(f"host {host}: incomplete snapshot {sid}: {problem}")
            result.incomplete_kept.append((sid, f"no manifest; {problem}"))
            continue
        if until is not None:
            why = "legal hold" if until == FOREVER else f"retention until {_stamp(until)}"
            result.incomplete_kept.append((sid, f"no manifest; object lock {why}"))
            continue
        log(f"{host}: {'would remove' if dry_run else 'removing'} incomplete snapshot {sid}")
        if _remove(repo, host, sid, dry_run, result):
            result.incomplete_removed.append(sid)


def _abort_uploads(
    store: Store,
    host: str,
    now: dt.datetime,
    grace: dt.timedelta,
    dry_run: bool,
    result: PruneResult,
    log: Log,
) -> None:
    """Abort this host's multipart uploads started more than ``grace`` ago (S3; a local
    store has none)."""
    for key, upload_id, initiated in store.list_incomplete_uploads(f"{host}/"):
        if now - initiated <= grace:
            continue
        label = f"{key} (upload {upload_id})"
        log(f"{host}: {'would abort' if dry_run else 'aborting'} stale multipart upload {label}")
        if dry_run:
            result.uploads_aborted.append(label)
            continue
        try:
            store.abort_upload(key, upload_id)
            result.uploads_aborted.append(label)
        except DrkitError as exc:
            result.errors.append(f"host {host}: could not abort upload {label}: {exc}")


def _snapshot_lock(
    locks: ObjectLocks, repo: Repository, host: str, sid: str, now: dt.datetime
) -> tuple[dt.datetime | None, str | None]:
    """(latest future retain-until among the snapshot's objects or None, problem or None).

    If the retention cannot be read the problem says so and the caller keeps
    the snapshot: removing what might be protected is the worse mistake.
    """
    if not locks.enabled:
        return None, None
    latest: dt.datetime | None = None
    for info in repo.store.list(snapshot_prefix(host, sid)):
        try:
            until = locks.retain_until(info.key)
        except DrkitError as exc:
            return None, f"kept: {exc}"
        if until is not None and until > now and (latest is None or until > latest):
            latest = until
    return latest, None


class ObjectLocks:
    """Reads the Object Lock retention of a store's objects for one prune.

    Whether the store holds retention at all is asked once: a store without Object
    Lock (a local directory, a plain bucket) has no locked object, and then no
    snapshot's objects are listed to ask.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._enabled: bool | None = None

    @property
    def enabled(self) -> bool:
        """True if the store may hold retention (read once)."""
        if self._enabled is None:
            try:
                self._enabled = self.store.object_lock_enabled()
            except RepositoryError:
                self._enabled = True  # cannot tell: ask each object rather than assume none
        return self._enabled

    def retain_until(self, key: str) -> dt.datetime | None:
        """When ``key``'s retention ends (FOREVER under legal hold); None if unlocked.

        Raises DrkitError naming the object if the server does not answer.
        """
        return self.store.object_retention(key)


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
