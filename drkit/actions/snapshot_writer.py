"""How one backup run writes: artifacts through the pipeline (whole or as
deduplicated chunks), then the signed manifest that commits a snapshot.

``actions/backup.py`` decides what a run backs up and in which snapshots;
this module only writes them, so the two do not mix.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import time
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from drkit import __version__
from drkit.errors import RepositoryError
from drkit.logs import Log, current_meter
from drkit.pipeline import chunked
from drkit.pipeline.age import Recipient, parse_recipient, recipient_lines
from drkit.pipeline.codec import FORMAT, Digests, encode
from drkit.pipeline.streams import TeeReader
from drkit.policy.models import Policy
from drkit.repository.chunks import Chunks, recipient_set
from drkit.repository.layout import FACTS, Repository, object_key
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord

Store = Callable[[str, BinaryIO], ArtifactRecord]


class LockCheck(Protocol):
    """What a commit asks of a held host lock (drkit.locks.HostLock)."""

    def check(self) -> None:
        """Raise if another run took the lock over."""


def _record(relative: str, fmt: str, digests: Digests, new_bytes: int = 0) -> ArtifactRecord:
    source, _, name = relative.partition("/")
    return ArtifactRecord(
        source=source,
        name=name or source,
        key=relative,
        format=fmt,
        plain_size=digests.plain_size,
        plain_sha256=digests.plain_sha256,
        stored_size=digests.stored_size,
        stored_sha256=digests.stored_sha256,
        new_bytes=new_bytes,
    )


class SnapshotWriter:
    """Writes the snapshots of one run of ``policy``'s host, started at ``started``.

    With ``dedup``, artifacts (not the facts) are stored as chunks under keyed ids:
    the key is derived from this machine's signing key (one secret per machine; per
    host by its purpose) and sealed to the recipients in the manifest
    (``sealed_extra``), so only restorers learn it.
    """

    def __init__(
        self,
        policy: Policy,
        repo: Repository,
        started: dt.datetime,
        *,
        lock: LockCheck | None,
        log: Log,
    ) -> None:
        self.policy, self.repo, self.started, self.lock, self.log = policy, repo, started, lock, log
        self.host = policy.host
        self.t0 = time.monotonic()
        enc = policy.encryption
        lines = recipient_lines(enc.recipients, enc.recipients_file)
        self.recipients: list[Recipient] = [parse_recipient(line) for line in lines]
        self.chunks: Chunks | None = None
        self.id_key = b""
        self.sealed_extra: dict[str, Any] = {}
        if policy.repository.dedup:
            self.chunks = Chunks(repo.store, self.host, recipient_set(lines))
            signing_key = repo.trust.signer_for(self.host)
            self.id_key = signing_key.derive(f"chunk-ids/{self.host}")
            self.sealed_extra = {
                chunked.ID_KEY_EXTRA: chunked.seal_id_key(self.id_key, self.recipients)
            }

    def storer(self, snapshot: str) -> Store:
        """Stores one artifact (``source/name``) of ``snapshot`` and returns its record."""

        def store(relative: str, plain: BinaryIO) -> ArtifactRecord:
            key = object_key(self.host, snapshot, relative)
            if self.chunks is not None and relative != FACTS:
                return self._store_chunked(key, relative, plain, self.chunks)
            m = current_meter()
            if m is None:
                digests = encode(plain, self.recipients, lambda s: self.repo.store.put(key, s))
            else:  # the stored bytes as the store reads them, for progress
                digests = encode(
                    plain,
                    self.recipients,
                    lambda s: self.repo.store.put(key, TeeReader(s, m.counting_stored)),  # type: ignore[arg-type]
                )
            return _record(relative, FORMAT, digests)

        return store

    def _store_chunked(
        self, key: str, relative: str, plain: BinaryIO, chunks: Chunks
    ) -> ArtifactRecord:
        """Deduplicated chunks plus their index (the index is the artifact)."""
        done = chunked.encode(plain, self.recipients, chunks, id_key=self.id_key)
        index = done.index
        try:
            self.repo.store.put(key, index.file)  # only after every chunk it names is stored
        finally:
            index.file.close()
        m = current_meter()
        if m is not None:  # chunks are stored by the chunk store: counted per artifact
            m.add_stored(done.new_bytes)
        self.log(
            f"{relative}: {done.new_chunks} new chunk(s) ({done.new_bytes} bytes stored), "
            f"{done.reused_chunks} reused"
        )
        digests = Digests(
            plain_size=index.plain_size,
            plain_sha256=index.tree_digest,
            stored_size=index.stored_size,
            stored_sha256=index.stored_sha256,
        )
        return _record(relative, chunked.FORMAT, digests, done.new_bytes)

    def commit(
        self,
        snapshot: str,
        records: list[SourceRecord],
        facts: dict[str, Any],
        extra: dict[str, Any],
    ) -> Manifest:
        """Write the facts, then the manifest: the commit. Refused when the run lost its
        lock; a store error names host and snapshot."""
        facts_json = json.dumps(facts, sort_keys=True).encode()
        host = self.host
        try:
            manifest = Manifest(
                host=host,
                snapshot=snapshot,
                started=self.started.isoformat(timespec="seconds"),
                finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                drkit_version=__version__,
                policy_sha256=policy_digest(self.policy),
                recipients=list(self.policy.encryption.recipients),
                sources=records,
                facts=self.storer(snapshot)(FACTS, io.BytesIO(facts_json)),
                extra=extra,
            )
            if self.lock is not None:
                self.lock.check()  # a run that lost its lock must not commit
            self.repo.write_manifest(manifest)  # the commit
        except RepositoryError as exc:  # the store names the object; say whose and what
            raise RepositoryError(
                f"host {host}: snapshot {snapshot} not committed: {exc}"
            ) from None
        seconds = time.monotonic() - self.t0
        self.log(
            f"{host}: snapshot {snapshot} committed ({manifest.stored_bytes} bytes, {seconds:.1f}s)"
        )
        return manifest


def policy_digest(policy: Policy) -> str:
    """The digest a manifest records of the policy it was taken under."""
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()
