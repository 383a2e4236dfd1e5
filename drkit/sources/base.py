"""The source interface: one module per kind, the same few methods each.

A source produces artifacts (plain byte streams, read through a Runner from
the host) and facts (what a drill or a restore can check later). It also
restores its own artifacts onto a target.
"""

from __future__ import annotations

import shlex
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar

from drkit.durations import parse_duration
from drkit.errors import SourceError
from drkit.logs import Log, LogTo
from drkit.remote.base import Process, Runner, exit_text, tail_text

# Consume a decoded artifact's plain stream: restore code passes a callback.
Feed = Callable[[str, Callable[[BinaryIO], object]], None]


@dataclass
class Artifact:
    """One artifact being produced: ``open()`` returns its plain byte stream.

    ``observe`` (optional) sees every plain chunk, to derive facts from the
    stream itself (e.g. a tar listing) without a second read.
    """

    name: str
    open: Callable[[], AbstractContextManager[BinaryIO]]
    observe: Callable[[bytes], None] | None = None


@dataclass(frozen=True)
class RestoreOptions:
    """Where and how to restore. ``None`` fields mean "as at backup time".

    The source itself was built with the target's runner.
    """

    database: str | None = None  # postgres: target database name
    db_suffix: str = ""  # postgres: restore beside the live database (--rename-db)
    pg_host: str | None = None
    pg_port: int | None = None
    pg_user: str | None = None
    pg_password: str | None = None  # resolved value: never logged
    dest: str | None = None  # files/env: restore under this directory instead of /
    # --force-files: overwrite differing files (files, env, caddy, certbot, pm2).
    force_files: bool = False
    # --force-db: replace databases and data stores (PostgreSQL, roles' attributes, NATS
    # streams and store dirs, docker volumes). --force means both.
    force_db: bool = False
    pg_jobs: int | None = None  # postgres: pg_restore -j for a fresh database (--pg-jobs)
    # Reload/restart the services a step restored (Caddy, nginx, ...) and probe them
    # (--no-reload: neither; the checks then say the services were not probed).
    reload: bool = True
    # --resume: complete an interrupted restore (set by the executor; nats: its journal).
    resume: bool = False
    # What a source says while it restores: the drkit logger (stderr), never stdout.
    log: Log = field(default_factory=LogTo)


@dataclass
class RestoreReport:
    actions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StepPlan:
    """What restoring a source would do on the target; ``blocked`` says why it would refuse."""

    actions: list[str]
    blocked: str | None = None


@dataclass(frozen=True)
class Check:
    """One fact checked on a restored target (after an incident restore, or in a drill)."""

    source: str
    name: str
    status: str  # "pass" | "fail" | "warn"
    detail: str


