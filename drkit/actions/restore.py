"""Restore a snapshot's sources onto a target, in dependency order.

Before anything is applied, every artifact to be used is checked against the
manifest's stored digest (one cheap read), so a tampered or truncated object
stops the restore before it touches the target. While applying, the age
layer authenticates every chunk and the plain digest is checked at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from drkit.actions.common import digests_of, object_label, read_facts
from drkit.errors import IntegrityError, RestoreError
from drkit.pipeline.age import Identity
from drkit.pipeline.codec import decode
from drkit.pipeline.streams import CHUNK, HashingReader
from drkit.policy.models import Policy, source_name
from drkit.remote.base import Runner
from drkit.repository.layout import Repository, object_key
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord
from drkit.sources.base import RestoreOptions
from drkit.sources.registry import build_source

# roles/globals and databases -> env and files -> certificates -> data services -> apps
ORDER = {
    "postgres": 0,
    "env": 1,
    "files": 1,
    "caddy": 2,
    "certbot": 2,
    "nats": 3,
    "docker_volume": 3,
    "pm2": 4,
    "command": 5,
    "snapshot": 9,
}


@dataclass
class RestoreResult:
    host: str
    snapshot: str
    steps: list[str] = field(default_factory=list)
    seconds: float = 0.0


def plan(manifest: Manifest, only: list[str] | None) -> list[SourceRecord]:
    """The sources to restore, in dependency order. Unknown names in ``only`` are an error."""
    names = {s.name for s in manifest.sources}
    if only:
        unknown = sorted(set(only) - names)
        if unknown:
            raise RestoreError(
                f"host {manifest.host}: snapshot {manifest.snapshot} has no source "
                f"{', '.join(unknown)} (it has: {', '.join(sorted(names))})"
            )
    chosen = [s for s in manifest.sources if not only or s.name in only]
    return sorted(chosen, key=lambda s: ORDER.get(s.kind, 8))


def precheck(repo: Repository, manifest: Manifest, sources: list[SourceRecord]) -> None:
    """Hash every stored object to be used; raise IntegrityError naming the first bad one."""
    for src in sources:
        for record in src.artifacts:
            key = object_key(manifest.host, manifest.snapshot, record.key)
            with repo.store.get(key) as stored:
                h = HashingReader(stored)
                while h.read(CHUNK):
                    pass
            if h.size != record.stored_size or h.hexdigest() != record.stored_sha256:
                raise IntegrityError(
                    f"{object_label(repo, manifest, record)}: stored digest does not match the "
                    "manifest; nothing was restored"
                )


def restore(
    policy: Policy,
    repo: Repository,
    manifest: Manifest,
    identities: list[Identity],
    runner: Runner,
    opts: RestoreOptions,
    *,
    only: list[str] | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> RestoreResult:
    """Restore ``manifest``'s sources (all, or ``only``) onto ``runner``'s host."""
    t0 = time.monotonic()
    sources = plan(manifest, only)
    configs = {source_name(c): c for c in policy.source}
    missing = [s.name for s in sources if s.name not in configs]
    if missing:
        raise RestoreError(
            f"host {manifest.host}: source(s) {', '.join(missing)} are in the snapshot but not "
            "in the policy; restoring needs their policy entry"
        )
    facts = read_facts(repo, manifest, identities)  # also proves the identity fits
    precheck(repo, manifest, sources)
    result = RestoreResult(manifest.host, manifest.snapshot)
    for src in sources:
        records = {a.name: a for a in src.artifacts}
        source = build_source(configs[src.name], runner)

        def feed(
            name: str,
            consume: Callable[[BinaryIO], object],
            src: SourceRecord = src,
            records: dict[str, ArtifactRecord] = records,
        ) -> None:
            record = records.get(name)
            if record is None:
                raise RestoreError(f"host {manifest.host}: source {src.name}: no artifact {name}")
            key = object_key(manifest.host, manifest.snapshot, record.key)
            with repo.store.get(key) as stored:
                decode(
                    stored,
                    identities,
                    consume,
                    expected=digests_of(record),
                    label=object_label(repo, manifest, record),
                )

        log(f"{manifest.host}: restoring {src.name} ({src.kind}) ...")
        report = source.restore(feed, facts.get(src.name, {}), opts)
        for action in report.actions:
            line = f"{src.name}: {action}"
            result.steps.append(line)
            log(f"{manifest.host}: {line}")
    result.seconds = time.monotonic() - t0
    return result
