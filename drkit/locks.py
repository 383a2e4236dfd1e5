"""One backup (or prune) per host at a time: a local lock plus a lock object in the repository.

Two layers, because they fail differently:

- **Local**: ``fcntl.flock`` on ``<state dir>/locks/<host>.lock``. Exact and
  released by the kernel when the process dies, but it only sees drkit runs
  on this machine with the same state dir. This is the common case (cron
  starting a run while the previous one is still going).
- **Repository**: the object ``<host>/locks/backup.json`` holding the owner
  machine's name, pid, start time, heartbeat and TTL. It is seen by every
  machine that writes to the repository (a laptop running a manual backup,
  a second server with the same policy). A background thread refreshes the
  heartbeat every TTL/4. A lock whose heartbeat is older than its TTL is
  taken over with a warning (its holder died or lost the network); one whose
  owner is this machine and whose process is gone is taken over at once.

The repository lock is taken with a compare-and-swap where the store has
one (``Store.put_bytes_if``): S3 conditional writes (``If-None-Match: *`` to
create, ``If-Match`` on the ETag read to take over a stale lock), a hard link
in a local directory. Exactly one competitor wins, at once. Stores that
cannot check (an S3 server that ignores the headers, which the S3 store
detects) fall back to write, wait ``confirm_delay``, re-read: whoever reads
their own token back holds it. The residual race there: if a competitor
read "no lock" and then stalled for longer than ``confirm_delay`` before
writing, both runs may believe they hold it until the loser's next
heartbeat sees a foreign token and marks the lock lost (``HostLock.lost``;
``HostLock.check()`` raises). The local flock covers the same-machine case
fully; the repository lock only has to catch rare cross-machine overlaps,
where two snapshots of one host in parallel are wasteful but not corrupting
(each writes its own snapshot id).

A held lock raises ``LockHeld`` (exit code 5) naming the holder. A lock object
that does not parse as a lock (``LockInfo``: types, fields and bounds) is never
taken over at once, since it may be a newer drkit's live lock: while it is
younger than our TTL (by the store's modification time, which heartbeats keep
fresh) it bars the run like a held lock, then raises ``MalformedLock`` (exit
1) naming the object; once older, it is replaced with a warning.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic import StringConstraints as Text
from pydantic.dataclasses import dataclass

from drkit.durations import format_duration
from drkit.errors import DrkitError, ObjectNotFound, RepositoryError, UsageError
from drkit.logs import Log, warn
from drkit.paths import state_dir
from drkit.repository.documents import describe
from drkit.repository.layout import Repository
from drkit.repository.store import Written
from drkit.retry import SYSTEM_CLOCK, Clock, wait_until

EXIT_LOCK_HELD = 5
DEFAULT_TTL = 15 * 60.0  # seconds; heartbeats every TTL/4
# A lock claiming a longer TTL would keep others out for that long after its holder died.
MAX_TTL = 7 * 24 * 3600.0
LOCK_FORMAT: Final = "drkit-lock"
_MAX_LOCK_BYTES = 64 << 10  # ours are ~400 bytes; anything far larger is not a lock
# Writes tried before the deadline may end a takeover: the second covers a rival
# who won our first race and already left.
_MIN_ATTEMPTS = 2


class LockHeld(DrkitError):
    """Another run holds the host's lock (exit code 5); ``holder`` says who, if known."""

    exit_code = EXIT_LOCK_HELD

    def __init__(self, message: str, host: str, holder: LockInfo | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.holder = holder


class LockLost(DrkitError):
    """Another run took over this run's repository lock while it was running."""


class MalformedLock(RepositoryError):
    """The lock object is not a lock this drkit can read (exit code 1): ``origin`` is its
    URL, ``problem`` what is wrong with it (never its content), ``advice`` what now."""

    def __init__(self, origin: str, problem: str, advice: str = "") -> None:
        super().__init__(
            f"{origin}: unreadable lock ({problem})" + (f"; {advice}" if advice else "")
        )
        self.origin = origin
        self.problem = problem


def lock_key(host: str) -> str:
    return f"{host}/locks/backup.json"


def local_lock_path(host: str) -> Path:
    return state_dir() / "locks" / f"{host}.lock"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_namespace() -> str | None:
    """Linux pid namespace id: a pid means the same process only within one namespace."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


_Name = Annotated[str, Text(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
"""A printable name from a lock object: it ends up in messages and on terminals."""


@dataclass(frozen=True, config=ConfigDict(strict=True, extra="forbid"))
class LockInfo:
    """The content of a repository lock object, checked field by field when read.

    Bounds keep a well-formed lock from blocking forever or crashing the reader:
    a TTL of at most ``MAX_TTL``, a pid ``os.kill`` accepts, aware times with the
    heartbeat not before the start.
    """

    host: _Name  # the policy host the lock is for
    owner: _Name  # the machine holding it (its host name)
    pid: Annotated[int, Field(gt=0, le=2**31 - 1)]
    operation: _Name
    started: AwareDatetime
    heartbeat: AwareDatetime
    ttl: Annotated[float, Field(gt=0, le=MAX_TTL, allow_inf_nan=False)]  # seconds
    token: _Name
    pidns: _Name | None = None
    format: Literal["drkit-lock"] = LOCK_FORMAT
    version: Literal[1] = 1

    @model_validator(mode="after")
    def _beats_after_start(self) -> LockInfo:
        if self.heartbeat < self.started:
            raise ValueError("heartbeat is before started")
        return self

    def to_json(self) -> bytes:
        data: dict[str, Any] = asdict(self)
        data["started"] = self.started.isoformat()
        data["heartbeat"] = self.heartbeat.isoformat()
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, origin: str) -> LockInfo:
        """Raises MalformedLock naming ``origin`` for anything that is not a lock object."""
        if len(raw) > _MAX_LOCK_BYTES:
            raise MalformedLock(origin, f"{len(raw)} bytes, a lock is under {_MAX_LOCK_BYTES}")
        try:
            return _LOCK.validate_json(raw)
        except ValidationError as exc:
            raise MalformedLock(origin, describe(exc)) from None

    def describe(self, now: dt.datetime) -> str:
        beat = format_duration(max(now - self.heartbeat, dt.timedelta(0)))
        return (
            f"{self.operation} by {self.owner} pid {self.pid} since {_stamp(self.started)} "
            f"(last heartbeat {beat} ago, stale after "
            f"{format_duration(dt.timedelta(seconds=self.ttl))})"
        )


_LOCK: TypeAdapter[LockInfo] = TypeAdapter(LockInfo)


class HostLock:
    """A held host lock. ``lost`` turns True if another run took the repository lock."""

    def __init__(self, repo: Repository, info: LockInfo, log: Log, interval: float) -> None:
        self.repo = repo
        self.info = info
        self.lost = False
        self._log = log
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"drkit-lock-{info.host}", daemon=True
        )

    @property
    def key(self) -> str:
        return lock_key(self.info.host)

    @property
    def _where(self) -> str:
        return f"{self.repo.url}/{self.key}"

    def check(self) -> None:
        """Raise LockLost if another run took over (call before committing)."""
        if self.lost:
            raise LockLost(
                f"host {self.info.host}: another run took over the lock "
                f"{self.repo.url}/{self.key} while this one was running"
            )

    def _beat(self) -> None:
        while not self.lost and not self._stop.wait(self._interval):
            try:
                self._refresh()
            except DrkitError as exc:  # transient: retried at the next beat
                warn(self._log, f"host {self.info.host}: could not refresh lock: {exc}")

    def _refresh(self) -> None:
        """One heartbeat: the lock gets a fresh time, only while it is still ours (where
        the store can compare-and-swap, also when a takeover lands between our read
        and our write)."""
        found = _fetch(self.repo, self.key)
        if found is None or _token_of(found[0], self._where) != self.info.token:
            self._lose()
            return
        beat = replace(self.info, heartbeat=_utcnow())
        written = _replace(self.repo, self.key, beat.to_json(), found[1])
        # Refused: replaced since we read it, by a takeover or by a retry of this write.
        if written is Written.REFUSED and _token(self.repo, self.key) != beat.token:
            self._lose()
            return
        self.info = beat

    def _lose(self) -> None:
        self.lost = True
        try:
            current = _read(self.repo, self.key)
            holder = current.describe(_utcnow()) if current else "nobody (deleted)"
        except MalformedLock as exc:  # overwritten with something else: not ours any more
            holder = f"nobody drkit can name ({exc.problem})"
        warn(self._log, f"host {self.info.host}: lost the lock {self._where}; now held by {holder}")

    def _start(self) -> None:
        self._thread.start()

    def _release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            current = _read(self.repo, self.key)
            if current is not None and current.token == self.info.token:
                self.repo.store.delete(self.key)
        except DrkitError as exc:  # the TTL frees it for the next run anyway (also unreadable)
            warn(self._log, f"host {self.info.host}: could not remove lock: {exc}")


def _fetch(repo: Repository, key: str) -> tuple[bytes, str | None] | None:
    """The lock object's bytes and version tag, None if absent."""
    try:
        return repo.store.get_bytes_tagged(key)
    except ObjectNotFound:
        return None


def _replace(repo: Repository, key: str, data: bytes, tag: str | None) -> Written:
    """Overwrite the lock object read with version ``tag``: only that version where the
    store has tags, unconditionally (UNCHECKED) where it has none."""
    if tag is None:
        repo.store.put_bytes(key, data, retain=False)
        return Written.UNCHECKED
    return repo.store.put_bytes_if(key, data, tag=tag)


def _token(repo: Repository, key: str) -> str | None:
    found = _fetch(repo, key)
    return _token_of(found[0], f"{repo.url}/{key}") if found else None


def _token_of(raw: bytes, origin: str) -> str | None:
    """The token of a lock object's bytes; None if they are not a lock."""
    try:
        return LockInfo.from_json(raw, origin).token
    except MalformedLock:
        return None


def _read(repo: Repository, key: str) -> LockInfo | None:
    """The lock object at ``key``, None if absent. An unreadable one raises MalformedLock."""
    found = _fetch(repo, key)
    return LockInfo.from_json(found[0], f"{repo.url}/{key}") if found else None


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False


def _stale_reason(current: LockInfo, owner: str, now: dt.datetime) -> str | None:
    """Why ``current`` may be taken over, or None if its holder is alive."""
    age = now - current.heartbeat
    ttl = dt.timedelta(seconds=current.ttl)
    if age > ttl:
        return f"no heartbeat for {format_duration(age)} (TTL {format_duration(ttl)})"
    pidns = _pid_namespace()
    if (
        current.owner == owner
        and pidns is not None
        and current.pidns == pidns
        and current.pid != os.getpid()
        and _process_gone(current.pid)
    ):
        return f"its process {current.pid} on this machine is gone"
    return None


@contextlib.contextmanager
def _local_lock(
    host: str, wait: float, poll: float, operation: str, clock: Clock
) -> Iterator[None]:
    """flock on the host's lock file in the state dir; raises LockHeld after ``wait`` seconds."""
    path = local_lock_path(host)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = clock.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait_until(deadline, poll, clock):
                    raise LockHeld(_local_message(host, path), host) from None
        # Who holds it, for the message a competitor prints.
        record = {"pid": os.getpid(), "operation": operation, "started": _stamp(_utcnow())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _local_message(host: str, path: Path) -> str:
    try:
        record = json.loads(path.read_text())
        who = f"{record['operation']} by pid {record['pid']} since {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        who = "another drkit process"
    return (
        f"host {host}: another run holds the lock on this machine: {who} "
        f"(lock file {path}); wait for it, or pass a longer --wait"
    )


def _held_message(host: str, repo: Repository, current: LockInfo, now: dt.datetime) -> str:
    return (
        f"host {host}: another run holds the lock {repo.url}/{lock_key(host)}: "
        f"{current.describe(now)}; wait for it, or if that machine is gone the lock "
        "is taken over once its heartbeat is older than its TTL"
    )


def _blocker(
    repo: Repository,
    host: str,
    found: tuple[bytes, str | None],
    owner: str,
    ttl: float,
    now: dt.datetime,
    log: Log,
) -> DrkitError | None:
    """The error to raise if the lock object ``found`` still bars us once the wait is
    over (LockHeld: a live holder; MalformedLock: an unreadable object written within
    our TTL), or None if it may be taken over (the warning saying why is logged).

    An unreadable object is not taken over at once: it may be a lock of a newer drkit
    whose run is alive. It is judged by its modification time, which a live holder's
    heartbeats keep recent, against our own TTL.
    """
    where = f"{repo.url}/{lock_key(host)}"
    try:
        current = LockInfo.from_json(found[0], where)
        if current.host != host:
            raise MalformedLock(where, f"it is for host {current.host}")
    except MalformedLock as exc:
        info = repo.store.stat(lock_key(host))
        if info is None:  # deleted meanwhile
            return None
        age, limit = now - info.modified, dt.timedelta(seconds=ttl)
        if age <= limit:
            return MalformedLock(
                where,
                exc.problem,
                f"written {format_duration(max(age, dt.timedelta(0)))} ago, it is replaced "
                f"once unchanged for {format_duration(limit)} (the lock TTL); if no drkit run "
                "holds it (a newer drkit version could), delete it",
            )
        warn(
            log,
            f"host {host}: replacing the unreadable lock {where}, unchanged for "
            f"{format_duration(age)} (TTL {format_duration(limit)}): {exc.problem}",
        )
        return None
    reason = _stale_reason(current, owner, now)
    if reason is None:
        return LockHeld(_held_message(host, repo, current, now), host, current)
    warn(
        log,
        f"host {host}: taking over the lock held by {current.owner} "
        f"pid {current.pid} since {_stamp(current.started)}: {reason}",
    )
    return None


def _wait_or_raise(deadline: float, poll: float, error: DrkitError, clock: Clock) -> None:
    """Sleep a poll interval, or raise ``error`` if the wait is over."""
    if not wait_until(deadline, poll, clock):
        raise error


def _take(
    repo: Repository,
    key: str,
    mine: LockInfo,
    found: tuple[bytes, str | None] | None,
    confirm_delay: float,
    clock: Clock,
) -> bool:
    """Write ``mine`` over what was ``found``; True if the lock object is now ours."""
    if found is None:
        written = repo.store.put_bytes_if(key, mine.to_json(), tag=None)
    else:
        written = _replace(repo, key, mine.to_json(), found[1])
    if written is Written.YES:
        return True
    if written is Written.UNCHECKED:
        clock.sleep(confirm_delay)
    # REFUSED: another run wrote between our read and our write (or a retry
    # of our own request found our first attempt already there).
    return _token(repo, key) == mine.token


@contextlib.contextmanager
def host_lock(
    repo: Repository,
    host: str,
    *,
    ttl: float = DEFAULT_TTL,
    wait: float = 0.0,
    log: Log = lambda _msg: None,
    operation: str = "backup",
    owner: str | None = None,
    confirm_delay: float = 1.0,
    poll: float = 1.0,
    clock: Clock = SYSTEM_CLOCK,
) -> Iterator[HostLock]:
    """Hold the host's local and repository locks for the ``with`` body.

    ``ttl``: seconds after the last heartbeat when others may take the lock
    over (heartbeats every ``ttl/4``). ``wait``: seconds to wait for a held
    lock before raising ``LockHeld`` (0: fail at once). ``owner``: this
    machine's name in the lock (default the host name). Warnings (stale lock
    taken over, lost lock, refresh failures) go to ``log``. The lock object is
    removed on exit, also when the body raises. Every way of waiting ends
    after ``wait`` seconds (plus one more write attempt at most). Raises
    LockHeld (exit code 5) naming the holder; MalformedLock (exit 1) for an
    unreadable lock object written within ``ttl``; RepositoryError if the
    repository cannot be written or does not keep the lock; UsageError for a
    ``ttl`` out of range. Every wait but the heartbeats' is on ``clock`` (tests
    pass one whose sleep only advances its time).
    """
    if not 0 < ttl <= MAX_TTL:
        raise UsageError(
            f"host {host}: lock TTL of {ttl:g}s is out of range (above 0, at most "
            f"{format_duration(dt.timedelta(seconds=MAX_TTL))})"
        )
    owner = owner or socket.gethostname()
    deadline = clock.monotonic() + wait
    key = lock_key(host)
    with _local_lock(host, wait, poll, operation, clock):
        attempts = 0
        while True:
            now = _utcnow()
            found = _fetch(repo, key)
            blocker = _blocker(repo, host, found, owner, ttl, now, log) if found else None
            if blocker is not None:
                _wait_or_raise(deadline, poll, blocker, clock)
                continue
            # Free, stale or given up: take it. Every pass ends in the deadline too,
            # also when the writes do not stick (a server answering 200 to anything).
            if attempts >= _MIN_ATTEMPTS and clock.monotonic() >= deadline:
                raise RepositoryError(
                    f"host {host}: could not take the lock {repo.url}/{key}: {attempts} "
                    "writes of it did not read back as written (does the repository's "
                    "server keep what it accepts?)"
                )
            if attempts:
                clock.sleep(min(poll, max(0.0, deadline - clock.monotonic())))
            attempts += 1
            mine = LockInfo(
                host=host,
                owner=owner,
                pid=os.getpid(),
                operation=operation,
                started=now,
                heartbeat=now,
                ttl=float(ttl),
                token=secrets.token_hex(8),
                pidns=_pid_namespace(),
            )
            if _take(repo, key, mine, found, confirm_delay, clock):
                break
            # Not ours: loop to wait for whoever wrote it, report it, or try again.
        held = HostLock(repo, mine, log, interval=ttl / 4)
        held._start()
        try:
            yield held
        finally:
            held._release()
