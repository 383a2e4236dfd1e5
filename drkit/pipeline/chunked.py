"""The deduplicating artifact codec ``cdc+zstd+age`` (docs/dedup.md).

The plain stream is cut into content-defined chunks (FastCDC: cut points
follow the content, so an insertion or a changed row moves only the chunks
around it). Each chunk is named by a keyed hash of its plain bytes (v2:
HMAC-SHA256 under a per-host id key; v1: sha256) and stored once per host
and recipient set, compressed and encrypted on its own (``zstd`` then
``age``), in a pack: sealed chunks end to end, ~16 MiB per object. A chunk
a trusted snapshot already stored is not compressed, encrypted or uploaded
again. The artifact itself is the index (chunk_index.py): each chunk's id,
size, pack, offset, length and stored digest, in order, streamed both ways.
It is plain so that ``prune`` can tell which packs are still referenced
without the identity; it reveals which pieces snapshots share and their
sizes, never their bytes. (Snapshots from before packs name chunks stored
one object each; they are still read.)

Integrity on the way back: the stored bytes of each chunk must match the
index's digest, age authenticates them, the keyed hash of the decompressed
bytes must equal the id, the chunk list must match the tree digest the
manifest records as ``plain_sha256``, and the index object its stored
digest (the manifest is signed).

Work is split so that two CPUs overlap: the caller's thread reads, cuts and
hashes; worker threads compress and encrypt new chunks (zstandard and
hashlib release the GIL; pyrage does not, but encrypts ~900 MB/s); other
threads upload finished packs. Memory is bounded by the chunks in flight
(see ``encode``); packs are spooled to temporary files.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TypeVar

import pyrage
import zstandard
from pyfastcdc import FastCDC

from drkit.errors import DrkitError, IntegrityError
from drkit.pipeline.age import Identity, Recipient
from drkit.pipeline.chunk_index import ChunkRef, IndexReader, IndexWriter, Packed, WrittenIndex
from drkit.pipeline.codec import Digests, decrypt_error
from drkit.pipeline.memory import fix_mmap_threshold
from drkit.pipeline.streams import CHUNK, PipeClosed, ThreadPipe

# v2: chunk ids are keyed (HMAC-SHA256 under a per-host secret), so no one without
# that secret can predict where a chunk of given content would be stored and plant
# one there. v1 ids were the plain sha256 of the chunk; still read.
FORMAT = "cdc+zstd+age/v2"
FORMAT_V1 = "cdc+zstd+age/v1"
FORMATS = (FORMAT, FORMAT_V1)


def is_chunked(fmt: str) -> bool:
    return fmt in FORMATS


ID_KEY_EXTRA = "chunk_id_key"  # manifest ``extra`` member: the id key, sealed to the recipients


def seal_id_key(id_key: bytes, recipients: list[Recipient]) -> str:
    """The id key encrypted to ``recipients`` (base64), for the signed manifest: the
    restorer needs it to check each chunk against its id; bucket readers must not
    have it (they could then confirm guessed content)."""
    return base64.b64encode(pyrage.encrypt(id_key, recipients)).decode()


def open_id_key(sealed: object, identities: list[Identity], label: str) -> bytes:
    """The id key from a manifest's ``extra``. Raises IntegrityError naming ``label``
    when it is missing or malformed, CryptoError when the identity does not fit."""
    if not isinstance(sealed, str):
        raise IntegrityError(f"{label}: the manifest holds no chunk id key")
    try:
        blob = base64.b64decode(sealed, validate=True)
    except ValueError:
        raise IntegrityError(f"{label}: the manifest's chunk id key is not base64") from None
    try:
        key = bytes(pyrage.decrypt(blob, identities))
    except Exception as exc:
        raise decrypt_error(exc, f"{label} (chunk id key)") from None
    if len(key) != 32:
        raise IntegrityError(f"{label}: the manifest's chunk id key is not 32 bytes")
    return key


def chunk_id(data: bytes, id_key: bytes | None) -> bytes:
    """A chunk's id: HMAC-SHA256 of its plain bytes under ``id_key`` (v2), or their
    sha256 (v1, ``id_key`` None). Both release the GIL on large inputs."""
    if id_key is None:
        return hashlib.sha256(data).digest()
    return hmac.digest(id_key, data, "sha256")


# Small enough that a changed row costs ~512 KiB and that the cutter's buffer
# (2 x MAX) and the chunks in flight stay a few MiB; a 1 GB dump is ~2000
# objects (docs/design-notes.md weighs this). FastCDC's mean is AVG + MIN.
MIN_CHUNK = 128 << 10
AVG_CHUNK = 384 << 10
MAX_CHUNK = 1 << 20
_PREFETCH = 3  # reads in flight while restoring (each a chunk, or a run of them in a pack)
_GROUP_BYTES = 2 << 20  # the most one ranged read of a pack asks for (memory: x _PREFETCH)
_GROUP_PLAIN = 4 << 20  # ... and the most plain bytes it may hold once opened


class IndexSource(Protocol):
    """A trusted snapshot's chunk index, as the chunk store names it."""

    @property
    def label(self) -> str: ...

    @property
    def format(self) -> str: ...

    @property
    def stored_sha256(self) -> str: ...


