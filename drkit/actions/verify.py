"""Verify a snapshot without restoring: read, authenticate and hash every object."""

from __future__ import annotations

from dataclasses import dataclass, field

from drkit.actions.common import object_label, read_artifact, select_snapshot
from drkit.errors import DrkitError
from drkit.pipeline import chunked
from drkit.pipeline.age import Identity
from drkit.pipeline.chunk_index import IndexReader
from drkit.pipeline.streams import HashingReader, drain
from drkit.repository.chunks import Chunks
from drkit.repository.layout import Repository, object_key
from drkit.repository.manifest import ArtifactRecord, Manifest


@dataclass
class VerifyResult:
    host: str
    snapshot: str
    checked: int = 0
    bytes: int = 0  # stored bytes read and checked (a chunked artifact: its index + chunks)
    problems: list[str] = field(default_factory=list)
    decrypted: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_stored(repo: Repository, manifest: Manifest, record: ArtifactRecord, label: str) -> None:
    """Without the identity: the stored digest, and for a chunked artifact that every
    chunk it names exists (its content is only checked by decrypting it)."""
    key = object_key(manifest.host, manifest.snapshot, record.key)
    with repo.store.get(key) as stored:
        if chunked.is_chunked(record.format):
            index = IndexReader(stored, label)
            chunks = Chunks(repo.store, manifest.host, index.rset)
            missing = [ref.id for ref in index if not chunks.has(ref.id)]
            size, digest = index.stored_size, index.stored_sha256
        else:
            h = HashingReader(stored)
            drain(h)
            missing, size, digest = [], h.size, h.hexdigest()
    if size != record.stored_size or digest != record.stored_sha256:
        raise DrkitError(f"{label}: stored digest does not match the manifest")
    if missing:
        raise DrkitError(f"{chunks.label(missing[0])}: chunk is missing ({len(missing)} in all)")


def verify_snapshot(
    repo: Repository, manifest: Manifest, identities: list[Identity] | None
) -> VerifyResult:
    """Check every artifact (and the facts). With identities, decrypt and check the
    plain digest too; without, check the stored digest only. Every failing
    object is reported, not just the first."""
    result = VerifyResult(manifest.host, manifest.snapshot, decrypted=identities is not None)
    records: list[ArtifactRecord] = list(manifest.artifacts)
    if manifest.facts:
        records.append(manifest.facts)
    for record in records:
        label = object_label(repo, manifest, record)
        chunk_sizes: list[int] = []  # appended from fetching threads (list.append is atomic)
        try:
            if identities is not None:
                read_artifact(repo, manifest, record, identities, drain, chunk_sizes.append)
            else:
                _check_stored(repo, manifest, record, label)
        except DrkitError as exc:
            result.problems.append(str(exc))
            continue
        result.checked += 1
        result.bytes += record.stored_size + sum(chunk_sizes)
    return result


def verify_host(
    repo: Repository,
    host: str,
    identities: list[Identity] | None,
    *,
    snapshot: str | None = None,
    every: bool = False,
) -> list[VerifyResult]:
    """Verify ``host``'s newest trusted snapshot (or ``snapshot``, or ``every`` trusted
    one), and report every committed snapshot that is not trusted as a failure naming
    it and why: a planted or altered snapshot is never skipped silently.

    Raises ObjectNotFound when there is nothing trusted to verify and nothing
    untrusted to report; UntrustedError when ``snapshot`` itself is not trusted.
    """
    view = repo.read_host(host)
    untrusted = [
        VerifyResult(host, r.snapshot, problems=[r.reason], decrypted=False)
        for r in view.untrusted
        if snapshot is None or r.snapshot == snapshot
    ]
    if every:
        manifests = view.trusted
    elif snapshot is not None or view.trusted or not untrusted:
        manifests = [select_snapshot(repo, host, snapshot)]
    else:
        manifests = []
    return [verify_snapshot(repo, m, identities) for m in manifests] + untrusted
