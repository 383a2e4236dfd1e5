"""The runner interface: run a command on a host, stream its stdin/stdout.

Sources only ever talk to a host through a Runner, so the same source code
works on the local machine and over SSH. Secrets travel in ``env`` (never in
argv, which shows in process lists and error messages).
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO

from drkit.errors import SourceError
from drkit.redact import drop_partial_secret, scrub

STDERR_TAIL = 2000


class Process(ABC):
    """A started command. ``stdout`` is a binary reader, ``stdin`` a writer or None."""

    argv: list[str]
    stdout: BinaryIO
    stdin: BinaryIO | None

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit; returns the exit status (negative: killed by that signal)."""

    @abstractmethod
    def kill(self) -> None:
        """Stop the command now (it is then reaped by ``wait``)."""

    @abstractmethod
    def stderr_tail(self) -> str:
        """The last ~2 KB the command wrote to stderr."""


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: str


class Runner(ABC):
    """Runs commands on one host. ``host`` is a display label (no credentials)."""

    host: str

    @abstractmethod
    def start(
        self,
        argv: list[str],
        *,
        stdin: bool = False,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> Process:
        """Start ``argv`` (as ``user`` if given) with stdout piped to the caller."""

    def run(
        self,
        argv: list[str],
        *,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> Completed:
        """Run to completion, collecting stdout (small outputs only)."""
        proc = self.start(argv, stdin=input is not None, env=env, user=user)
        if proc.stdin is not None:
            try:
                proc.stdin.write(input or b"")
            except BrokenPipeError:
                pass
            finally:
                proc.stdin.close()
        out = proc.stdout.read()
        rc = proc.wait()
        return Completed(argv, rc, out, proc.stderr_tail())

    def check(
        self,
        argv: list[str],
        *,
        what: str,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> bytes:
        """``run`` and raise SourceError naming ``what`` if the command failed."""
        res = self.run(argv, input=input, env=env, user=user)
        if res.returncode != 0:
            raise SourceError(
                f"{what}: command `{shlex.join(argv)}` {exit_text(res.returncode)}"
                f"{tail_text(res.stderr)}"
            )
        return res.stdout

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def exit_text(rc: int) -> str:
    return f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"


def tail_text(stderr: str) -> str:
    """``": <stderr>"`` for an error message (scrubbed of secrets), or "" if there is none."""
    stderr = scrub(stderr.strip())
    return f": {stderr}" if stderr else ""


class TailBuffer:
    """Keeps the last ``limit`` bytes written to it."""

    def __init__(self, limit: int = STDERR_TAIL) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._cut = False  # something was dropped: the first line may be partial

    def add(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        while self._size - len(self._chunks[0]) >= self._limit:
            self._size -= len(self._chunks.popleft())
            self._cut = True

    def text(self) -> str:
        """The tail as text, scrubbed of secrets before it is cut to ``limit``."""
        raw = b"".join(self._chunks)
        text = scrub(raw.decode("utf-8", "replace"))
        if self._cut or len(raw) > self._limit:
            text = drop_partial_secret(text[-self._limit :])
        return text
