"""Host locks: real processes contending on a real local repository (and on S3).

Each "run" is a separate Python process taking ``host_lock``; a separate state
dir and owner name stand for a separate machine (then only the repository
lock object is shared, as between two servers writing to one bucket).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import DrkitError
from drkit.locks import (
    EXIT_LOCK_HELD,
    HostLock,
    LockHeld,
    LockInfo,
    LockLost,
    host_lock,
    lock_key,
)
from drkit.repository.factory import StoreOptions
from drkit.repository.layout import Repository
from drkit.repository.local import LocalStore
from drkit.repository.s3 import S3Store
from drkit.repository.store import Store, Written
from tests.clock import VirtualClock
from tests.servers.seaweed import SeaweedServer

ROOT = Path(__file__).resolve().parents[1]
HOST = "vultr"

# One run: take the lock, report on stdout as JSON lines, hold it until stdin
# says "release" (or closes), then exit 0. LockHeld -> its exit code.
# RUNNER REPO HOST OWNER TTL WAIT [CONFIRM_DELAY [START_AT]]: REPO a directory or an
# s3:// URL (endpoint in DRKIT_TEST_S3_ENDPOINT, keys in AWS_*); START_AT: an epoch
# time to sleep until, so that racing runs ask at the same moment.
RUNNER = r"""
import json, os, sys, time
from drkit.locks import LockHeld, host_lock
from drkit.repository.factory import StoreOptions, open_store
from drkit.repository.layout import Repository

repo_url, host, owner, ttl, wait = sys.argv[1:6]
confirm_delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.2
start_at = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0

def say(event, **kw):
    print(json.dumps({"event": event, **kw}), flush=True)

endpoint = os.environ.get("DRKIT_TEST_S3_ENDPOINT")
repo = Repository(open_store(repo_url, StoreOptions(endpoint=endpoint)))
time.sleep(max(0.0, start_at - time.time()))
try:
    with host_lock(repo, host, ttl=float(ttl), wait=float(wait), owner=owner,
                   log=lambda m: say("log", message=m), confirm_delay=confirm_delay, poll=0.1):
        say("acquired")
        sys.stdin.readline()
except LockHeld as exc:
    say("held", message=str(exc))
    sys.exit(exc.exit_code)
