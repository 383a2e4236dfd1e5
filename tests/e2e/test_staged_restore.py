"""#16 (4): file restores are staged and renamed into place per top-level path.

``kill -9`` during a ``--force`` restore of a large file left the live file as a
fragment; now it is the old file or the new one, whole, and ``--resume`` finishes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from drkit.sources.staging import PREFIX
from tests.conftest import Keys
from tests.e2e.test_confined_restore import Host, rel, tar_of
from tests.helpers import drkit

MIB = 1 << 20


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def write_random(path: Path, mib: int) -> None:
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def leftovers(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(PREFIX)]


def size_being_written(live: Path, old: os.stat_result, staging_parent: Path) -> int:
    """Bytes so far of the new big file: in a staging dir, or (unstaged) the live one."""
    sizes = [f.stat().st_size for d in leftovers(staging_parent) for f in d.rglob("blob.bin")]
    try:
        st = live.stat()
    except FileNotFoundError:
        return max(sizes, default=0)
    if (st.st_ino, st.st_size) != (old.st_ino, old.st_size):
        sizes.append(st.st_size)
    return max(sizes, default=0)


def test_kill_9_mid_force_restore_leaves_the_old_or_the_new_file_whole(
    tmp_path: Path, keys: Keys
) -> None:
    h = Host(tmp_path, keys)
    blob = h.app / "blob.bin"
    write_random(blob, 192)
    (h.app / "small.txt").write_text("new\n")
    h.backup()
    new = digest(blob)
    write_random(blob, 160)  # changed since the backup: --force overwrites it
    (h.app / "small.txt").write_text("old\n")
    old, old_stat = digest(blob), blob.stat()

    argv = [
        sys.executable,
        "-m",
        "drkit",
        "restore",
        "--yes",
        "--force",
        "--policy",
        str(h.policy),
        "--identity",
        str(keys.identity_file),
    ]
    log = (tmp_path / "restore.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed_at = 0
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            written = size_being_written(blob, old_stat, h.app.parent)
            if 40 * MIB <= written < 150 * MIB:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = written
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert killed_at, (tmp_path / "restore.log").read_text()
    # drkit's tar (its own session) sees the end of its input and exits: let it.
    last, stable = -1, 0
    while stable < 20:
        now = size_being_written(blob, old_stat, h.app.parent)
        stable, last = (stable + 1, last) if now == last else (0, now)
        time.sleep(0.02)

    assert digest(blob) in (old, new), f"a fragment: killed at {killed_at} bytes"
    assert (h.app / "small.txt").read_text() in ("old\n", "new\n")

    res = h.run("restore", "--yes", "--force", "--resume")
    assert res.returncode == 0, res.output
    assert digest(blob) == new and (h.app / "small.txt").read_text() == "new\n"
    assert leftovers(h.app.parent) == []


def test_a_staged_restore_keeps_what_the_backup_lacks_and_replaces_a_file_path(
    tmp_path: Path, keys: Keys
) -> None:
    h = Host(tmp_path, keys)
    conf = tmp_path / "etc" / "app.conf"
    conf.parent.mkdir()
    conf.write_text("backed up\n")
    (h.app / "index.html").write_text("backed up\n")
    h.write([{"kind": "files", "name": "app", "paths": [str(h.app), str(conf)]}])
    h.backup()
    (h.app / "index.html").write_text("changed\n")
    (h.app / "uploads").mkdir()
    (h.app / "uploads" / "since.jpg").write_text("uploaded since the backup\n")
    conf.write_text("changed\n")
    inode = conf.stat().st_ino

    plan = h.run("restore", "--plan", "--force")
    assert plan.returncode == 0, plan.output
    # The plan says where each filesystem's part is staged, how much, and what is free.
    assert f"stage 10 B in {h.app.parent}/{PREFIX}" in plan.output, plan.output
    assert f"stage 10 B in {conf.parent}/{PREFIX}" in plan.output
    assert "free there), then rename into place per top-level path" in plan.output
    res = h.run("restore", "--yes", "--force")
    assert res.returncode == 0, res.output
    assert (h.app / "index.html").read_text() == "backed up\n"
    assert (h.app / "uploads" / "since.jpg").read_text() == "uploaded since the backup\n"
    assert conf.read_text() == "backed up\n" and conf.stat().st_ino != inode  # renamed over
    assert leftovers(h.app.parent) == [] and leftovers(conf.parent) == []


def test_a_kill_between_the_two_renames_is_recovered_by_the_next_run(
    tmp_path: Path, keys: Keys
) -> None:
    h = Host(tmp_path, keys)
    (h.app / "index.html").write_text("backed up\n")
    h.backup()
    # What a kill after moving the old tree aside and before the new one moved in
    # leaves: the path missing, the old tree (with a file the backup lacks) aside.
    ident = hashlib.sha256(b"files/app").hexdigest()[:12]
    aside = h.app.parent / f"{PREFIX}{ident}-1" / "old" / "k1"
    aside.mkdir(parents=True)
    (aside / "path").write_text(str(h.app))
    (h.app / "later.txt").write_text("written after the backup\n")
    h.app.rename(aside / "x")

    res = h.run("restore", "--yes")
    assert res.returncode == 0, res.output
    assert (h.app / "later.txt").read_text() == "written after the backup\n"
    assert (h.app / "index.html").read_text() == "backed up\n"
    assert leftovers(h.app.parent) == []


def test_the_plan_refuses_when_the_staging_does_not_fit(tmp_path: Path, keys: Keys) -> None:
    h = Host(tmp_path, keys)
    (h.app / "index.html").write_text("live\n")
    h.backup()
    member = rel(h.app / "new.html")
    entry = {"path": "/" + member, "type": "file", "size": 1 << 50, "sha256": "0" * 64}
    facts = {"entries": [entry], "files": 1, "bytes": 1 << 50, "truncated": False}
    h.forge("app", "files", "files.tar", tar_of((member, "file", b"x\n")), facts)
    res = h.run("restore", "--yes")
    assert res.returncode == 1, res.output
    assert f"staging needs 1024.0 TiB free on the filesystem of {h.app.parent}" in res.stderr
    assert not (h.app / "new.html").exists() and leftovers(h.app.parent) == []


def test_a_member_named_like_a_staging_dir_is_refused(tmp_path: Path, keys: Keys) -> None:
    h = Host(tmp_path, keys)
    (h.app / "index.html").write_text("live\n")
    h.backup()
    evil = rel(h.app / f"{PREFIX}0123456789ab-1" / "x")
    h.forge(
        "app",
        "files",
        "files.tar",
        tar_of((rel(h.app / "index.html"), "file", b"ok\n"), (evil, "file", b"x")),
    )
    res = drkit(
        "restore",
        "--yes",
        "--force",
        "--policy",
        str(h.policy),
        "--identity",
        str(keys.identity_file),
    )
    assert res.returncode == 1, res.output
    assert f"archive member '/{evil}' refused" in res.stderr, res.stderr
    assert (h.app / "index.html").read_text() == "live\n"
    assert leftovers(h.app.parent) == [] and leftovers(h.app) == []
