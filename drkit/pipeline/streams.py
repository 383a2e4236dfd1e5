"""Byte-stream building blocks: hashing readers and a bounded thread pipe.

Stages are plain file-like objects so they compose with zstandard, pyrage
and the stores. The pipe between threads is bounded, so memory stays flat
whatever the size of the data.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, cast

CHUNK = 256 << 10


class HashingReader(io.RawIOBase):
    """Counts and sha256-hashes every byte read through it.

    If the wrapped stream raises, the exception is kept in ``error`` so a
    caller can re-raise the original after a library (pyrage) has wrapped it.
    """

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0
        self.eof = False
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        try:
            data = self._raw.read(-1 if n is None else n)
        except BaseException as exc:
            self.error = exc
            raise
        if data:
            self._sha.update(data)
            self.size += len(data)
        if (n is None or n < 0) or (not data and n != 0):
            self.eof = True
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def drain(stream: BinaryIO | io.RawIOBase) -> None:
    """Read ``stream`` to its end, discarding the bytes (they are checked on the way)."""
    while stream.read(CHUNK):
        pass


def read_limited(stream: BinaryIO, limit: int) -> bytes:
    """All of ``stream`` up to ``limit + 1`` bytes (so a caller can tell "too large").

    One ``read(n)`` is not enough: a raw stream (a pipe reader) returns what one
    block holds, and a caller taking that for the whole would silently lose the rest.
    """
    out = bytearray()
    while len(out) <= limit and (chunk := stream.read(limit + 1 - len(out))):
        out += chunk
    return bytes(out)


class PipeClosed(Exception):
    """The reading side of a ThreadPipe went away."""


_EOF = object()


class ThreadPipe:
    """A bounded in-memory pipe: one writer thread, one reader thread.

    The writer calls ``write``/``close``/``fail``; the reader calls ``read``.
    ``abort`` (from either side, or a third thread) makes the writer's next
    ``write`` and a blocked ``read`` raise PipeClosed. At most ``max_chunks``
    chunks are in flight.
    """

    def __init__(self, max_chunks: int = 4) -> None:
        self._q: queue.Queue[object] = queue.Queue(max_chunks)
        self._aborted = threading.Event()
        self._buf = memoryview(b"")
        self._done = False

    # writer side
    def write(self, data: bytes) -> int:
        chunk = bytes(data)
        while True:
            if self._aborted.is_set():
                raise PipeClosed("reader closed the pipe")
            try:
                self._q.put(chunk, timeout=0.2)
                return len(chunk)
            except queue.Full:
                continue

    def close(self) -> None:
        self._put_final(_EOF)

    def fail(self, exc: BaseException) -> None:
        self._put_final(exc)

    def _put_final(self, item: object) -> None:
        while not self._aborted.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    # reader side
    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while chunk := self.read(CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        while not self._buf:
            if self._done:
                return b""
            item = self._get()
            if item is _EOF:
                self._done = True
                return b""
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._buf = memoryview(cast(bytes, item))
        out = bytes(self._buf[:n])
        self._buf = self._buf[n:]
        return out

    def _get(self) -> object:
        # A reader that is itself a middle stage (a thread between two pipes)
        # must not wait forever once the consumer downstream has aborted.
        while True:
            if self._aborted.is_set():
                raise PipeClosed("pipe was aborted")
            try:
                return self._q.get(timeout=0.2)
            except queue.Empty:
                continue

    def abort(self) -> None:
        """Either side gives up: pending and later writes and reads raise PipeClosed."""
        self._aborted.set()
        # Unblock a writer waiting on a full queue.
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break

    def writer(self, buffer_size: int = CHUNK) -> io.BufferedWriter:
        """A C-buffered writer: libraries writing 8 KiB at a time cost one queue op per MiB."""
        return io.BufferedWriter(cast(Any, _PipeRawWriter(self)), buffer_size=buffer_size)

    def reader(self) -> BinaryIO:
        return cast(BinaryIO, _PipeRawReader(self))


class _PipeRawWriter(io.RawIOBase):
    def __init__(self, pipe: ThreadPipe) -> None:
        super().__init__()
        self._pipe = pipe

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        return self._pipe.write(b)


class _PipeRawReader(io.RawIOBase):
    def __init__(self, pipe: ThreadPipe) -> None:
        super().__init__()
        self._pipe = pipe

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        return self._pipe.read(-1 if n is None else n)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._pipe.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class TeeReader(io.RawIOBase):
    """Passes every chunk read to ``observe`` (e.g. a tar scanner) on the way through."""

    def __init__(self, raw: BinaryIO, observe: Callable[[bytes], None]) -> None:
        super().__init__()
        self._raw = raw
        self._observe = observe

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        data = self._raw.read(-1 if n is None else n)
        if data:
            self._observe(data)
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