say("released")
"""


class Run:
    """One contending process; always stopped by PID."""

    def __init__(
        self,
        repo: Path | str,
        state: Path,
        owner: str,
        ttl: float,
        wait: float,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> None:
        env = dict(os.environ, **(env or {}), DRKIT_STATE_DIR=str(state), PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(repo), HOST, owner, str(ttl), str(wait), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.events: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def next_event(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next non-log event (log events are kept in ``events``)."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = _readline(self.proc.stdout, deadline - time.monotonic())
            if line is None:
                break
            if not line:
                raise AssertionError(f"run exited: {self.proc.wait()} {self.stderr()}")
            event: dict[str, Any] = json.loads(line)
            self.events.append(event)
            if event["event"] != "log":
                return event
        raise AssertionError(f"no event within {timeout}s; stderr: {self.stderr()}")

    def logs(self) -> list[str]:
        return [e["message"] for e in self.events if e["event"] == "log"]

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()
        assert self.next_event()["event"] == "released"
        assert self.proc.wait(timeout=30) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _readline(stream: Any, timeout: float) -> str | None:
    """A line from ``stream``, "" at EOF, None on timeout."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(max(timeout, 0.01))
    return box[0] if box else None


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Any]:
    started: list[Run] = []
    repo = tmp_path / "repo"

    def start(
        machine: str = "a",
        owner: str | None = None,
        ttl: float = 30,
        wait: float = 0,
        *extra: str,
        at: Path | str = repo,
        env: dict[str, str] | None = None,
    ) -> Run:
        state = tmp_path / f"state-{machine}"
        run = Run(at, state, owner or f"machine-{machine}", ttl, wait, *extra, env=env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


def repository(tmp_path: Path) -> Repository:
    return Repository(LocalStore(tmp_path / "repo"))


def lock_object(tmp_path: Path) -> dict[str, Any] | None:
    path = tmp_path / "repo" / lock_key(HOST)
    return json.loads(path.read_text()) if path.exists() else None


# -- two processes -------------------------------------------------------------------


def test_second_run_on_the_same_machine_is_refused_naming_the_holder(
    runs: Any, tmp_path: Path
) -> None:
    first = runs()
    assert first.next_event()["event"] == "acquired"
    second = runs()  # same state dir and owner: the local flock decides
    held = second.next_event()
    assert held["event"] == "held"
    assert second.proc.wait(timeout=30) == EXIT_LOCK_HELD == 5
    assert f"host {HOST}" in held["message"]
    assert f"backup by pid {first.pid} since" in held["message"]
    assert "on this machine" in held["message"]
    first.release()
    assert lock_object(tmp_path) is None  # removed on exit


def test_second_machine_is_refused_by_the_repository_lock(runs: Any, tmp_path: Path) -> None:
    first = runs("a")
    assert first.next_event()["event"] == "acquired"
    obj = lock_object(tmp_path)
    assert obj is not None
    assert (obj["owner"], obj["pid"], obj["host"], obj["ttl"]) == ("machine-a", first.pid, HOST, 30)
    assert obj["started"] and obj["heartbeat"]

    second = runs("b")
    held = second.next_event()
    assert held["event"] == "held"
    assert second.proc.wait(timeout=30) == EXIT_LOCK_HELD
    assert f"backup by machine-a pid {first.pid} since" in held["message"]
    assert f"{lock_key(HOST)}" in held["message"]
    first.release()


def test_a_waiting_run_gets_the_lock_when_the_holder_finishes(runs: Any, tmp_path: Path) -> None:
    first = runs("a")
    assert first.next_event()["event"] == "acquired"
    second = runs("b", wait=30)
    time.sleep(1.5)
    assert second.proc.poll() is None and not any(e["event"] != "log" for e in second.events)
    first.release()
    assert second.next_event()["event"] == "acquired"
    assert lock_object(tmp_path)["owner"] == "machine-b"  # type: ignore[index]
    second.release()
    assert lock_object(tmp_path) is None


def test_heartbeat_keeps_a_live_lock_past_its_ttl(runs: Any) -> None:
    first = runs("a", ttl=1.0)
    assert first.next_event()["event"] == "acquired"
    time.sleep(2.5)  # more than two TTLs: only heartbeats keep it fresh
    second = runs("b")
    assert second.next_event()["event"] == "held"
    first.release()


def test_a_dead_holders_lock_is_taken_over_after_its_ttl(runs: Any, tmp_path: Path) -> None:
    ttl = 3.0
    first = runs("a", ttl=ttl)
    assert first.next_event()["event"] == "acquired"
    first.kill()  # no cleanup, no more heartbeats
    killed = time.monotonic()
    assert lock_object(tmp_path)["pid"] == first.pid  # type: ignore[index]

    early = runs("b")
    assert early.next_event()["event"] == "held"  # heartbeat still recent

    patient = runs("c", wait=30)
    assert patient.next_event()["event"] == "acquired"
    assert time.monotonic() - killed >= ttl * 0.75  # not before the TTL (minus beat spacing)
    warnings = [m for m in patient.logs() if "taking over" in m]
    assert len(warnings) == 1
    assert f"machine-a pid {first.pid}" in warnings[0] and "no heartbeat for" in warnings[0]
    patient.release()


def test_a_dead_holder_on_this_machine_is_taken_over_at_once(runs: Any) -> None:
    first = runs("a", ttl=600)
    assert first.next_event()["event"] == "acquired"
    first.kill()  # the kernel drops its flock; its lock object stays
    second = runs("a")  # same machine, same state dir
    assert second.next_event()["event"] == "acquired"
    assert any(f"its process {first.pid} on this machine is gone" in m for m in second.logs())
    second.release()


def _s3_repository(seaweed: SeaweedServer) -> tuple[Repository, str, dict[str, str]]:
    """A repository on a fresh bucket: itself, its URL and the environment a run needs."""
    bucket = seaweed.new_bucket_name("locks")
    seaweed.client().create_bucket(Bucket=bucket)
    options = StoreOptions(
        endpoint=seaweed.endpoint,
        access_key_id=seaweed.access_key,
        secret_access_key=seaweed.secret_key,
    )
    env = {
        "DRKIT_TEST_S3_ENDPOINT": seaweed.endpoint,
        "AWS_ACCESS_KEY_ID": seaweed.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
    }
    return Repository(S3Store(bucket, "drkit", options)), f"s3://{bucket}/drkit", env


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_racing_machines_exactly_one_takes_the_lock(
    runs: Any, tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    """Eight machines ask at the same moment with no confirm delay: the store's
    compare-and-swap (a hard link; S3 If-None-Match) lets exactly one win. Write,
    re-read at once (what a store without one falls back to) lets several."""
    at: Path | str = tmp_path / "repo"
    env: dict[str, str] = {}
    if kind == "s3":
        _, at, env = _s3_repository(request.getfixturevalue("seaweed"))
    start_at = str(time.time() + 3.0)  # every run has started and sleeps until then
    racers = [runs(f"m{i}", None, 30, 0, "0", start_at, at=at, env=env) for i in range(8)]
    events = [r.next_event(timeout=60)["event"] for r in racers]
    assert events.count("acquired") == 1, events
    assert events.count("held") == 7, events
    winner = racers[events.index("acquired")]
    for r in racers:
        if r is not winner:
            assert r.proc.wait(timeout=30) == EXIT_LOCK_HELD
            assert f"pid {winner.pid}" in r.events[-1]["message"]
    winner.release()


def test_s3_lock_is_taken_without_the_confirm_delay(seaweed: SeaweedServer) -> None:
    """With a compare-and-swap there is nothing to wait for: a backup to S3 does not
    start a second later than it must (it did: 1 s per run)."""
    repo, _, _ = _s3_repository(seaweed)
    clock = VirtualClock()
    with host_lock(repo, HOST, confirm_delay=30, owner="machine-a", clock=clock):
        assert LockInfo.from_json(repo.store.get_bytes(lock_key(HOST)), "lock").owner == "machine-a"
    assert clock.sleeps == []
    assert repo.store.stat(lock_key(HOST)) is None


def test_s3_takeover_of_a_stale_lock_loses_to_a_rival_who_came_first(
    seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two machines find the same dead holder's lock; one takes it over first. The
    other's replace is conditional on the version it read (If-Match), so it is
    refused and reports the rival instead of overwriting it."""
    repo, _, _ = _s3_repository(seaweed)
    key = lock_key(HOST)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    dead = LockInfo(HOST, "machine-dead", 4242, "backup", old, old, 60.0, "d")
    repo.store.put_bytes(key, dead.to_json(), retain=False)
    now = dt.datetime.now(dt.UTC)
    rival = LockInfo(HOST, "machine-z", 777, "backup", now, now, 600.0, "z")
    read = repo.store.get_bytes_tagged

    def read_then_rival_takes_over(k: str) -> tuple[bytes, str | None]:
        found = read(k)
        if LockInfo.from_json(found[0], "lock").owner == "machine-dead":
            repo.store.put_bytes(key, rival.to_json(), retain=False)
        return found

    monkeypatch.setattr(repo.store, "get_bytes_tagged", read_then_rival_takes_over)
    messages: list[str] = []
    with (
        pytest.raises(LockHeld, match="machine-z pid 777"),
        host_lock(repo, HOST, confirm_delay=0, owner="machine-a", log=messages.append),
    ):
        pass
    assert any("taking over the lock held by machine-dead" in m for m in messages)
    assert LockInfo.from_json(repo.store.get_bytes(key), "lock").owner == "machine-z"


def test_s3_heartbeat_does_not_overwrite_a_takeover(
    seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A takeover that lands between a heartbeat's read and its write: the heartbeat's
    write is conditional on the version it read, so it is refused, the run learns it
    lost the lock, and the new holder's lock stands."""
    repo, _, _ = _s3_repository(seaweed)
    key = lock_key(HOST)
    messages: list[str] = []
    read = repo.store.get_bytes_tagged
    taken = threading.Event()
    with host_lock(repo, HOST, ttl=0.4, confirm_delay=0, log=messages.append) as held:
        mine = held.info
        now = dt.datetime.now(dt.UTC)
        thief = LockInfo(HOST, "machine-z", 777, "backup", now, now, 600.0, "z")

        def read_then_taken_over(k: str) -> tuple[bytes, str | None]:
            found = read(k)
            if not taken.is_set():  # the next heartbeat's read: then the takeover
                taken.set()
                repo.store.put_bytes(key, thief.to_json(), retain=False)
            return found

        monkeypatch.setattr(repo.store, "get_bytes_tagged", read_then_taken_over)
        deadline = time.monotonic() + 10
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.lost and taken.is_set()
        assert held.info.token == mine.token
        with pytest.raises(LockLost):
            held.check()
    assert LockInfo.from_json(repo.store.get_bytes(key), "lock").owner == "machine-z"
    assert any("lost the lock" in m and "machine-z" in m for m in messages)


class _UncheckedStore(LocalStore):
    """A store with no compare-and-swap (as an S3 server that ignores If-None-Match)."""

    def put_bytes_if(self, key: str, data: bytes, *, tag: str | None) -> Written:
        return Store.put_bytes_if(self, key, data, tag=tag)


# -- in-process details ----------------------------------------------------------------


def test_lock_is_removed_when_the_body_raises(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    with pytest.raises(RuntimeError), host_lock(repo, HOST, confirm_delay=0):
        assert repo.store.stat(lock_key(HOST)) is not None
        raise RuntimeError("boom")
    assert repo.store.stat(lock_key(HOST)) is None
    with host_lock(repo, HOST, confirm_delay=0):  # and it can be taken again
        pass


def test_a_run_notices_when_another_took_its_lock(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    messages: list[str] = []
    with host_lock(repo, HOST, ttl=0.4, confirm_delay=0, log=messages.append) as held:
        assert isinstance(held, HostLock)
        held.check()
        foreign = LockInfo.from_json(repo.store.get_bytes(lock_key(HOST)), "lock")
        stolen = LockInfo(**{**foreign.__dict__, "owner": "machine-z", "token": "other"})
        repo.store.put_bytes(lock_key(HOST), stolen.to_json())
        deadline = time.monotonic() + 5
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.lost
        with pytest.raises(LockLost, match="another run took over"):
            held.check()
    assert any("lost the lock" in m and "machine-z" in m for m in messages)
    # The thief's lock is not removed by the run that lost it.
    assert LockInfo.from_json(repo.store.get_bytes(lock_key(HOST)), "lock").owner == "machine-z"


def test_an_unreadable_lock_object_unchanged_for_the_ttl_is_replaced_with_a_warning(
    tmp_path: Path,
) -> None:
    """A fresh one may be a newer drkit's live lock (tests/unit/test_malformed_documents.py)."""
    repo = repository(tmp_path)
    repo.store.put_bytes(lock_key(HOST), b"garbage")
    old = time.time() - 61
    os.utime(tmp_path / "repo" / lock_key(HOST), (old, old))
    messages: list[str] = []
    with host_lock(repo, HOST, ttl=60, confirm_delay=0, log=messages.append):
        pass
    assert any("replacing the unreadable lock" in m and "unchanged for 1m" in m for m in messages)


def test_lock_held_is_a_drkit_error_with_exit_code_5(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    with host_lock(repo, HOST, confirm_delay=0, owner="machine-a"):
        other = LockInfo.from_json(repo.store.get_bytes(lock_key(HOST)), "lock")
        # Same process, so the local flock refuses first.
        with pytest.raises(LockHeld) as info, host_lock(repo, HOST, confirm_delay=0):
            pass
    assert isinstance(info.value, DrkitError) and info.value.exit_code == 5
    assert info.value.host == HOST
    assert other.owner == "machine-a"


def test_a_competitor_writing_during_the_confirm_delay_wins(tmp_path: Path) -> None:
    """No compare-and-swap in the store: write, wait, re-read; whoever reads their own
    token holds it. The rival writes while the run waits its confirm delay."""
    repo = Repository(_UncheckedStore(tmp_path / "repo"))
    clock = VirtualClock()

    def rival_writes(seconds: float) -> None:
        assert seconds == 1.5  # the confirm delay: the run wrote its lock and waits
        ours = LockInfo.from_json(repo.store.get_bytes(lock_key(HOST)), "lock")
        assert ours.owner == "machine-a"
        rival = LockInfo(**{**ours.__dict__, "owner": "machine-z", "pid": 4242, "token": "z"})
        repo.store.put_bytes(lock_key(HOST), rival.to_json())

    clock.on_sleep = rival_writes
    with (
        pytest.raises(LockHeld, match="machine-z pid 4242"),
        host_lock(repo, HOST, confirm_delay=1.5, owner="machine-a", clock=clock),
    ):
        pass
    assert clock.sleeps == [1.5]
    assert LockInfo.from_json(repo.store.get_bytes(lock_key(HOST)), "lock").owner == "machine-z"


def test_a_wait_for_the_local_lock_ends_at_its_deadline(tmp_path: Path) -> None:
    """Waiting polls on the clock until ``wait`` is over, then names the holder."""
    repo = repository(tmp_path)
    clock = VirtualClock()
    with (
        host_lock(repo, HOST, confirm_delay=0, owner="machine-a"),
        pytest.raises(LockHeld, match="holds the lock on this machine"),
        host_lock(repo, HOST, wait=600, poll=7, confirm_delay=0, clock=clock),
    ):
        pass
    assert clock.sleeps == [7.0] * 85 + [5.0]  # 600 s of polls, the last one shorter
    assert clock.t == 600


def test_a_waiting_run_takes_the_repository_lock_once_it_is_released(tmp_path: Path) -> None:
    """Another machine's live lock: polled (on the clock) until it goes, then taken."""
    repo = repository(tmp_path)
    now = dt.datetime.now(dt.UTC)
    other = LockInfo(HOST, "machine-z", 4242, "backup", now, now, 600.0, "z")
    repo.store.put_bytes(lock_key(HOST), other.to_json())
    clock = VirtualClock()

    def holder_finishes(_seconds: float) -> None:
        if clock.t >= 30:
            repo.store.delete(lock_key(HOST))

    clock.on_sleep = holder_finishes
    with host_lock(repo, HOST, wait=60, poll=2, confirm_delay=0, owner="a", clock=clock) as held:
        assert held.info.owner == "a"
    assert clock.sleeps == [2.0] * 15
    assert repo.store.stat(lock_key(HOST)) is None
