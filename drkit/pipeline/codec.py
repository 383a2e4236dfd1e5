"""The artifact codec ``zstd+age/v1``: plain -> sha256 -> zstd -> age -> sha256 -> sink.

The format is one zstd stream (one frame) encrypted as one age file. Decoding
reads across zstd frames, so a stream of several frames decodes too.

Each stage runs in a thread of its own, joined by bounded ThreadPipes, so on
two CPUs compression (zstandard releases the GIL) overlaps encryption and
the upload instead of taking turns with them:

- encode: ``drkit-compress`` reads and hashes the plain stream in
  ``BLOCK``-sized pieces and compresses them; ``drkit-encrypt`` runs age over
  the compressed stream; the caller's thread feeds the store (``sink``).
- decode: ``drkit-decrypt`` authenticates and decrypts; ``drkit-decompress``
  decompresses and hashes; the caller's thread runs ``consume``.

Both keep the original exception when a stage fails, so a source error
reaches the user unwrapped, and a consumer never sees a clean EOF for data
whose digests do not match.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

import pyrage
import zstandard

from drkit.errors import CryptoError, IntegrityError
from drkit.pipeline.age import Identity, Recipient
from drkit.pipeline.memory import fix_mmap_threshold
from drkit.pipeline.streams import CHUNK, HashingReader, PipeClosed, ThreadPipe

FORMAT = "zstd+age/v1"

# Plain bytes per zstd call: big enough that per-call overhead (Python, the
# GIL hand-over, the pipe) is noise; small enough to keep memory flat.
BLOCK = 1 << 20
# Decoded bytes per piece handed to the consumer (which reads CHUNK at a time).
_DECODE_BLOCK = CHUNK
# pyrage reads its input 8 KiB at a time, each read a Python call: a C
# buffer in front of it turns that into one pipe read per _PYRAGE_BUFFER.
_PYRAGE_BUFFER = 1 << 20
# Chunks in flight between two stages (compressed chunks are ~BLOCK/4).
_DEPTH = 4
# zstd worker threads: 0 by default. One worker with 1 MiB jobs makes encoding a
# fast stream faster (1 GB: 3.8 s instead of 5.2 s wall; `zstd -3 | age` 4.0 s),
# but a PostgreSQL backup is bound by pg_dump and the server (bench: 13.7 s either
# way) while peak RSS grew by ~4 MiB, and memory has a hard target. zstd's default
# job size (8 MiB at level 3) would cost 35 MiB; hence the 1 MiB jobs when enabled.
ZSTD_THREADS = 0
ZSTD_JOB_SIZE = 1 << 20


@dataclass(frozen=True)
class Digests:
    plain_size: int
    plain_sha256: str
    stored_size: int
    stored_sha256: str


# Stages an interrupted ``encode`` did not wait for: the compressor may be blocked reading
# a source that only the caller's clean-up stops (its command killed on the way out), and
# waiting there would hold the stop until the source ends on its own.
_ABANDONED: list[_Stage] = []


def join_abandoned(timeout: float) -> None:
    """Before exiting after Ctrl-C or SIGTERM, once the sources' commands are stopped:
    let the stages an interrupted ``encode`` left finish (each within ``timeout``), so
    that no daemon thread is still reading a pipe when the interpreter shuts down
    (which aborts it: "could not acquire lock ... at interpreter shutdown")."""
    while _ABANDONED:
        _ABANDONED.pop().join(timeout)


class _Stage:
    """A daemon thread running one stage; remembers the exception it ended with."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as exc:  # reported by the stage's pipe; kept for precedence
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


def encode(
    plain: BinaryIO,
    recipients: list[Recipient],
    sink: Callable[[BinaryIO], object],
    *,
    level: int = 3,
    threads: int = ZSTD_THREADS,
) -> Digests:
    """Compress and encrypt ``plain`` into ``sink`` (which reads a stream to its end).

    ``threads``: zstd worker threads (0: compress in the calling stage's thread).
    Returns the sizes and sha256 of the plain and the stored bytes. Raises
    whatever ``plain.read`` raised (e.g. SourceError) or what ``sink``
    raised; in both cases the sink saw an exception instead of EOF.
    """
    fix_mmap_threshold()
    plain_h = HashingReader(plain)
    compressed = ThreadPipe(max_chunks=_DEPTH)
    encrypted = ThreadPipe(max_chunks=_DEPTH)
    first_error: list[BaseException] = []  # the compressor's, set before it fails the pipe

    def compress() -> None:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads, job_size=ZSTD_JOB_SIZE if threads else 0
        )
        cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
        try:
            while block := plain_h.read(BLOCK):
                out = cobj.compress(block)
                if out:
                    compressed.write(out)
            compressed.write(cobj.flush())
            compressed.close()
        except PipeClosed:
            pass  # a later stage failed; its error is the one raised
        except BaseException as exc:
            first_error.append(plain_h.error or exc)
            compressed.fail(first_error[0])
            raise

    def encrypt() -> None:
        source = io.BufferedReader(cast(Any, compressed.reader()), buffer_size=_PYRAGE_BUFFER)
        try:
            out = encrypted.writer()
            pyrage.encrypt_io(source, out, recipients)
            out.flush()
            encrypted.close()
        except BaseException as exc:
            compressed.abort()  # stop the compressor if it is still running
            # pyrage wraps a reader's exception: report the stage's original one.
            encrypted.fail(first_error[0] if first_error else exc)
            raise

    compress_stage = _Stage("drkit-compress", compress)
    encrypt_stage = _Stage("drkit-encrypt", encrypt)
    stored_h = HashingReader(encrypted.reader())
    try:
        sink(cast(BinaryIO, stored_h))
        if not stored_h.eof:
            raise IntegrityError("store returned before reading the whole artifact")
    except BaseException as exc:
        encrypted.abort()
        compressed.abort()
        if isinstance(exc, Exception):
            encrypt_stage.join()
            compress_stage.join()
        else:  # Ctrl-C, SIGTERM: see join_abandoned
            _ABANDONED.extend((encrypt_stage, compress_stage))
        raise
    encrypt_stage.join()
    compress_stage.join()
    return Digests(plain_h.size, plain_h.hexdigest(), stored_h.size, stored_h.hexdigest())