class ChunkStore(Protocol):
    """Where chunks live (one host, one recipient set ``rset``); see repository/chunks.py."""

    rset: str
    pack_target: int

    def trusted_indexes(self) -> Iterator[IndexSource]: ...

    def open_index(self, index: Any) -> BinaryIO: ...

    def retain(self, pack: str) -> bool: ...

    def resolve(self, pack: str, offset: int, length: int) -> tuple[str, int]: ...

    def put_pack(self, name: str, file: BinaryIO) -> int: ...

    def read(self, pack: str, start: int, length: int) -> bytes: ...

    def pack_label(self, pack: str) -> str: ...

    def get(self, chunk_id: bytes) -> bytes: ...

    def label(self, chunk_id: bytes) -> str: ...


@dataclass
class PackSpool:
    """A pack being filled: sealed chunks appended to an unlinked temporary file
    (memory stays flat whatever the target size). Named by 32 random bytes."""

    name: str
    file: BinaryIO
    size: int = 0

    @classmethod
    def new(cls) -> PackSpool:
        spool = tempfile.TemporaryFile(prefix="drkit-pack-")  # noqa: SIM115 (kept)
        return cls(secrets.token_hex(32), spool)

    def add(self, blob: bytes) -> Packed:
        at = Packed(self.name, self.size, len(blob), hashlib.sha256(blob).digest())
        self.file.write(blob)
        self.size += len(blob)
        return at


class Locations:
    """Where the chunks a backup may reuse are: every packed chunk named by a trusted
    snapshot's index whose digest matches its manifest (read on first use), and what
    this run packed. A chunk a repack moved is named where it is now (the trusted
    move records, ``ChunkStore.resolve``), so new indexes need no move record. A pack
    is reused only once its retention is extended (``ChunkStore.retain``)."""

    def __init__(self, chunks: ChunkStore) -> None:
        self.chunks = chunks
        self._known: dict[bytes, Packed] | None = None

    def _load(self) -> dict[bytes, Packed]:
        known: dict[bytes, Packed] = {}
        names: dict[str, str] = {}  # one string per pack, however many chunks name it
        for source in self.chunks.trusted_indexes():
            if source.format != FORMAT:
                continue  # v1 ids are unkeyed; whole artifacts have no index
            found: dict[bytes, Packed] = {}
            try:
                with self.chunks.open_index(source) as stored:
                    index = IndexReader(stored, source.label)
                    if index.rset != self.chunks.rset or index.version == 1:
                        continue
                    for ref in index:
                        if (at := ref.at) is not None and ref.id not in known:
                            pack = names.setdefault(at.pack, at.pack)
                            found[ref.id] = Packed(pack, at.offset, at.length, at.digest)
            except DrkitError:
                continue  # nothing reused from it; verify reports it
            if index.stored_sha256 == source.stored_sha256:
                known.update(found)
        return known

    def locate(self, chunk_id: bytes) -> Packed | None:
        if self._known is None:
            self._known = self._load()
        at = self._known.get(chunk_id)
        if at is None:
            return None
        try:
            pack, offset = self.chunks.resolve(at.pack, at.offset, at.length)
        except DrkitError:
            return None  # moved, but not where a trusted record says: store it anew
        if (pack, offset) != (at.pack, at.offset):
            at = self._known[chunk_id] = Packed(pack, offset, at.length, at.digest)
        if not self.chunks.retain(at.pack):
            return None
        return at

    def add(self, chunk_id: bytes, at: Packed) -> None:
        if self._known is not None:
            self._known[chunk_id] = at


@dataclass(frozen=True)
class Encoded:
    """What ``encode`` made: the index (to store, then close) and what was new."""

    index: WrittenIndex
    new_chunks: int
    new_bytes: int  # stored bytes of the chunks this run uploaded
    reused_chunks: int
    packs: int = 0  # packs written


