"""What every action needs: open a policy's repository, pick a snapshot, read facts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from drkit import secrets
from drkit.errors import (
    DrkitError,
    IntegrityError,
    ObjectNotFound,
    RepositoryError,
    RestoreError,
    UsageError,
)
from drkit.logs import Log
from drkit.pipeline import chunked
from drkit.pipeline.age import Identity
from drkit.pipeline.chunk_index import IndexReader
from drkit.pipeline.codec import Digests, decode
from drkit.policy.models import Connection, Policy, RepositoryConfig, source_name
from drkit.remote.base import Runner
from drkit.repository.chunks import Chunks
from drkit.repository.documents import lazy_adapter, parse_document
from drkit.repository.factory import StoreOptions, open_store
from drkit.repository.layout import Repository, object_key
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord, snapshot_time
from drkit.repository.object_lock import ObjectLockGuard, object_lock_missing
from drkit.repository.store import Store
from drkit.repository.trust import Trust
from drkit.signing import Signers, SigningKey, read_signers


def policy_trust(policy: Policy, *, signing: bool = False) -> Trust:
    """Whom ``policy``'s host's snapshots and drill reports are trusted from: the keys
    the local policy pins, never anything the repository says. ``signing``: also load
    this machine's signing key (backup and drill write signed documents)."""
    enc = policy.encryption
    snapshots = Signers(read_signers(enc.signers, enc.signers_file))
    drills = Signers([*snapshots.keys, *enc.drill_signers])
    key = SigningKey.load() if signing else None
    return Trust({policy.host: snapshots}, {policy.host: drills}, signing_key=key)


def open_repository(policy: Policy, *, signing: bool = False) -> Repository:
    """The repository ``policy`` names, credentials resolved from their references, read
    with the trust the policy pins (``policy_trust``)."""
    return open_repository_at(policy.repository, policy_trust(policy, signing=signing))


def with_signing_key(repo: Repository, log: Log) -> Repository:
    """``repo`` with this machine's signing key, if it has one; else ``repo`` as it is,
    after saying why what it writes will not be stored (a drill still runs and reports
    locally without a key; its report is just not trusted in the repository)."""
    try:
        key = SigningKey.load()
    except DrkitError as exc:
        log(f"warning: {exc}")
        return repo
    return Repository(repo.store, dataclasses.replace(repo.trust, signing_key=key))


def open_repository_at(config: RepositoryConfig, trust: Trust | None = None) -> Repository:
    """The repository ``config`` names; without ``trust`` it reads no snapshot."""
    key_id = secrets.resolve(config.access_key_id) if config.access_key_id else None
    secret = secrets.resolve(config.secret_access_key) if config.secret_access_key else None
    options = StoreOptions(
        endpoint=config.endpoint,
        region=config.region,
        path_style=config.path_style,
        access_key_id=key_id,
        secret_access_key=secret,
        object_lock_days=config.immutable_days,
        object_lock_mode=config.immutable_mode,
    )
    store = open_store(config.url, options)
    if config.immutable_days > 0:
        # Every write (lock object, format marker, artifacts) first proves the bucket can
        # hold retention; reads (restore, verify, status) never pay for the check.
        inner = store
        store = ObjectLockGuard(
            inner,
            days=config.immutable_days,
            enabled=lambda: _object_lock_enabled(inner, config),
        )
    return Repository(store, trust)


# -- Object Lock capability ------------------------------------------------------

# Bucket checks done in this process (one drkit run): (repository URL, endpoint) ->
# Object Lock enabled. A fleet run sharing one bucket asks the server once.
_object_lock_checked: dict[tuple[str, str | None], bool] = {}
_object_lock_mutex = threading.Lock()


def require_object_lock(repo: Repository, config: RepositoryConfig, host: str | None) -> None:
    """Refuse a repository whose policy asks for Object Lock retention the bucket cannot hold.

    Nothing to check when ``config.immutable_days`` is 0. The answer is cached per
    repository URL for the rest of the process. Raises RepositoryError naming
    ``host`` (if given), the bucket and what to do; RepositoryError also when the
    server cannot say (never assume protection that may be missing).
    """
    if config.immutable_days <= 0:
        return
    try:
        enabled = _object_lock_enabled(repo.store, config)
    except RepositoryError as exc:
        if host and not str(exc).startswith(f"host {host}:"):
            raise RepositoryError(f"host {host}: {exc}") from None
        raise
    if not enabled:
        raise RepositoryError(object_lock_missing(repo.store.url, config.immutable_days, host))


