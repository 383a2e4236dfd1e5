"""Reading a stored artifact back, whatever its format (whole or chunked), with every
digest checked against the signed manifest; and a snapshot's facts."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any, BinaryIO

from drkit.errors import IntegrityError, RepositoryError
from drkit.pipeline import chunked
from drkit.pipeline.age import Identity
from drkit.pipeline.chunk_index import IndexReader
from drkit.pipeline.codec import Digests, decode
from drkit.repository.chunks import Chunks
from drkit.repository.documents import lazy_adapter, parse_document
from drkit.repository.layout import Repository, object_key
from drkit.repository.manifest import ArtifactRecord, Manifest


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
