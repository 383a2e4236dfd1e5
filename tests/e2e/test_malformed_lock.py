"""`drkit backup` against a repository holding a lock object that is not a lock: exit 1
naming the object and what is wrong, in bounded time, no traceback, the object left for
its holder; once unchanged for the lock TTL it is replaced and the backup runs."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.conftest import Keys
from tests.e2e.repos import RepoTarget
from tests.helpers import drkit, write_policy

HOST = "vultr"
LOCK = f"{HOST}/locks/backup.json"
SOURCE = {"kind": "command", "name": "db", "command": ["echo", "x"]}


def a_lock(**changes: object) -> bytes:
    doc: dict[str, object] = {
        "format": "drkit-lock",
        "version": 1,
        "host": HOST,
        "owner": "backup-01",
        "pid": 4242,
        "operation": "backup",
        "started": "2026-12-01T00:00:00+00:00",
        "heartbeat": "2026-12-01T00:00:00+00:00",
        "ttl": 900.0,
        "token": "deadbeef",
    }
    return json.dumps({**doc, **changes}).encode()


GARBAGE = {
    "not json": (b"\x00garbage\xff", "at top level: Invalid JSON"),
    "a list": (b"[1, 2, 3]", "at top level: Input should be an object"),
    "ttl a string": (a_lock(ttl="900"), "at ttl: Input should be a valid number"),
    "ttl negative": (a_lock(ttl=-1), "at ttl: Input should be greater than 0"),
    "pid too large": (a_lock(pid=2**40), "at pid: Input should be less than or equal"),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_backup_exits_1_naming_a_fresh_unreadable_lock(
    tmp_path: Path, keys: Keys, repo: RepoTarget, kind: str
) -> None:
    raw, why = GARBAGE[kind]
    policy = write_policy(tmp_path / "p.toml", HOST, repo.policy, [keys.recipient], [SOURCE])
    if repo.root is not None:
        (repo.root / LOCK).parent.mkdir(parents=True)
    repo.write(LOCK, raw)
    started = time.monotonic()
    res = drkit("backup", "--policy", str(policy), "--wait", "2s", env=repo.env)
    took = time.monotonic() - started
    assert res.returncode == 1, res.output
    assert "Traceback" not in res.output
    assert f"{repo.policy['url']}/{LOCK}: unreadable lock (" in res.stderr, res.stderr
    assert why in res.stderr, res.stderr
    assert re.search(r"; written \d+s ago, it is replaced once unchanged for 15m", res.stderr)
    assert 2 <= took < 60, took  # waited --wait for it, then gave up
    assert repo.read(LOCK) == raw  # not taken over: it may be a newer drkit's live lock
    assert repo.keys(f"{HOST}/snapshots/") == []


def test_an_unreadable_lock_unchanged_for_the_ttl_is_replaced(tmp_path: Path, keys: Keys) -> None:
    """Never blocks for longer than one TTL: then it is replaced with a warning."""
    root = tmp_path / "repo"
    policy = write_policy(
        tmp_path / "p.toml",
        HOST,
        {"url": root.as_uri()},
        [keys.recipient],
        [SOURCE],
        extra='lock_ttl = "1m"',
    )
    (root / HOST / "locks").mkdir(parents=True)
    (root / LOCK).write_bytes(b"[1, 2, 3]")
    old = time.time() - 120
    os.utime(root / LOCK, (old, old))
    res = drkit("backup", "--policy", str(policy))
    assert res.returncode == 0, res.output
    assert f"warning: host {HOST}: replacing the unreadable lock {root.as_uri()}/{LOCK}" in (
        res.stderr
    )
    assert "unchanged for 2m" in res.stderr and "(TTL 1m)" in res.stderr
    assert not (root / LOCK).exists()  # released at the end
