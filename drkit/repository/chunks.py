"""Where deduplicated chunks live: ``<host>/chunks/<set>/<id[:2]>/<id>``.

``<set>`` names the recipient set the chunks are encrypted to (a digest of
the sorted recipient lines): a chunk is only reused by backups encrypted to
the same recipients, so changing the recipients never leaves a snapshot
with chunks its new identity cannot open. Chunks are per host, so pruning a
host needs only that host's manifests to know what is still referenced.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

from drkit.errors import IntegrityError, ObjectNotFound
from drkit.repository.store import ObjectInfo, Store


def chunks_prefix(host: str) -> str:
    return f"{host}/chunks/"


def recipient_set(recipients: list[str]) -> str:
    """Name of a recipient set: the same for the same keys in any order."""
    lines = sorted({r.strip() for r in recipients if r.strip()})
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def chunk_key(host: str, rset: str, chunk_id: bytes) -> str:
    name = chunk_id.hex()
    return f"{chunks_prefix(host)}{rset}/{name[:2]}/{name}"


class Chunks:
    """The chunks of one host and recipient set (the codec's ChunkStore).

    ``has`` lists the set once, on first use, and remembers what this
    process stores after that; a backup runs under the host lock, so no one
    else adds or removes this host's chunks meanwhile. Ids are kept as their
    32 bytes (~90 bytes each in a set: 2000 chunks per GB of dump).
    """

    def __init__(self, store: Store, host: str, rset: str) -> None:
        self.store, self.host, self.rset = store, host, rset
        self._known: set[bytes] | None = None
        self._lock = threading.Lock()

    def _key(self, chunk_id: bytes) -> str:
        return chunk_key(self.host, self.rset, chunk_id)

    def label(self, chunk_id: bytes) -> str:
        return f"{self.store.url}/{self._key(chunk_id)}"

    def has(self, chunk_id: bytes) -> bool:
        with self._lock:
            if self._known is None:
                prefix = f"{chunks_prefix(self.host)}{self.rset}/"
                self._known = {
                    _chunk_id(info.key) for info in self.store.list(prefix) if _chunk_id(info.key)
                }
            return chunk_id in self._known

    def put(self, chunk_id: bytes, blob: bytes) -> None:
        self.store.put_bytes(self._key(chunk_id), blob)
        with self._lock:
            if self._known is not None:
                self._known.add(chunk_id)

    def get(self, chunk_id: bytes) -> bytes:
        try:
            return self.store.get_bytes(self._key(chunk_id))
        except ObjectNotFound:
            raise IntegrityError(f"{self.label(chunk_id)}: chunk is missing") from None


def _chunk_id(key: str) -> bytes:
    """The id of a chunk key; empty for a key that is not one (left alone)."""
    name = key.rsplit("/", 1)[-1]
    try:
        return bytes.fromhex(name) if len(name) == 64 else b""
    except ValueError:
        return b""


def list_chunks(store: Store, host: str) -> Iterator[ObjectInfo]:
    """Every chunk object of ``host`` (all recipient sets)."""
    return store.list(chunks_prefix(host))