def _object_lock_enabled(store: Store, config: RepositoryConfig) -> bool:
    key = (store.url, config.endpoint)
    with _object_lock_mutex:  # held during the request: concurrent hosts ask once
        if key not in _object_lock_checked:
            _object_lock_checked[key] = store.object_lock_enabled()
        return _object_lock_checked[key]


def open_runner(host: str, connection: Connection) -> Runner:
    """The runner that reaches a policy's host."""
    if connection.type == "local":
        from drkit.remote.local import LocalRunner

        return LocalRunner(host)
    if connection.type == "ssh":
        from drkit.remote.ssh import SshRunner

        return SshRunner(host, connection)
    raise UsageError(f"host {host}: connection type {connection.type!r} is not supported yet")


def policy_digest(policy: Policy) -> str:
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()


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


def digests_of(record: ArtifactRecord) -> Digests:
    return Digests(record.plain_size, record.plain_sha256, record.stored_size, record.stored_sha256)


def object_label(repo: Repository, manifest: Manifest, record: ArtifactRecord) -> str:
    return f"{repo.url}/{object_key(manifest.host, manifest.snapshot, record.key)}"


def read_artifact(
    repo: Repository,
    manifest: Manifest,
    record: ArtifactRecord,
    identities: list[Identity],
    consume: Callable[[BinaryIO], object],
    fetched: Callable[[int], object] | None = None,
) -> Digests:
    """Decrypt one artifact into ``consume``, whatever its format; checks every digest.

    ``fetched``: told the stored size of each chunk object read (chunked artifacts).

    Raises CryptoError when the identity does not fit, IntegrityError naming the
    object (or chunk) when anything was altered or is missing.
    """
    key = object_key(manifest.host, manifest.snapshot, record.key)
    label = object_label(repo, manifest, record)
    id_key = None
    if record.format == chunked.FORMAT:
        id_key = chunked.open_id_key(manifest.extra.get(chunked.ID_KEY_EXTRA), identities, label)
    if chunked.is_chunked(record.format):
        # The index is small (~70 bytes per chunk): check it whole before any chunk
        # is read, so that an altered index is named as such and feeds nothing.
        with repo.store.get(key) as stored:
            index = IndexReader(stored, label)
            for _ref in index:
                pass
        if index.stored_size != record.stored_size or index.stored_sha256 != record.stored_sha256:
            raise IntegrityError(f"{label}: stored digest does not match the manifest")
    with repo.store.get(key) as stored:
        if chunked.is_chunked(record.format):
            return chunked.decode(
                stored,
                lambda rset: Chunks(repo.store, manifest.host, rset),
                identities,
                consume,
                expected=digests_of(record),
                label=label,
                id_key=id_key,
                fetched=fetched,
            )
        return decode(stored, identities, consume, expected=digests_of(record), label=label)


def read_facts(repo: Repository, manifest: Manifest, identities: list[Identity]) -> dict[str, Any]:
    """Decrypt the snapshot's facts (needs the identity)."""
    record = manifest.facts
    if record is None:
        return {}
    out = io.BytesIO()
    key = object_key(manifest.host, manifest.snapshot, record.key)
    with repo.store.get(key) as stored:
        decode(
            stored,
            identities,
            lambda s: out.write(s.read()),
            expected=digests_of(record),
            label=object_label(repo, manifest, record),
        )
    label = object_label(repo, manifest, record)
    try:
        data = json.loads(out.getvalue())
    except ValueError:
        raise RepositoryError(f"{label}: unreadable facts (not JSON)") from None
    facts: dict[str, Any] = parse_document(_FACTS(), data, label, "facts")
    return facts


# Facts: one object per source name (what restore and drill compare against).
_FACTS = lazy_adapter(lambda: dict[str, dict[str, Any]])
