"""One backup per host at a time, through the real CLI: a second run exits 5 naming the
holder (same machine: the local lock; another machine: the repository lock), --wait
waits, a dead holder's lock is taken over, prune refuses during a backup."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Keys
from tests.e2e.repos import RepoTarget
from tests.helpers import drkit, trust_for, write_policy

HOST = "vultr"


def slow_policy(tmp_path: Path, keys: Keys, repo: dict[str, Any], gate: Path) -> Path:
    """A policy whose dump waits until ``gate/release`` exists (after touching ``gate/started``)."""
    script = f"touch {gate}/started; while [ ! -e {gate}/release ]; do sleep 0.05; done; echo data"
    source = {"kind": "command", "name": "db", "command": ["sh", "-c", script]}
    return write_policy(tmp_path / f"{HOST}.toml", HOST, repo, [keys.recipient], [source])


@contextmanager
def running_backup(
    policy: Path, gate: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    """`drkit backup` in the background, held inside its dump until the block ends."""
    gate.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "drkit", "backup", "--policy", str(policy), "--json"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (gate / "started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first backup never started its dump"
            time.sleep(0.05)
        yield proc
    finally:
        (gate / "release").touch()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def committed(repo: RepoTarget) -> list[str]:
    return [k for k in repo.keys(f"{HOST}/snapshots/") if k.endswith("manifest.json")]


def test_a_second_run_on_the_same_machine_exits_5_naming_the_holder(
    tmp_path: Path, keys: Keys
) -> None:
    repo = RepoTarget("local", {"url": (tmp_path / "repo").as_uri()}, root=tmp_path / "repo")
    gate = tmp_path / "gate"
    policy = slow_policy(tmp_path, keys, repo.policy, gate)
    with running_backup(policy, gate, {}) as first:
        second = drkit("backup", "--policy", str(policy))
        assert second.returncode == 5, second.output
        assert f"error: host {HOST}: another run holds the lock on this machine" in second.stderr
        assert f"backup by pid {first.pid} since" in second.stderr
        # Prune refuses too: it would race the running backup.
        pruned = drkit("prune", "--policy", str(policy))
        assert pruned.returncode == 5 and f"pid {first.pid}" in pruned.stderr
    assert first.returncode == 0, first.stderr
    assert len(committed(repo)) == 1  # only the first run committed
    assert repo.keys(f"{HOST}/locks/") == []  # released at the end


def test_another_machine_is_stopped_by_the_repository_lock(
    tmp_path: Path, keys: Keys, repo: RepoTarget
) -> None:
    """A second machine (its own state dir) sees the lock object in the repository."""
    gate = tmp_path / "gate"
    policy = slow_policy(tmp_path, keys, repo.policy, gate)
    with running_backup(policy, gate, repo.env) as first:
        elsewhere = {**repo.env, "DRKIT_STATE_DIR": str(tmp_path / "other-machine")}
        second = drkit("backup", "--policy", str(policy), "--json", env=elsewhere)
        assert second.returncode == 5, second.output
        expected = f"another run holds the lock {repo.policy['url']}/{HOST}/locks/backup.json:"
        assert expected in second.stderr
        assert f"backup by {socket.gethostname()} pid {first.pid} since" in second.stderr
        (result,) = json.loads(second.stdout)["results"]
        assert result["status"] == "locked"
        # --wait: the same run waits for the holder, then backs up.
        waiting = subprocess.Popen(
            [sys.executable, "-m", "drkit", "backup", "--policy", str(policy), "--wait", "2m"],
            env={**os.environ, **elsewhere},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.5)
            assert waiting.poll() is None  # still waiting while the first one runs
        finally:
            (gate / "release").touch()
            _out, err = waiting.communicate(timeout=120)
    assert first.returncode == 0, first.stderr
    assert waiting.returncode == 0, err
    assert len(committed(repo)) == 2


def test_a_dead_holders_lock_is_taken_over_after_its_ttl(tmp_path: Path, keys: Keys) -> None:
    root = tmp_path / "repo"
    source = {"kind": "command", "name": "db", "command": ["echo", "x"]}
    policy = write_policy(
        tmp_path / "p.toml", HOST, {"url": root.as_uri()}, [keys.recipient], [source]
    )
    beat = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    stale = {
        "format": "drkit-lock",
        "version": 1,
        "host": HOST,
        "owner": "backup-01",
        "pid": 4242,
        "operation": "backup",
        "started": beat.isoformat(),
        "heartbeat": beat.isoformat(),
        "ttl": 900.0,
        "token": "deadbeef",
        "pidns": None,
    }
    (root / HOST / "locks").mkdir(parents=True)
    (root / HOST / "locks" / "backup.json").write_text(json.dumps(stale))
    res = drkit("backup", "--policy", str(policy))
    assert res.returncode == 0, res.output
    assert "warning: host vultr: taking over the lock held by backup-01 pid 4242" in res.stderr
    assert "no heartbeat for 20m" in res.stderr
    assert not (root / HOST / "locks" / "backup.json").exists()


@pytest.mark.parametrize("other", ["failing", "fine"])
def test_exit_code_of_a_locked_host_beside_others(tmp_path: Path, keys: Keys, other: str) -> None:
    """Exit 5 only when nothing else failed; a failure elsewhere makes it 3."""
    pdir = tmp_path / "policies"
    pdir.mkdir()
    repo = {"url": (tmp_path / "repo").as_uri()}
    gate = tmp_path / "gate"
    policy = slow_policy(pdir, keys, repo, gate)
    command = ["false"] if other == "failing" else ["echo", "ok"]
    write_policy(
        pdir / "other.toml",
        "other",
        repo,
        [keys.recipient],
        [{"kind": "command", "name": "c", "command": command}],
    )
    with running_backup(policy, gate, {}):
        res = drkit("--policy-dir", str(pdir), "backup", "--all", "--json")
    statuses = {r["host"]: r["status"] for r in json.loads(res.stdout)["results"]}
    assert statuses == {HOST: "locked", "other": "failed" if other == "failing" else "success"}
    assert res.returncode == (3 if other == "failing" else 5), res.output


def test_a_run_that_lost_its_lock_refuses_to_commit(tmp_path: Path, keys: Keys) -> None:
    """The residual race of the repository lock: the loser sees a foreign token at its
    next heartbeat and the backup checks that just before writing its manifest."""
    from drkit.actions.backup import backup
    from drkit.locks import LockLost, host_lock, lock_key
    from drkit.policy.loader import load_policy
    from drkit.repository.factory import open_store
    from drkit.repository.layout import Repository

    root = tmp_path / "repo"
    source = {"kind": "command", "name": "db", "command": ["echo", "x"]}
    policy = load_policy(
        write_policy(tmp_path / "p.toml", HOST, {"url": root.as_uri()}, [keys.recipient], [source])
    )
    repo = Repository(open_store(root.as_uri()), trust_for())
    with host_lock(repo, HOST, ttl=0.2, confirm_delay=0.0) as held:
        theirs = held.info.to_json().replace(held.info.token.encode(), b"0123456789abcdef")
        repo.store.put_bytes(lock_key(HOST), theirs)  # another machine wrote over it
        deadline = time.monotonic() + 10
        while not held.lost:
            assert time.monotonic() < deadline, "the heartbeat never noticed"
            time.sleep(0.02)
        with pytest.raises(LockLost, match=f"host {HOST}: another run took over the lock"):
            backup(policy, repo, lock=held)
    assert list(repo.store.list(f"{HOST}/snapshots/")) == []  # nothing committed, nothing left
