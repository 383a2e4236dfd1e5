"""The artifact codec ``zstd+age/v1``: plain -> sha256 -> zstd -> age -> sha256 -> sink.

Encoding runs compression and encryption in a worker thread while the
caller's thread feeds the store; decoding mirrors it. Both keep the original
exception when a stage fails, so a source error reaches the user unwrapped.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

import pyrage
import zstandard

from drkit.errors import CryptoError, IntegrityError
from drkit.pipeline.age import Identity, Recipient
from drkit.pipeline.streams import CHUNK, HashingReader, PipeClosed, ThreadPipe

FORMAT = "zstd+age/v1"


@dataclass(frozen=True)
class Digests:
    plain_size: int
    plain_sha256: str
    stored_size: int
    stored_sha256: str


def encode(
    plain: BinaryIO,
    recipients: list[Recipient],
    sink: Callable[[BinaryIO], object],
    *,
    level: int = 3,
    threads: int = 0,
) -> Digests:
    """Compress and encrypt ``plain`` into ``sink`` (which reads a stream to its end).

    Raises whatever ``plain.read`` raised (e.g. SourceError) or what ``sink``
    raised; in both cases the sink saw an exception instead of EOF.
    """
    plain_h = HashingReader(plain)
    cctx = zstandard.ZstdCompressor(level=level, threads=threads)
    compressed = io.BufferedReader(
        cctx.stream_reader(cast(BinaryIO, plain_h), read_size=CHUNK, closefd=False),
        buffer_size=CHUNK,
    )
    pipe = ThreadPipe()

    def work() -> None:
        try:
            out = pipe.writer()
            pyrage.encrypt_io(compressed, out, recipients)
            out.flush()
            pipe.close()
        except BaseException as exc:
            pipe.fail(plain_h.error or exc)

    worker = threading.Thread(target=work, name="drkit-encode", daemon=True)
    worker.start()
    stored_h = HashingReader(pipe.reader())
    try:
        sink(cast(BinaryIO, stored_h))
    except BaseException:
        pipe.abort()
        worker.join()
        raise
    worker.join()
    if not stored_h.eof:
        raise IntegrityError("store returned before reading the whole artifact")
    return Digests(plain_h.size, plain_h.hexdigest(), stored_h.size, stored_h.hexdigest())


class _VerifyingReader(io.RawIOBase):
    """Plain bytes out; at EOF checks size and sha256 before reporting EOF."""

    def __init__(self, raw: BinaryIO, expected: Digests | None, label: str) -> None:
        super().__init__()
        self._h = HashingReader(raw)
        self._expected = expected
        self._label = label

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        data = self._h.read(n)
        if not data and n != 0 and self._expected is not None:
            exp = self._expected
            if self._h.size != exp.plain_size or self._h.hexdigest() != exp.plain_sha256:
                raise IntegrityError(f"{self._label}: content digest does not match the manifest")
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    @property
    def hashed(self) -> HashingReader:
        return self._h


def decode(
    stored: BinaryIO,
    identities: list[Identity],
    consume: Callable[[BinaryIO], object],
    *,
    expected: Digests | None,
    label: str,
) -> Digests:
    """Decrypt and decompress ``stored`` into ``consume`` (which must read to EOF).

    Raises CryptoError when no identity matches, IntegrityError when the data
    fails authentication or its digests differ from ``expected``.
    """
    stored_h = HashingReader(stored)
    pipe = ThreadPipe()

    def work() -> None:
        try:
            out = pipe.writer()
            pyrage.decrypt_io(stored_h, out, identities)
            out.flush()
            pipe.close()
        except PipeClosed:
            pass  # the consumer failed and aborted; its error is the one raised
        except Exception as exc:
            pipe.fail(stored_h.error or _decrypt_error(exc, label))

    worker = threading.Thread(target=work, name="drkit-decode", daemon=True)
    worker.start()
    dctx = zstandard.ZstdDecompressor()
    plain = _VerifyingReader(
        dctx.stream_reader(pipe.reader(), read_size=CHUNK, read_across_frames=True),
        expected,
        label,
    )
    try:
        try:
            consume(plain)  # type: ignore[arg-type]
            # A consumer that stopped early must not pass for a full read.
            while plain.read(CHUNK):
                pass
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{label}: compressed data is corrupt ({exc})") from None
    except BaseException:
        pipe.abort()
        worker.join()
        raise
    worker.join()
    if expected is not None and (
        stored_h.size != expected.stored_size or stored_h.hexdigest() != expected.stored_sha256
    ):
        raise IntegrityError(f"{label}: stored digest does not match the manifest")
    h = plain.hashed
    return Digests(h.size, h.hexdigest(), stored_h.size, stored_h.hexdigest())


def _decrypt_error(exc: Exception, label: str) -> Exception:
    text = str(exc).lower()
    if "no matching keys" in text or "no identity matched" in text:
        return CryptoError(f"{label}: the identity does not match any recipient of this backup")
    return IntegrityError(f"{label}: authentication failed, the stored data was altered ({exc})")
