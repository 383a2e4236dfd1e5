"""Where deduplicated chunks live: packs (``<host>/packs/<set>/<id[:2]>/<id>``),
and before packs one object per chunk (``<host>/chunks/<set>/<id[:2]>/<id>``).

``<set>`` names the recipient set the chunks are encrypted to (a digest of
the sorted recipient lines): a chunk is only reused by backups encrypted to
the same recipients, so changing the recipients never leaves a snapshot
with chunks its new identity cannot open. Chunks are per host, so pruning a
host needs only that host's manifests to know what is still referenced.

A pack is sealed chunks laid end to end (~16 MiB), named by 32 random bytes:
nothing in it is read without a location from a snapshot's chunk index,
which the signed manifest covers (docs/dedup.md). Which chunks a backup may
reuse comes from the same place: the indexes of the host's trusted
snapshots, never from listing the bucket (its holder could list a pack
that does not hold what it claims). A chunk a repack moved is read where
the host's trusted move records (moves.py) say it is now; the bytes found
there are checked against the index's digest like any others.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from drkit.errors import DrkitError, IntegrityError, ObjectNotFound, RepositoryError
from drkit.repository.moves import Moves, Piece
from drkit.repository.store import ObjectInfo, Store

PACK_TARGET = 16 << 20  # bytes of sealed chunks per pack (Chunks.pack_target)
# Tuning (docs/dedup.md): smaller packs free space sooner after prune, larger ones
# cost fewer requests. Bounded so that a pack never needs a multipart upload of
# thousands of parts nor holds a single chunk only.
PACK_SIZE_ENV = "DRKIT_PACK_SIZE"
_PACK_RANGE = (1 << 20, 1 << 30)
_MOVED_RUN = 4 << 20  # the most one read of a moved pack's chunks asks for (verify)


def pack_target() -> int:
    """The pack size: ``$DRKIT_PACK_SIZE`` (bytes, 1 MiB to 1 GiB) or ``PACK_TARGET``."""
    raw = os.environ.get(PACK_SIZE_ENV, "").strip()
    if not raw:
        return PACK_TARGET
    try:
        size = int(raw)
    except ValueError:
        size = -1
    if not _PACK_RANGE[0] <= size <= _PACK_RANGE[1]:
        raise RepositoryError(
            f"${PACK_SIZE_ENV}={raw!r}: not a pack size in bytes between "
            f"{_PACK_RANGE[0]} and {_PACK_RANGE[1]}"
        )
    return size


def chunks_prefix(host: str) -> str:
    return f"{host}/chunks/"


def packs_prefix(host: str) -> str:
    return f"{host}/packs/"


def recipient_set(recipients: list[str]) -> str:
    """Name of a recipient set: the same for the same keys in any order."""
    lines = sorted({r.strip() for r in recipients if r.strip()})
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def chunk_key(host: str, rset: str, chunk_id: bytes) -> str:
    name = chunk_id.hex()
    return f"{chunks_prefix(host)}{rset}/{name[:2]}/{name}"


def pack_key(host: str, rset: str, pack: str) -> str:
    return f"{packs_prefix(host)}{rset}/{pack[:2]}/{pack}"


@dataclass(frozen=True)
class TrustedIndex:
    """The chunk index of an artifact of a trusted snapshot: its key, and the format and
    stored digest its signed manifest records (the reader checks the index against
    them before using a line of it)."""

    key: str
    label: str
    format: str
    stored_sha256: str


class Chunks:
    """The chunks of one host and recipient set (the codec's ChunkStore).

    Packs are written whole (``put_pack``) and read by range; which chunks a
    backup may reuse it learns from ``trusted_indexes`` (pipeline/chunked.py
    reads them). A backup runs under the host lock, so no one else adds or
    removes this host's packs meanwhile. ``has`` and ``get`` serve chunks
    stored one object each (snapshots from before packs).
    """

    def __init__(self, store: Store, host: str, rset: str) -> None:
        self.store, self.host, self.rset = store, host, rset
        self.pack_target = pack_target()
        self._objects: set[bytes] | None = None
        self._retained: dict[str, bool] = {}  # pack -> may be reused (retention extended)
        self._lock = threading.Lock()
        self._moves: Moves | None = None

    # -- one object per chunk (read only) ---------------------------------------

    def _key(self, chunk_id: bytes) -> str:
        return chunk_key(self.host, self.rset, chunk_id)

    def label(self, chunk_id: bytes) -> str:
        return f"{self.store.url}/{self._key(chunk_id)}"

    def has(self, chunk_id: bytes) -> bool:
        with self._lock:
            if self._objects is None:
                prefix = f"{chunks_prefix(self.host)}{self.rset}/"
                self._objects = {
                    _chunk_id(info.key) for info in self.store.list(prefix) if _chunk_id(info.key)
                }
            return chunk_id in self._objects

    def get(self, chunk_id: bytes) -> bytes:
        try:
            return self.store.get_bytes(self._key(chunk_id))
        except ObjectNotFound:
            raise IntegrityError(f"{self.label(chunk_id)}: chunk is missing") from None

    # -- packs --------------------------------------------------------------------

    def pack_label(self, pack: str) -> str:
        return f"{self.store.url}/{pack_key(self.host, self.rset, pack)}"

    def retain(self, pack: str) -> bool:
        """Extend ``pack``'s Object Lock retention to a new write's (a reused pack must
        live as long as the snapshot reusing it); once per pack and process. False
        when the store refuses: the pack's chunks are then stored anew."""
        with self._lock:
            known = self._retained.get(pack)
        if known is None:
            try:
                self.store.extend_retention(pack_key(self.host, self.rset, pack))
                known = True
            except DrkitError:
                known = False
            with self._lock:
                self._retained[pack] = known
        return known

    def trusted_indexes(self) -> Iterator[TrustedIndex]:
        """The chunk indexes of the host's trusted snapshots, newest first (none when
        no repository with trust was opened over this store in this process)."""
        from drkit.repository.layout import object_key, repository_of  # layout imports us

        repo = repository_of(self.store)
        if repo is None or not repo.trust.snapshot_signers(self.host).keys:
            return
        for manifest in repo.read_host(self.host).newest_first():
            for record in manifest.artifacts:
                key = object_key(self.host, manifest.snapshot, record.key)
                label = f"{self.store.url}/{key}"
                yield TrustedIndex(key, label, record.format, record.stored_sha256)

    def open_index(self, index: TrustedIndex) -> BinaryIO:
        return self.store.get(index.key)

    def put_pack(self, name: str, file: BinaryIO) -> int:
        """Store a finished pack (``file`` from its start)."""
        n = self.store.put_file(pack_key(self.host, self.rset, name), file)
        with self._lock:
            self._retained[name] = True  # written now: retained as long as anything new
        return n

    def moves(self, *, reload: bool = False) -> Moves:
        """The host's trusted move records (read once; none when no repository with
        trust was opened over this store in this process)."""
        from drkit.repository.layout import repository_of  # layout imports us

        with self._lock:
            if self._moves is None or reload:
                repo = repository_of(self.store)
                if repo is None or not repo.trust.snapshot_signers(self.host).keys:
                    self._moves = Moves(self.host)
                else:
                    self._moves = Moves.load(repo, self.host)
            return self._moves

    def resolve(self, pack: str, offset: int, length: int) -> tuple[str, int]:
        """Where the chunk of ``length`` stored bytes at ``offset`` of ``pack`` is now."""
        pieces = self.moves().pieces(self.rset, pack, offset, length)
        if len(pieces) != 1:
            raise IntegrityError(f"{self.pack_label(pack)}: a chunk moved in pieces")
        return pieces[0].pack, pieces[0].offset

    def read(self, pack: str, start: int, length: int) -> bytes:
        """``length`` bytes of ``pack`` from ``start`` (one ranged GET; one per piece
        where a repack moved them). A pack found missing has the move records read
        again once (a repack may have moved it since they were read)."""
        moves = self.moves()
        missing = pack
        for attempt in (0, 1):
            pieces = moves.pieces(self.rset, pack, start, length)
            try:
                return b"".join(self._get(p) for p in pieces)
            except _Missing as gone:
                missing = gone.pack
                if attempt:
                    break
                moves = self.moves(reload=True)
        moved = f" (where a repack moved bytes of pack {pack})" if missing != pack else ""
        refused = "; ".join(moves.rejected[:3])
        why = f" (not followed: {refused})" if refused else ""
        raise IntegrityError(f"{self.pack_label(missing)}: pack is missing{moved}{why}")

    def _get(self, piece: Piece) -> bytes:
        key = pack_key(self.host, self.rset, piece.pack)
        try:
            return self.store.get_range(key, piece.offset, piece.length)
        except ObjectNotFound:
            raise _Missing(piece.pack) from None

    def open_pack(self, pack: str) -> BinaryIO:
        """``pack`` for reading front to back (verify): the object itself, or where a
        repack moved it, a view that reads each moved chunk from its new place."""
        if self.moves().moved(self.rset, pack):
            return MovedPack(self, pack)  # type: ignore[return-value]
        try:
            return self.store.get(pack_key(self.host, self.rset, pack))
        except ObjectNotFound:
            if self.moves(reload=True).moved(self.rset, pack):  # moved since they were read
                return MovedPack(self, pack)  # type: ignore[return-value]
            raise IntegrityError(f"{self.pack_label(pack)}: pack is missing") from None


class _Missing(Exception):
    """A piece's pack is not there (``Chunks.read`` says which, and why)."""

    def __init__(self, pack: str) -> None:
        super().__init__(pack)
        self.pack = pack


class MovedPack:
    """A pack a repack moved, read front to back at its old offsets (verify reads each
    chunk it needs with one ``read`` of its length at its offset, and skips the rest):
    such a read of a moved chunk comes from its new place (``Chunks.read``); anything
    else, and a moved chunk that cannot be read where its record says, reads as zeros,
    which fail the digest check of any chunk an index needs there."""

    def __init__(self, chunks: Chunks, pack: str) -> None:
        self.chunks, self.pack, self.pos = chunks, pack, 0
        table = chunks.moves().by_pack[(chunks.rset, pack)]
        self.lengths = {o: m.length for o, m in table.items()}
        self.end = max(o + n for o, n in self.lengths.items())
        self._run: tuple[int, bytes] = (0, b"")  # the last run read: (old offset, bytes)

    def read(self, n: int = -1) -> bytes:
        n = self.end - self.pos if n < 0 else min(n, self.end - self.pos)
        if n <= 0:
            return b""
        start, self.pos = self.pos, self.pos + n
        if self.lengths.get(start) == n:
            at, data = self._run
            if not at <= start < start + n <= at + len(data):
                at, data = self._run = (start, self._fetch(start))
            return data[start - at : start - at + n]
        return bytes(n)

    def _fetch(self, start: int) -> bytes:
        """The moved chunk at ``start`` and those after it in the old pack, up to
        ``_MOVED_RUN`` bytes, in one read when their new places are adjacent too (as a
        repack writes them); the chunk alone when the run cannot be read whole (a chunk
        in it moved again, or not at all: one this reader may not need); zeros when
        even the chunk cannot be read."""
        end = start + self.lengths[start]
        while end in self.lengths and end + self.lengths[end] - start <= _MOVED_RUN:
            end += self.lengths[end]
        for length in dict.fromkeys((end - start, self.lengths[start])):
            try:
                return self.chunks.read(self.pack, start, length)
            except DrkitError:
                continue
        return bytes(self.lengths[start])  # as bytes that are not the chunk: its digest says so

    def close(self) -> None:
        pass

    def __enter__(self) -> MovedPack:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


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


def list_packs(store: Store, host: str) -> Iterator[ObjectInfo]:
    """Every pack of ``host`` (all recipient sets)."""
    return store.list(packs_prefix(host))


def pack_of(key: str) -> str:
    """The pack name of a pack key (its last part)."""
    return key.rsplit("/", 1)[-1]