class Source(ABC):
    """Base of every source kind. ``facts`` fills in as artifacts are produced."""

    kind: ClassVar[str]

    def __init__(self, name: str, config: Any, runner: Runner) -> None:
        self.name = name
        self.config = config
        self.runner = runner
        self.facts: dict[str, Any] = {}

    @property
    def label(self) -> str:
        return f"host {self.runner.host}: source {self.name} ({self.kind})"

    @property
    def run_as(self) -> str | None:
        return getattr(self.config, "sudo_user", None)

    @property
    def timeout_seconds(self) -> float | None:
        """The policy's ``timeout`` for each of this source's commands, if any."""
        text = getattr(self.config, "timeout", None)
        return parse_duration(text).total_seconds() if text else None

    @abstractmethod
    def artifacts(self) -> Iterator[Artifact]:
        """Yield artifacts in order; each is opened, read to the end and closed in turn."""

    @abstractmethod
    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        """Apply this source's artifacts (``feed(name, consume)``) onto ``self.runner``."""

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        """What ``restore`` would create or overwrite; reads the target, changes nothing."""
        return StepPlan([f"restore {self.kind} artifacts"])

    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        """Compare the restored target with the facts recorded at backup time."""
        return []

    def reload(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        """After every step was applied: make the service that uses this source's files
        load them (reload or start it the way the target runs it). A service that cannot
        be brought back is a failed check naming what it no longer serves, not an
        exception: the data is restored either way. Default: nothing to reload."""
        return []

    def staged_artifacts(self, facts: dict[str, Any], opts: RestoreOptions) -> frozenset[str]:
        """Names of the artifacts whose restore onto this target applies nothing before the
        artifact's digests were verified (e.g. loaded into a staging area renamed only
        after the feed returned without an IntegrityError). The executor skips its
        read-everything-first check for those: a second full read (a second download
        from S3). May query the target; changes nothing. Default: none."""
        return frozenset()

    def finish(self) -> None:  # noqa: B027 - optional hook
        """Called after every artifact was stored (e.g. to close a helper session)."""

    def command_stream(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        expect_output: bool = True,
        user: str | None = None,
    ) -> AbstractContextManager[BinaryIO]:
        """Start ``argv`` on the host; its stdout is the stream. Fails closed at EOF."""
        return CommandStream(self, argv, env=env, expect_output=expect_output, user=user)


class CommandStream(AbstractContextManager[BinaryIO]):
    """A command's stdout as a reader that raises SourceError instead of a clean EOF
    when the command exited non-zero, was killed, or wrote nothing when output
    was expected. Leaving the context early kills the command."""

    def __init__(
        self,
        source: Source,
        argv: list[str],
        *,
        env: dict[str, str] | None,
        expect_output: bool,
        user: str | None,
    ) -> None:
        self._source = source
        self._argv = argv
        self._env = env
        self._expect_output = expect_output
        self._user = user if user is not None else source.run_as
        self._proc: Process | None = None
        self._size = 0
        self._done = False
        self._timer: threading.Timer | None = None
        self._timed_out = threading.Event()

    def __enter__(self) -> BinaryIO:
        proc = self._source.runner.start(self._argv, env=self._env, user=self._user)
        self._proc = proc
        timeout = self._source.timeout_seconds
        if timeout:

            def expire() -> None:
                self._timed_out.set()
                proc.kill()

            self._timer = threading.Timer(timeout, expire)
            self._timer.daemon = True
            self._timer.start()
        return self  # type: ignore[return-value]

    def read(self, n: int = -1) -> bytes:
        assert self._proc is not None
        if self._done:
            return b""
        data = self._proc.stdout.read(n) if n and n > 0 else self._proc.stdout.read()
        if data:
            self._size += len(data)
            if n is None or n < 0:
                self._finish()
            return data
        self._finish()
        return b""

    def _finish(self) -> None:
        assert self._proc is not None
        self._done = True
        rc = self._proc.wait()
        if self._timer is not None:
            self._timer.cancel()
        if self._timed_out.is_set():
            raise SourceError(
                f"{self._source.label}: command `{shlex.join(self._argv)}` timed out after "
                f"{self._source.config.timeout} and was stopped; if it needs longer, raise "
                "the source's `timeout` in the policy, else find what holds it up (a lock "
                "another session holds, a stalled server)"
            )
        if rc != 0 and not self.status_ok(rc):
            raise SourceError(
                f"{self._source.label}: command `{shlex.join(self._argv)}` {exit_text(rc)}"
                f"{tail_text(self._proc.stderr_tail())}"
            )
        if self._expect_output and self._size == 0:
            raise SourceError(
                f"{self._source.label}: command `{shlex.join(self._argv)}` wrote nothing"
            )

    def status_ok(self, rc: int) -> bool:
        """Whether a non-zero exit status still means a good stream (a subclass that
        knows the command's warnings decides); default: never."""
        return False

    def readable(self) -> bool:
        return True

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        if not self._done:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def differs_from_policy(facts: dict[str, Any], policy: Mapping[str, object]) -> list[str]:
    """Plan lines for each fact that names another target than the policy does: facts
    are for comparison only, the policy's value is what the restore uses."""
    return [
        f"the snapshot says {key} = {facts[key]!r}, the policy {value!r}: the policy's is used"
        for key, value in policy.items()
        if key in facts and facts[key] != value
    ]


def pipe_into(
    runner: Runner,
    argv: list[str],
    stream: BinaryIO,
    *,
    what: str,
    env: dict[str, str] | None = None,
    user: str | None = None,
) -> str:
    """Run ``argv`` on ``runner`` with ``stream`` as its stdin; return its stdout text.

    Raises SourceError naming ``what`` if the command fails; the command is
    killed if reading ``stream`` fails (e.g. an integrity error).
    """
    from drkit.pipeline.streams import CHUNK

    proc = runner.start(argv, stdin=True, env=env, user=user)
    assert proc.stdin is not None
    out: list[bytes] = []

    def read_output() -> None:
        # A lost connection fails this read too: ``proc.wait()`` reports it, once, so
        # the thread must not print its own traceback.
        with suppress(SourceError, OSError):
            out.append(proc.stdout.read())

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        while chunk := stream.read(CHUNK):
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the command exited early: its status says why
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    rc = proc.wait()
    reader.join()
    if rc != 0:
        raise SourceError(
            f"{what}: command `{shlex.join(argv)}` {exit_text(rc)}{tail_text(proc.stderr_tail())}"
        )
    return b"".join(out).decode("utf-8", "replace")