def encode(
    plain: BinaryIO,
    recipients: list[Recipient],
    chunks: ChunkStore,
    *,
    id_key: bytes,
    locations: Locations | None = None,
    level: int = 3,
    workers: int = 2,
    uploads: int = 2,
) -> Encoded:
    """Cut ``plain`` into chunks, pack those ``chunks`` cannot locate; return the index.

    Three stages overlap: this thread reads, cuts and hashes, and appends
    sealed chunks to the open pack in cut order (so a full backup's packs
    hold the stream in order: restore reads them front to back); ``workers``
    threads compress and encrypt new chunks; ``uploads`` threads store
    finished packs. Memory: at most ``workers + 1`` plain chunks in sealing;
    packs are spooled to temporary files (``uploads + 1`` at most), the
    index too. Every pack the index names is stored before this returns.

    Raises whatever ``plain.read`` raised (a failed source) or a pack upload
    raised, after the work in flight has stopped: the caller then writes no
    index, and the packs already stored are garbage for ``prune``.
    """
    fix_mmap_threshold()
    locations = locations or _locations_of(chunks)
    run = _Encoder(recipients, chunks, locations, level, workers, uploads)
    cutter = FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
    try:
        for piece in cutter.cut_stream(plain):
            run.add(bytes(piece.data), id_key)  # the view is only valid until the next cut
        run.finish()
    except BaseException:
        run.abandon()
        raise
    return run.result()


class _Encoder:
    """The state of one ``encode``: chunks in cut order, waiting to be settled into the
    index (a location, a sealing in flight, or a repeat of a chunk this run stores);
    the open pack; packs uploading."""

    def __init__(
        self,
        recipients: list[Recipient],
        chunks: ChunkStore,
        locations: Locations,
        level: int,
        workers: int,
        uploads: int,
    ) -> None:
        self.recipients, self.chunks, self.locations = recipients, chunks, locations
        self.level, self.workers = level, workers
        self.local = threading.local()
        self.slots = threading.Semaphore(uploads)  # finished packs waiting for an upload
        self.index = IndexWriter(FORMAT, chunks.rset, packed=True)
        self.located: dict[bytes, Packed | None] = {}  # new chunks (None: still sealing)
        # (id, size, where): a location, a sealing, or None (a repeat of a chunk this run
        # is storing, located by the time it is settled).
        self.pending: deque[tuple[bytes, int, Packed | Future[bytes] | None]] = deque()
        self.sealing = 0
        self.storing: deque[Future[int]] = deque()
        self.spools: list[PackSpool] = []  # open or uploading, closed on the way out
        self.spool: PackSpool | None = None
        self.new_bytes = self.reused = self.packs = 0
        self.seal_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drkit-seal")
        self.store_pool = ThreadPoolExecutor(
            max_workers=uploads, thread_name_prefix="drkit-pack-put"
        )

    def add(self, data: bytes, id_key: bytes) -> None:
        """One cut chunk: a repeat, a chunk stored before, or a new one to seal."""
        cid = chunk_id(data, id_key)
        if cid in self.located:
            self.pending.append((cid, len(data), None))
        elif (at := self.locations.locate(cid)) is not None:
            self.pending.append((cid, len(data), at))
        else:
            self.located[cid] = None
            while self.sealing > self.workers:
                self._settle()
            self.pending.append((cid, len(data), self.seal_pool.submit(self._seal, data)))
            self.sealing += 1
            return
        self.reused += 1
        while self.pending and not isinstance(self.pending[0][2], Future):
            self._settle()

    def _seal(self, data: bytes) -> bytes:
        if not hasattr(self.local, "zstd"):  # one per worker thread
            self.local.zstd = zstandard.ZstdCompressor(level=self.level)
        return bytes(pyrage.encrypt(self.local.zstd.compress(data), self.recipients))

    def _put(self, pack: PackSpool) -> int:
        try:
            pack.file.seek(0)
            return self.chunks.put_pack(pack.name, pack.file)
        finally:
            pack.file.close()
            self.slots.release()

    def _ship(self, pack: PackSpool) -> None:
        while self.storing and self.storing[0].done():
            self.storing.popleft().result()
        self.slots.acquire()
        self.storing.append(self.store_pool.submit(self._put, pack))
        self.packs += 1

    def _settle(self) -> None:
        """The oldest pending chunk into the index (a sealed one into the open pack)."""
        cid, size, where = self.pending.popleft()
        if isinstance(where, Future):
            self.sealing -= 1
            blob = where.result()
            if self.spool is None:
                self.spool = PackSpool.new()
                self.spools.append(self.spool)
            at = self.spool.add(blob)
            self.new_bytes += len(blob)
            self.located[cid] = at
            if self.spool.size >= self.chunks.pack_target:
                self._ship(self.spool)
                self.spool = None
        elif where is None:
            at = self.located[cid]  # type: ignore[assignment]  # settled before its repeats
        else:
            at = where
        self.index.add(cid, size, at)

    def finish(self) -> None:
        while self.pending:
            self._settle()
        if self.spool is not None:
            self._ship(self.spool)
            self.spool = None
        while self.storing:
            self.storing.popleft().result()
        self.seal_pool.shutdown(wait=True)
        self.store_pool.shutdown(wait=True)

    def abandon(self) -> None:
        """After a failure: stop the work in flight, drop the spools and the index."""
        for _cid, _size, where in self.pending:
            if isinstance(where, Future):
                where.cancel()
        self.seal_pool.shutdown(wait=True, cancel_futures=True)
        self.store_pool.shutdown(wait=True, cancel_futures=True)
        for each in self.spools:
            each.file.close()
        self.index.discard()

    def result(self) -> Encoded:
        for cid, at in self.located.items():
            if at is not None:
                self.locations.add(cid, at)  # a later artifact of this run may reuse it
        new = sum(1 for at in self.located.values() if at is not None)
        return Encoded(self.index.finish(), new, self.new_bytes, self.reused, self.packs)


