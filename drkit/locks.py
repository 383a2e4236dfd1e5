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

A held lock raises ``LockHeld`` (exit code 5) naming the holder.
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
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from drkit.durations import format_duration
from drkit.errors import DrkitError, ObjectNotFound
from drkit.paths import state_dir
from drkit.repository.layout import Repository
from drkit.repository.store import Written

Log = Callable[[str], None]

EXIT_LOCK_HELD = 5
DEFAULT_TTL = 15 * 60.0  # seconds; heartbeats every TTL/4
LOCK_FORMAT = "drkit-lock"


class LockHeld(DrkitError):
    """Another run holds the host's lock (exit code 5); ``holder`` says who, if known."""

    exit_code = EXIT_LOCK_HELD

    def __init__(self, message: str, host: str, holder: LockInfo | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.holder = holder


class LockLost(DrkitError):
    """Another run took over this run's repository lock while it was running."""


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


@dataclass(frozen=True)
class LockInfo:
    """The content of a repository lock object."""

    host: str  # the policy host the lock is for
    owner: str  # the machine holding it (its host name)
    pid: int
    operation: str
    started: dt.datetime
    heartbeat: dt.datetime
    ttl: float  # seconds: stale when the heartbeat is older
    token: str
    pidns: str | None = None

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"format": LOCK_FORMAT, "version": 1, **asdict(self)}
        data["started"] = self.started.isoformat()
        data["heartbeat"] = self.heartbeat.isoformat()
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> LockInfo:
        """Raises ValueError for anything that is not a lock object."""
        try:
            data = json.loads(raw)
            if data.get("format") != LOCK_FORMAT:
                raise ValueError("not a drkit lock")
            return cls(
                host=str(data["host"]),
                owner=str(data["owner"]),
                pid=int(data["pid"]),
                operation=str(data.get("operation", "backup")),
                started=dt.datetime.fromisoformat(data["started"]),
                heartbeat=dt.datetime.fromisoformat(data["heartbeat"]),
                ttl=float(data["ttl"]),
                token=str(data["token"]),
                pidns=data.get("pidns"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"unreadable lock ({exc})") from None

    def describe(self, now: dt.datetime) -> str:
        beat = format_duration(max(now - self.heartbeat, dt.timedelta(0)))
        return (
            f"{self.operation} by {self.owner} pid {self.pid} since {_stamp(self.started)} "
            f"(last heartbeat {beat} ago, stale after "
            f"{format_duration(dt.timedelta(seconds=self.ttl))})"
        )


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
                self._log(f"warning: host {self.info.host}: could not refresh lock: {exc}")

    def _refresh(self) -> None:
        """One heartbeat: the lock gets a fresh time, only while it is still ours (where
        the store can compare-and-swap, also when a takeover lands between our read
        and our write)."""
        found = _fetch(self.repo, self.key)
        if found is None or _token_of(found[0]) != self.info.token:
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
        except ValueError:  # overwritten with something else: not ours any more
            current = None
        holder = current.describe(_utcnow()) if current else "nobody (deleted)"
        self._log(
            f"warning: host {self.info.host}: lost the lock "
            f"{self.repo.url}/{self.key}; now held by {holder}"
        )

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
        except DrkitError as exc:  # the TTL frees it for the next run anyway
            self._log(f"warning: host {self.info.host}: could not remove lock: {exc}")


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
    return _token_of(found[0]) if found else None


def _token_of(raw: bytes) -> str | None:
    """The token of a lock object's bytes; None if they are not a lock."""
    try:
        return LockInfo.from_json(raw).token
    except ValueError:
        return None


def _read(repo: Repository, key: str) -> LockInfo | None:
    """The lock object at ``key``, None if absent. An unreadable one raises ValueError."""
    found = _fetch(repo, key)
    return LockInfo.from_json(found[0]) if found else None


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
def _local_lock(host: str, wait: float, poll: float, operation: str) -> Iterator[None]:
    """flock on the host's lock file in the state dir; raises LockHeld after ``wait`` seconds."""
    path = local_lock_path(host)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockHeld(_local_message(host, path), host) from None
                time.sleep(min(poll, remaining))
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
) -> Iterator[HostLock]:
    """Hold the host's local and repository locks for the ``with`` body.

    ``ttl``: seconds after the last heartbeat when others may take the lock
    over (heartbeats every ``ttl/4``). ``wait``: seconds to wait for a held
    lock before raising ``LockHeld`` (0: fail at once). ``owner``: this
    machine's name in the lock (default the host name). Warnings (stale lock
    taken over, lost lock, refresh failures) go to ``log``. The lock object is
    removed on exit, also when the body raises. Raises LockHeld (exit code 5)
    naming the holder; RepositoryError if the repository cannot be written.
    """
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    owner = owner or socket.gethostname()
    deadline = time.monotonic() + wait
    key = lock_key(host)
    with _local_lock(host, wait, poll, operation):
        while True:
            now = _utcnow()
            found = _fetch(repo, key)
            current = None
            if found is not None:
                try:
                    current = LockInfo.from_json(found[0])
                except ValueError as exc:
                    log(f"warning: host {host}: replacing unreadable lock {repo.url}/{key}: {exc}")
            if current is not None:
                reason = _stale_reason(current, owner, now)
                if reason is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise LockHeld(_held_message(host, repo, current, now), host, current)
                    time.sleep(min(poll, remaining))
                    continue
                log(
                    f"warning: host {host}: taking over the lock held by {current.owner} "
                    f"pid {current.pid} since {_stamp(current.started)}: {reason}"
                )
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
            if found is None:
                written = repo.store.put_bytes_if(key, mine.to_json(), tag=None)
            else:
                written = _replace(repo, key, mine.to_json(), found[1])
            if written is Written.YES:
                break
            if written is Written.UNCHECKED:
                time.sleep(confirm_delay)
            # REFUSED: another run wrote between our read and our write (or a retry
            # of our own request found our first attempt already there).
            if _token(repo, key) == mine.token:
                break
            # Someone else's lock stands: loop to wait for it or report it.
        held = HostLock(repo, mine, log, interval=ttl / 4)
        held._start()
        try:
            yield held
        finally:
            held._release()
