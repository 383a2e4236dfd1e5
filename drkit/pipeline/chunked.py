"""The deduplicating artifact codec ``cdc+zstd+age/v1``.

The plain stream is cut into content-defined chunks (FastCDC: cut points
follow the content, so an insertion or a changed row moves only the chunks
around it). Each chunk is named by the sha256 of its plain bytes and stored
once per host and recipient set, compressed and encrypted on its own
(``zstd`` then ``age``); a chunk a previous backup already stored is not
compressed, encrypted or uploaded again. The artifact itself is a small
plain-JSON index: the chunk ids and sizes in order. It is plain so that
``prune`` can tell which chunks are still referenced without the identity;
it reveals which pieces snapshots share and their sizes, never their bytes.

Integrity on the way back: age authenticates each chunk, the sha256 of its
decompressed bytes must equal its id, and the whole stream must match the
plain digest in the manifest; the index object itself is checked against
the manifest's stored digest.

Work is split so that two CPUs overlap: the caller's thread reads, cuts and
hashes; worker threads compress and encrypt new chunks (zstandard and
hashlib release the GIL; pyrage does not, but encrypts ~900 MB/s); other
threads upload them. Memory is bounded by the chunks in flight (see
``encode``).
"""

from __future__ import annotations

import hashlib
import json
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
from drkit.pipeline.codec import Digests, decrypt_error
from drkit.pipeline.memory import fix_mmap_threshold
from drkit.pipeline.streams import CHUNK, PipeClosed, ThreadPipe

FORMAT = "cdc+zstd+age/v1"
INDEX_FORMAT = "drkit-chunk-index"
INDEX_VERSION = 1

# restic's chunk sizes: small enough that a changed row costs ~1 MiB, large
# enough that a 1 GB dump is ~1000 objects. FastCDC's mean is AVG + MIN.
MIN_CHUNK = 128 << 10
AVG_CHUNK = 384 << 10
MAX_CHUNK = 1 << 20
_PREFETCH = 2  # chunks fetched ahead while restoring


class ChunkStore(Protocol):
    """Where chunks live (one host, one recipient set ``rset``); see repository/chunks.py."""

    rset: str

    def has(self, chunk_id: str) -> bool: ...

    def put(self, chunk_id: str, blob: bytes) -> None: ...

    def get(self, chunk_id: str) -> bytes: ...

    def label(self, chunk_id: str) -> str: ...


@dataclass(frozen=True)
class ChunkRef:
    id: str  # sha256 of the plain chunk, hex
    size: int  # plain bytes


@dataclass(frozen=True)
class Index:
    rset: str  # the recipient set whose chunk store holds the chunks
    refs: list[ChunkRef]


@dataclass(frozen=True)
class Encoded:
    """What ``encode`` made: the plain digests, the index, and what was new."""

    plain_size: int
    plain_sha256: str
    index: bytes
    new_chunks: int
    new_bytes: int  # stored bytes of the chunks this run uploaded
    reused_chunks: int