_LOCATIONS: weakref.WeakKeyDictionary[Any, Locations] = weakref.WeakKeyDictionary()


def _locations_of(chunks: ChunkStore) -> Locations:
    """One Locations per chunk store: the artifacts of one run share what it learnt
    (the trusted indexes are read once per run, not per artifact)."""
    found = _LOCATIONS.get(chunks)
    if found is None:
        found = _LOCATIONS[chunks] = Locations(chunks)
    return found


def decode(
    index: BinaryIO,
    chunks_of: Callable[[str], ChunkStore],
    identities: list[Identity],
    consume: Callable[[BinaryIO], object],
    *,
    expected: Digests | None,
    label: str,
    id_key: bytes | None = None,
    fetched: Callable[[int], object] | None = None,
) -> Digests:
    """Fetch, decrypt and check each chunk the ``index`` stream names, in order, into ``consume``.

    ``consume`` reads the plain stream; a chunk that fails authentication or
    whose bytes do not hash to its id makes the next read raise
    IntegrityError naming the chunk object, as does an index whose digests
    differ from ``expected``. ``chunks_of`` opens the chunk store of a
    recipient set; ``fetched`` is told each chunk object's stored size (from
    the fetching threads). Returns the digests seen (stored: the index object's).
    """
    fix_mmap_threshold()
    reader = IndexReader(index, label)
    if reader.codec not in FORMATS:
        raise IntegrityError(f"{label}: unreadable chunk index (codec {reader.codec!r})")
    if (reader.codec == FORMAT) != (id_key is not None):
        # A v2 index read without its key (or a v1 index passed off with one) would
        # skip or misapply the check that ties each chunk to the signed index.
        raise IntegrityError(f"{label}: chunk index {reader.codec} without its id key")
    fetcher = _Fetcher(chunks_of(reader.rset), identities, id_key, fetched)
    plain = ThreadPipe(max_chunks=4)
    producer = threading.Thread(
        target=_produce,
        args=(reader, fetcher, plain, expected, label),
        name="drkit-chunks",
        daemon=True,
    )
    producer.start()
    out = plain.reader()
    try:
        consume(out)
        while out.read(CHUNK):  # a consumer that stopped early is not a full read
            pass
    except BaseException:
        plain.abort()
        producer.join()
        raise
    producer.join()
    return Digests(reader.plain_size, reader.tree_digest, reader.stored_size, reader.stored_sha256)


@dataclass(frozen=True)
class _Fetcher:
    """Reads and opens the chunks of one group (one ranged read of a pack, or one chunk
    object of its own)."""

    chunks: ChunkStore
    identities: list[Identity]
    id_key: bytes | None
    fetched: Callable[[int], object] | None

    def __call__(self, group: list[ChunkRef]) -> list[bytes]:
        chunks, first = self.chunks, group[0].at
        if first is None:  # one object per chunk (before packs)
            blob = chunks.get(group[0].id)
            if self.fetched is not None:
                self.fetched(len(blob))
            where = chunks.label(group[0].id)
            return [open_chunk(blob, group[0], self.identities, self.id_key, where)]
        length = sum(ref.at.length for ref in group if ref.at is not None)
        span = chunks.read(first.pack, first.offset, length)
        if self.fetched is not None:
            self.fetched(len(span))
        return [
            open_chunk(blob, ref, self.identities, self.id_key, where)
            for ref, blob, where in _split(span, group, chunks.pack_label(first.pack))
        ]


