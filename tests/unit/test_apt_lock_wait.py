"""scripts/setup.sh and docker-setup.sh wait for apt's lock instead of failing (issue 23,
item 5): scripts/apt-lock.sh's wait, on a lock file of the test's own (apt and dpkg
take fcntl locks, which is what this process takes here), never on the machine's."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wait_script(lock: Path, seconds: int) -> list[str]:
    script = (
        f"source {ROOT / 'scripts' / 'apt-lock.sh'}; APT_LOCKS=({lock} {lock}.absent); "
        f"APT_LOCK_WAIT={seconds}; wait_for_apt_lock"
    )
    return ["bash", "-c", script, "setup.sh"]


def test_waits_for_the_holder_naming_it_then_goes_on(tmp_path: Path) -> None:
    lock = tmp_path / "lock-frontend"
    with open(lock, "w") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)
        threading.Timer(2.0, fcntl.lockf, (held, fcntl.LOCK_UN)).start()
        started = time.monotonic()
        done = subprocess.run(wait_script(lock, 30), capture_output=True, text=True, timeout=60)
        waited = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert 1.5 < waited < 10, waited
    holder = f"pid {os.getpid()} ({Path(f'/proc/{os.getpid()}/comm').read_text().strip()})"
    assert f"setup: waiting for apt, locked by {holder} on {lock}" in done.stderr, done.stderr


def test_gives_up_after_the_bound_saying_who_holds_it(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with open(lock, "w") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)
        done = subprocess.run(wait_script(lock, 2), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"apt is still locked by pid {os.getpid()} " in done.stderr, done.stderr
    assert "after 2 s" in done.stderr and "DRKIT_APT_LOCK_WAIT" in done.stderr


def test_an_unlocked_apt_is_not_waited_for(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    done = subprocess.run(wait_script(lock, 30), capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