def index_bytes(rset: str, refs: list[ChunkRef], plain_size: int, plain_sha256: str) -> bytes:
    doc = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "codec": FORMAT,
        "set": rset,
        "plain_size": plain_size,
        "plain_sha256": plain_sha256,
        "chunks": [[r.id, r.size] for r in refs],
    }
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def parse_index(raw: bytes, label: str) -> Index:
    """An index object's recipient set and chunk list; IntegrityError if it is not one."""
    try:
        doc = json.loads(raw)
        if doc.get("format") != INDEX_FORMAT or doc.get("version") != INDEX_VERSION:
            raise ValueError("not a drkit chunk index of a known version")
        refs = [ChunkRef(str(i), int(n)) for i, n in doc["chunks"]]
        rset = str(doc["set"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{label}: unreadable chunk index ({exc})") from None
    for ref in refs:
        if len(ref.id) != 64 or ref.size < 0 or not _is_hex(ref.id):
            raise IntegrityError(f"{label}: unreadable chunk index (bad chunk id)")
    if not rset or not _is_hex(rset):
        raise IntegrityError(f"{label}: unreadable chunk index (bad recipient set)")
    return Index(rset, refs)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def encode(
    plain: BinaryIO,
    recipients: list[Recipient],
    chunks: ChunkStore,
    *,
    level: int = 3,
    workers: int = 2,
    uploads: int = 3,
) -> Encoded:
    """Cut ``plain`` into chunks and store those ``chunks`` lacks; return the index.

    Three stages overlap: this thread reads, cuts and hashes; ``workers``
    threads compress and encrypt new chunks; ``uploads`` threads store them
    (uploads wait on the network or fsync, so they get threads of their own
    rather than holding a CPU worker). Memory: at most ``workers + 1`` plain
    chunks and ``2 * uploads`` sealed ones at a time.

    Raises whatever ``plain.read`` raised (a failed source) or a chunk upload
    raised, after the work in flight has stopped: the caller then writes no
    index, and the chunks already stored are garbage for ``prune``.
    """
    fix_mmap_threshold()
    cutter = FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
    local = threading.local()
    plain_size = 0
    slots = threading.Semaphore(uploads)  # sealed chunks in upload (a sealer waits for a slot)
    refs: list[ChunkRef] = []
    submitted: set[str] = set()
    sealing: deque[Future[Future[int]]] = deque()
    storing: deque[Future[int]] = deque()
    new_bytes = 0
    reused = 0

    def put(chunk_id: str, blob: bytes) -> int:
        try:
            chunks.put(chunk_id, blob)
            return len(blob)
        finally:
            slots.release()

    def seal(chunk_id: str, data: bytes) -> Future[int]:
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
            chunk_id = hashlib.sha256(data).hexdigest()
            refs.append(ChunkRef(chunk_id, len(data)))
            plain_size += len(data)
            if chunk_id in submitted or chunks.has(chunk_id):
                reused += 1
                continue
            submitted.add(chunk_id)
            while len(sealing) >= workers:
                storing.append(sealing.popleft().result())
                settle(block=False)
            sealing.append(seal_pool.submit(seal, chunk_id, data))
            del data
        while sealing:
            storing.append(sealing.popleft().result())
        settle(block=True)
    except BaseException:
        for fut in sealing:
            fut.cancel()
        seal_pool.shutdown(wait=True, cancel_futures=True)
        store_pool.shutdown(wait=True, cancel_futures=True)
        raise
    seal_pool.shutdown(wait=True)
    store_pool.shutdown(wait=True)
    digest = tree_digest(refs)
    return Encoded(
        plain_size=plain_size,
        plain_sha256=digest,
        index=index_bytes(chunks.rset, refs, plain_size, digest),
        new_chunks=len(submitted),
        new_bytes=new_bytes,
        reused_chunks=reused,
    )


def decode(
    index: bytes,
    chunks_of: Callable[[str], ChunkStore],
    identities: list[Identity],
    consume: Callable[[BinaryIO], object],
    *,
    expected: Digests | None,
    label: str,
) -> Digests:
    """Fetch, decrypt and check each chunk of ``index`` in order into ``consume``.

    ``consume`` reads the plain stream; a chunk that fails authentication or
    whose bytes do not hash to its id makes the next read raise
    IntegrityError naming the chunk object, as does a whole stream whose
    digest differs from ``expected``. Returns the digests seen (stored: the
    index object's). ``chunks_of`` opens the chunk store of a recipient set.
    """
    fix_mmap_threshold()
    parsed = parse_index(index, label)
    refs = parsed.refs
    chunks = chunks_of(parsed.rset)
    plain = ThreadPipe(max_chunks=4)
    plain_size = 0

    def fetch(ref: ChunkRef) -> bytes:
        where = chunks.label(ref.id)
        blob = chunks.get(ref.id)
        try:
            compressed = pyrage.decrypt(blob, identities)
        except Exception as exc:
            raise decrypt_error(exc, where) from None
        try:
            data = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=ref.size)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{where}: compressed data is corrupt ({exc})") from None
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.id:
            raise IntegrityError(f"{where}: chunk content does not match its id")
        return data

    def produce() -> None:
        nonlocal plain_size
        pool = ThreadPoolExecutor(max_workers=_PREFETCH, thread_name_prefix="drkit-fetch")
        ahead: deque[Future[bytes]] = deque()
        pending = iter(refs)
        try:
            for ref in _take(pending, _PREFETCH):
                ahead.append(pool.submit(fetch, ref))
            while ahead:
                data = ahead.popleft().result()
                for ref in _take(pending, 1):
                    ahead.append(pool.submit(fetch, ref))
                plain_size += len(data)
                view = memoryview(data)
                for start in range(0, len(view), CHUNK):
                    plain.write(bytes(view[start : start + CHUNK]))
                del view, data
            # Every chunk matched its id, so the ids' digest stands for the bytes.
            if expected is not None and (
                plain_size != expected.plain_size or tree_digest(refs) != expected.plain_sha256
            ):
                raise IntegrityError(f"{label}: content digest does not match the manifest")
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
    reader = plain.reader()
    try:
        consume(reader)
        while reader.read(CHUNK):  # a consumer that stopped early is not a full read
            pass
    except BaseException:
        plain.abort()
        producer.join()
        raise
    producer.join()
    stored_sha = hashlib.sha256(index).hexdigest()
    if expected is not None and (
        len(index) != expected.stored_size or stored_sha != expected.stored_sha256
    ):
        raise IntegrityError(f"{label}: stored digest does not match the manifest")
    return Digests(plain_size, tree_digest(refs), len(index), stored_sha)


def tree_digest(refs: list[ChunkRef]) -> str:
    """The plain digest of a chunked artifact: sha256 over its chunks' ids (raw bytes).

    Each id is the sha256 of its chunk, so this commits to every plain byte in
    order, as the whole-stream sha256 of ``zstd+age/v1`` does, without
    hashing the data a second time (0.5 CPU-s per GB on the backup host).
    """
    h = hashlib.sha256()
    for ref in refs:
        h.update(bytes.fromhex(ref.id))
    return h.hexdigest()


def _take(it: Iterator[ChunkRef], n: int) -> list[ChunkRef]:
    out: list[ChunkRef] = []
    for ref in it:
        out.append(ref)
        if len(out) == n:
            break
    return out