def _produce(
    reader: IndexReader,
    fetch: _Fetcher,
    plain: ThreadPipe,
    expected: Digests | None,
    label: str,
) -> None:
    """The producer thread of ``decode``: ``_PREFETCH`` groups in flight, their plain
    bytes into ``plain`` in order, then the index's digests against ``expected``."""
    pool = ThreadPoolExecutor(max_workers=_PREFETCH, thread_name_prefix="drkit-fetch")
    ahead: deque[Future[list[bytes]]] = deque()
    pending = _groups(iter(reader))
    try:
        for group in _take(pending, _PREFETCH):
            ahead.append(pool.submit(fetch, group))
        while ahead:
            datas = ahead.popleft().result()
            for group in _take(pending, 1):
                ahead.append(pool.submit(fetch, group))
            for data in datas:
                view = memoryview(data)
                for start in range(0, len(view), CHUNK):
                    plain.write(bytes(view[start : start + CHUNK]))
                del view
            del datas
        if expected is not None and (
            reader.plain_size != expected.plain_size
            or reader.tree_digest != expected.plain_sha256
            or reader.stored_size != expected.stored_size
            or reader.stored_sha256 != expected.stored_sha256
        ):
            raise IntegrityError(f"{label}: digest does not match the manifest")
        plain.close()
    except PipeClosed:
        pass  # the consumer failed; its error is the one raised
    except BaseException as exc:
        plain.fail(exc)
    finally:
        for fut in ahead:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def open_chunk(
    blob: bytes, ref: ChunkRef, identities: list[Identity], id_key: bytes | None, where: str
) -> bytes:
    """The plain bytes of one stored chunk, checked: its stored digest (packed), age's
    authentication, its size and its id. IntegrityError naming ``where`` otherwise."""
    if ref.at is not None and hashlib.sha256(blob).digest() != ref.at.digest:
        raise IntegrityError(f"{where}: stored bytes do not match the index's digest")
    try:
        compressed = pyrage.decrypt(blob, identities)
    except Exception as exc:
        raise decrypt_error(exc, where) from None
    try:
        data = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=ref.size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{where}: compressed data is corrupt ({exc})") from None
    if len(data) != ref.size or chunk_id(data, id_key) != ref.id:
        raise IntegrityError(f"{where}: chunk content does not match its id")
    return data


def chunk_where(pack_label: str, at: Packed) -> str:
    """How a packed chunk is named in errors: its pack and byte range."""
    return f"{pack_label} (bytes {at.offset}-{at.offset + at.length - 1})"


def _split(
    span: bytes, group: list[ChunkRef], pack_label: str
) -> Iterator[tuple[ChunkRef, bytes, str]]:
    """The chunks of a group from the bytes of its one ranged read."""
    view = memoryview(span)
    start = group[0].at.offset if group[0].at is not None else 0
    for ref in group:
        assert ref.at is not None
        lo = ref.at.offset - start
        yield ref, bytes(view[lo : lo + ref.at.length]), chunk_where(pack_label, ref.at)


def _groups(refs: Iterator[ChunkRef]) -> Iterator[list[ChunkRef]]:
    """``refs`` in order, runs of chunks adjacent in one pack joined: one ranged read
    each, of at most ``_GROUP_BYTES`` stored and ``_GROUP_PLAIN`` plain bytes (a
    highly compressible run would otherwise decompress to many times its size, all
    held until written). A chunk of its own object is alone."""
    group: list[ChunkRef] = []
    end = stored = plain = 0
    for ref in refs:
        at = ref.at
        if group:
            last = group[-1].at
            if (
                at is None
                or last is None
                or at.pack != last.pack
                or at.offset != end
                or stored + at.length > _GROUP_BYTES
                or plain + ref.size > _GROUP_PLAIN
            ):
                yield group
                group, stored, plain = [], 0, 0
        group.append(ref)
        if at is not None:
            end, stored, plain = at.offset + at.length, stored + at.length, plain + ref.size
    if group:
        yield group


_T = TypeVar("_T")


def _take(it: Iterator[_T], n: int) -> list[_T]:
    out: list[_T] = []
    for ref in it:
        out.append(ref)
        if len(out) == n:
            break
    return out
