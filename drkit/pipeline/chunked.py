"""The deduplicating artifact codec ``cdc+zstd+age/v1``.

The plain stream is cut into content-defined chunks (FastCDC: cut points
follow the content, so an insertion or a changed row moves only the chunks
around it). Each chunk is named by a keyed hash of its plain bytes (v2:
HMAC-SHA256 under a per-host id key; v1: sha256) and stored
once per host and recipient set, compressed and encrypted on its own
(``zstd`` then ``age``); a chunk a previous backup already stored is not
compressed, encrypted or uploaded again. The artifact itself is the index
(chunk_index.py): the chunk ids and sizes in order, streamed both ways. It
is plain so that ``prune`` can tell which chunks are still referenced
without the identity; it reveals which pieces snapshots share and their
sizes, never their bytes.

Integrity on the way back: age authenticates each chunk, the sha256 of its
decompressed bytes must equal its id, the chunk list must match the tree
digest the manifest records as ``plain_sha256``, and the index object its
stored digest.

Work is split so that two CPUs overlap: the caller's thread reads, cuts and
hashes; worker threads compress and encrypt new chunks (zstandard and
hashlib release the GIL; pyrage does not, but encrypts ~900 MB/s); other
threads upload them. Memory is bounded by the chunks in flight (see
``encode``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import pyrage
import zstandard
from pyfastcdc import FastCDC

from drkit.errors import IntegrityError
from drkit.pipeline.age import Identity, Recipient
from drkit.pipeline.chunk_index import ChunkRef, IndexReader, IndexWriter, WrittenIndex
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
_PREFETCH = 2  # chunks fetched ahead while restoring


class ChunkStore(Protocol):
    """Where chunks live (one host, one recipient set ``rset``); see repository/chunks.py."""

    rset: str

    def has(self, chunk_id: bytes) -> bool: ...

    def put(self, chunk_id: bytes, blob: bytes) -> None: ...

    def get(self, chunk_id: bytes) -> bytes: ...

    def label(self, chunk_id: bytes) -> str: ...


@dataclass(frozen=True)
class Encoded:
    """What ``encode`` made: the index (to store, then close) and what was new."""

    index: WrittenIndex
    new_chunks: int
    new_bytes: int  # stored bytes of the chunks this run uploaded
    reused_chunks: int


def encode(
    plain: BinaryIO,
    recipients: list[Recipient],
    chunks: ChunkStore,
    *,
    id_key: bytes,
    level: int = 3,
    workers: int = 2,
    uploads: int = 3,
) -> Encoded:
    """Cut ``plain`` into chunks and store those ``chunks`` lacks; return the index.

    Three stages overlap: this thread reads, cuts and hashes; ``workers``
    threads compress and encrypt new chunks; ``uploads`` threads store them
    (uploads wait on the network or fsync, so they get threads of their own
    rather than holding a CPU worker). Memory: at most ``workers + 1`` plain
    chunks and ``uploads`` sealed ones at a time; the index goes to a
    temporary file as it grows.

    Raises whatever ``plain.read`` raised (a failed source) or a chunk upload
    raised, after the work in flight has stopped: the caller then writes no
    index, and the chunks already stored are garbage for ``prune``.
    """
    fix_mmap_threshold()
    cutter = FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
    local = threading.local()
    slots = threading.Semaphore(uploads)  # sealed chunks in upload (a sealer waits for a slot)
    index = IndexWriter(FORMAT, chunks.rset)
    submitted: set[bytes] = set()
    sealing: deque[Future[Future[int]]] = deque()
    storing: deque[Future[int]] = deque()
    new_bytes = 0
    reused = 0

    def put(chunk_id: bytes, blob: bytes) -> int:
        try:
            chunks.put(chunk_id, blob)
            return len(blob)
        finally:
            slots.release()

    def seal(chunk_id: bytes, data: bytes) -> Future[int]:
        if not hasattr(local, "zstd"):
            local.zstd = zstandard.ZstdCompressor(level=level)  # one per worker thread
        blob = pyrage.encrypt(local.zstd.compress(data), recipients)
        del data
        slots.acquire()
        return store_pool.submit(put, chunk_id, blob)

    def settle(block: bool) -> None:
        nonlocal new_bytes
        while storing and (block or storing[0].done()):
            new_bytes += storing.popleft().result()

    seal_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drkit-seal")
    store_pool = ThreadPoolExecutor(max_workers=uploads, thread_name_prefix="drkit-chunk-put")
    try:
        for piece in cutter.cut_stream(plain):
            data = bytes(piece.data)  # the view is only valid until the next cut
            cid = chunk_id(data, id_key)
            index.add(cid, len(data))
            if cid in submitted or chunks.has(cid):
                reused += 1
                continue
            submitted.add(cid)
            while len(sealing) >= workers:
                storing.append(sealing.popleft().result())
                settle(block=False)
            sealing.append(seal_pool.submit(seal, cid, data))
            del data
        while sealing:
            storing.append(sealing.popleft().result())
        settle(block=True)
    except BaseException:
        for fut in sealing:
            fut.cancel()
        seal_pool.shutdown(wait=True, cancel_futures=True)
        store_pool.shutdown(wait=True, cancel_futures=True)
        index.discard()
        raise
    seal_pool.shutdown(wait=True)
    store_pool.shutdown(wait=True)
    return Encoded(index.finish(), len(submitted), new_bytes, reused)


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
    chunks = chunks_of(reader.rset)
    plain = ThreadPipe(max_chunks=4)

    def fetch(ref: ChunkRef) -> bytes:
        where = chunks.label(ref.id)
        blob = chunks.get(ref.id)
        if fetched is not None:
            fetched(len(blob))
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

    def produce() -> None:
        pool = ThreadPoolExecutor(max_workers=_PREFETCH, thread_name_prefix="drkit-fetch")
        ahead: deque[Future[bytes]] = deque()
        pending = iter(reader)
        try:
            for ref in _take(pending, _PREFETCH):
                ahead.append(pool.submit(fetch, ref))
            while ahead:
                data = ahead.popleft().result()
                for ref in _take(pending, 1):
                    ahead.append(pool.submit(fetch, ref))
                view = memoryview(data)
                for start in range(0, len(view), CHUNK):
                    plain.write(bytes(view[start : start + CHUNK]))
                del view, data
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

    producer = threading.Thread(target=produce, name="drkit-chunks", daemon=True)
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


def _take(it: Iterator[ChunkRef], n: int) -> list[ChunkRef]:
    out: list[ChunkRef] = []
    for ref in it:
        out.append(ref)
        if len(out) == n:
            break
    return out