def decode(
    stored: BinaryIO,
    identities: list[Identity],
    consume: Callable[[BinaryIO], object],
    *,
    expected: Digests | None,
    label: str,
) -> Digests:
    """Decrypt and decompress ``stored`` into ``consume`` (which must read to EOF).

    ``consume`` reads plain bytes; if they do not match ``expected``, its
    last read raises IntegrityError instead of returning EOF. Returns the
    digests seen. Raises CryptoError when no identity matches, IntegrityError
    when the data fails authentication or its digests differ from ``expected``.
    """
    fix_mmap_threshold()
    stored_h = HashingReader(stored)
    decrypted = ThreadPipe(max_chunks=_DEPTH)
    plain = ThreadPipe(max_chunks=_DEPTH)
    seen = _Plain()
    decrypt_stage = _Stage(
        "drkit-decrypt", lambda: _decrypt(stored_h, decrypted, identities, label)
    )
    decompress_stage = _Stage(
        "drkit-decompress", lambda: _decompress(decrypted, plain, seen, expected, label)
    )
    reader = plain.reader()
    try:
        consume(reader)
        # A consumer that stopped early must not pass for a full read.
        while reader.read(CHUNK):
            pass
    except BaseException:
        plain.abort()
        decrypted.abort()
        decompress_stage.join()
        decrypt_stage.join()
        raise
    decompress_stage.join()
    decrypt_stage.join()
    if expected is not None and (
        stored_h.size != expected.stored_size or stored_h.hexdigest() != expected.stored_sha256
    ):
        raise IntegrityError(f"{label}: stored digest does not match the manifest")
    return Digests(seen.size, seen.sha.hexdigest(), stored_h.size, stored_h.hexdigest())


@dataclass
class _Plain:
    """What ``decode``'s decompressing stage saw of the plain stream."""

    size: int = 0
    sha: Any = field(default_factory=hashlib.sha256)


def _decrypt(
    stored_h: HashingReader, decrypted: ThreadPipe, identities: list[Identity], label: str
) -> None:
    # pyrage reads 8 KiB at a time: serve those reads from a C buffer.
    source = io.BufferedReader(cast(Any, stored_h), buffer_size=_PYRAGE_BUFFER)
    try:
        out = decrypted.writer()
        pyrage.decrypt_io(source, out, identities)
        out.flush()
        decrypted.close()
    except PipeClosed:
        pass  # the consumer failed and aborted; its error is the one raised
    except BaseException as exc:
        decrypted.fail(stored_h.error or decrypt_error(exc, label))
        raise


def _decompress(
    decrypted: ThreadPipe,
    plain: ThreadPipe,
    seen: _Plain,
    expected: Digests | None,
    label: str,
) -> None:
    dctx = zstandard.ZstdDecompressor()
    reader = dctx.stream_reader(decrypted.reader(), read_size=CHUNK, read_across_frames=True)
    try:
        try:
            while block := reader.read(_DECODE_BLOCK):
                seen.sha.update(block)
                seen.size += len(block)
                plain.write(block)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{label}: compressed data is corrupt ({exc})") from None
        if expected is not None and (
            seen.size != expected.plain_size or seen.sha.hexdigest() != expected.plain_sha256
        ):
            raise IntegrityError(f"{label}: content digest does not match the manifest")
        plain.close()
    except PipeClosed:
        pass
    except BaseException as exc:
        decrypted.abort()  # stop the decrypter if it is still running
        plain.fail(exc)
        raise


def decrypt_error(exc: BaseException, label: str) -> BaseException:
    text = str(exc).lower()
    if "no matching keys" in text or "no identity matched" in text:
        return CryptoError(f"{label}: the identity does not match any recipient of this backup")
    return IntegrityError(f"{label}: authentication failed, the stored data was altered ({exc})")
