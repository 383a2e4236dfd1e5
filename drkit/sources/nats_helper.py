"""The JetStream helper process as a stream: a metadata line, then snapshot bytes."""

from __future__ import annotations

import json
import threading
from contextlib import AbstractContextManager, suppress
from typing import TYPE_CHECKING, Any, BinaryIO

from drkit.errors import SourceError
from drkit.remote.base import Process

MAX_HEADER = 64 << 20  # the metadata line, as the index

if TYPE_CHECKING:
    from drkit.sources.nats import NatsSource


class HelperStream(AbstractContextManager[BinaryIO]):
    """The helper's ``snapshot`` output as a reader: ``header`` holds its first JSON line,
    reads return the snapshot bytes after it, and EOF raises SourceError if the helper
    failed (the artifact then fails, nothing is committed)."""

    def __init__(self, source: NatsSource, op: str, *args: str) -> None:
        self._source, self._op, self._args = source, op, args
        self._proc: Process | None = None
        self._buf = b""
        self._done = False
        self._timer: _Timer | None = None
        self.header: dict[str, Any] = {}

    def __enter__(self) -> BinaryIO:
        proc = self._proc = self._source.start_helper(self._op, *self._args)
        assert proc.stdin is not None
        with suppress(BrokenPipeError):
            proc.stdin.close()
        self._timer = kill_after(self._source.timeout_seconds, proc)
        try:
            self._read_header(proc)
        except BaseException:
            self.__exit__()
            raise
        return self  # type: ignore[return-value]

    def _read_header(self, proc: Process) -> None:
        label = f"{self._source.label}: jetstream {self._op} of {self._args[0]}"
        while b"\n" not in self._buf:
            chunk = proc.stdout.read(65536)
            if not chunk:
                self._finish()  # raises if the helper failed
                raise SourceError(f"{label} ended without its metadata line")
            self._buf += chunk
            if len(self._buf) > MAX_HEADER:
                raise SourceError(f"{label}: metadata line too long")
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            self.header = json.loads(line)
        except ValueError:
            raise SourceError(f"{label}: metadata line is not JSON") from None

    def read(self, n: int = -1) -> bytes:
        assert self._proc is not None
        if n == 0:
            return b""
        if self._buf:
            data, self._buf = (self._buf, b"") if n < 0 else (self._buf[:n], self._buf[n:])
            return data
        if self._done:
            return b""
        data = self._proc.stdout.read(n) if n > 0 else self._proc.stdout.read()
        if not data or n < 0:
            self._finish()
        return data

    def readable(self) -> bool:
        return True

    def _finish(self) -> None:
        assert self._proc is not None
        self._done = True
        rc = self._proc.wait()
        if self._timer:
            self._timer.cancel()
            if self._timer.fired:
                raise SourceError(
                    f"{self._source.label}: jetstream {self._op} of {self._args[0]} timed out "
                    f"after {self._source.config.timeout} and was stopped"
                )
        if rc != 0:
            raise self._source.helper_error(self._op, self._args, self._proc, rc, SourceError)

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if self._timer:
            self._timer.cancel()
        if not self._done:
            proc.kill()
            proc.wait()
        proc.stdout.close()


class _Timer:
    def __init__(self, seconds: float, proc: Process) -> None:
        self.fired = False
        self._proc = proc
        self._t = threading.Timer(seconds, self._fire)
        self._t.daemon = True
        self._t.start()

    def _fire(self) -> None:
        self.fired = True
        self._proc.kill()

    def cancel(self) -> None:
        self._t.cancel()


def kill_after(seconds: float | None, proc: Process) -> _Timer | None:
    return _Timer(seconds, proc) if seconds else None


class Counter:
    """Counts an artifact's plain bytes (the ``observe`` hook)."""

    def __init__(self) -> None:
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)

    feed = add


class Prefixed:
    """``prefix`` then everything ``stream`` holds."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix, self._stream = prefix, stream

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return self._stream.read(n)
