"""What every action needs: open a policy's repository, pick a snapshot, read facts."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from typing import Any

from drkit import secrets
from drkit.errors import DrkitError, ObjectNotFound, UsageError
from drkit.pipeline.age import Identity
from drkit.pipeline.codec import Digests, decode
from drkit.policy.models import Connection, Policy, RepositoryConfig, source_name
from drkit.remote.base import Runner
from drkit.repository.factory import StoreOptions, open_store
from drkit.repository.layout import Repository, object_key
from drkit.repository.manifest import ArtifactRecord, Manifest, snapshot_time


def open_repository(config: RepositoryConfig) -> Repository:
    """The repository a policy names, credentials resolved from their references."""
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
    return Repository(open_store(config.url, options))


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
    repo: Repository,
    host: str,
    snapshot: str | None = None,
    at: dt.datetime | None = None,
    *,
    holding: set[str] | None = None,
) -> Manifest:
    """The named snapshot, else the newest committed one (at or before ``at``).

    ``holding``: source names the snapshot must contain. With per-source
    schedules (``backup --due``) the newest snapshot may hold only a weekly
    source; a whole-host restore must not silently take that one.
    """
    if snapshot:
        return repo.manifest(host, snapshot)
    candidates = [r.snapshot for r in repo.snapshots(host) if r.committed]
    if at is not None:
        candidates = [s for s in candidates if snapshot_time(s) <= at]
    for sid in reversed(candidates):
        manifest = repo.manifest(host, sid)
        if not holding or holding <= {s.name for s in manifest.sources}:
            return manifest
    when = f" at or before {at.isoformat()}" if at else ""
    what = f" holding {', '.join(sorted(holding))}" if holding and candidates else ""
    raise ObjectNotFound(f"{repo.url}: host {host} has no committed snapshot{what}{when}")


def data_sources(policy: Policy, only: list[str] | None = None) -> set[str]:
    """Names of the policy's sources a restore needs (provider snapshots excluded)."""
    names = {source_name(s) for s in policy.source if getattr(s, "kind", "") != "snapshot"}
    return names & set(only) if only else names


def digests_of(record: ArtifactRecord) -> Digests:
    return Digests(record.plain_size, record.plain_sha256, record.stored_size, record.stored_sha256)


def object_label(repo: Repository, manifest: Manifest, record: ArtifactRecord) -> str:
    return f"{repo.url}/{object_key(manifest.host, manifest.snapshot, record.key)}"


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
    try:
        facts: dict[str, Any] = json.loads(out.getvalue())
    except ValueError:
        raise DrkitError(f"{object_label(repo, manifest, record)}: facts are not JSON") from None
    return facts
