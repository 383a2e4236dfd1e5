"""Files written while they are backed up: never a torn file recorded as good (#17 item 2).

The writes must land while tar is inside a file, which no timing can promise,
so the test puts them there: the drkit under test finds, first on its PATH, a
``tar`` that is the real GNU tar with a checkpoint action. At its first
checkpoint (after ~200 KB of archive, in the middle of ``a.bin``) the action
rewrites ``a.bin`` in place with other bytes and deletes ``z.txt``, which tar
listed but has not read yet (``--sort=name``). Tar then reports the one as
changed and the other as removed; drkit must re-read ``a.bin`` (restored: the
new version, whole) and record ``z.txt`` as vanished, instead of failing the
backup or storing the torn file as good. A file that keeps changing during the
re-read too fails the source, naming it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import drkit, write_policy

SIZE = 4 << 20


def writer_tar(bindir: Path, hook_body: str) -> dict[str, str]:
    """PATH for a drkit whose ``tar`` runs ``hook_body`` (sh) at its checkpoints."""
    bindir.mkdir()
    hook = bindir / "hook.sh"
    hook.write_text("exec >/dev/null 2>&1\n" + hook_body)  # never into the archive
    real = shutil.which("tar")
    (bindir / "tar").write_text(
        f"#!/bin/sh\nexec {real} --sort=name --checkpoint=20 "
        f"--checkpoint-action=exec='sh {hook}' \"$@\"\n"
    )
    (bindir / "tar").chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def data_policy(tmp_path: Path, keys: Any, data: Path) -> Path:
    """Host "box": one files source "data" over ``data``, a local repository."""
    return write_policy(
        tmp_path / "box.toml",
        "box",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "files", "name": "data", "paths": [str(data)]}],
    )


def test_a_file_changed_while_read_is_read_again_and_a_vanished_one_is_reported(
    tmp_path: Path, keys: Any, snapshot_facts: Callable[[Path, str], dict[str, Any]]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"A" * SIZE)
    (data / "z.txt").write_text("deleted while the backup runs\n")
    (data / "m.txt").write_text("steady\n")
    once = tmp_path / "hook-ran"
    env = writer_tar(
        tmp_path / "bin",
        f"[ -e {once} ] && exit 0\ntouch {once}\n"
        f"head -c {SIZE} /dev/zero | tr '\\0' B | dd of={data}/a.bin conv=notrunc\n"
        f"rm -f {data}/z.txt\n",
    )
    policy = data_policy(tmp_path, keys, data)
    res = drkit("backup", "-q", "--policy", str(policy), env=env)  # as cron runs it
    assert res.returncode == 0, res.output
    assert once.exists(), "the writer never ran: the test proves nothing"
    # Named in the run's output even under -q (a cron mail), not only in the facts.
    assert res.stdout.splitlines() == [
        f"box: warning: source data: 1 file(s) changed while read, read again: {data}/a.bin",
        f"box: warning: source data: 1 file(s) vanished before they were read (not in this "
        f"backup): {data}/z.txt",
    ], res.output
    facts = snapshot_facts(policy, "data")
    assert facts["changed"] == [f"{data}/a.bin"]
    assert facts["vanished"] == [f"{data}/z.txt"]
    assert facts["reread"] == ["files.reread-1.tar"]
    entry = next(e for e in facts["entries"] if e["path"].endswith("a.bin"))
    assert entry["size"] == SIZE

    dest = tmp_path / "restored"
    out = drkit(
        "restore",
        "--policy",
        str(policy),
        "--dest",
        str(dest),
        "--yes",
        "--json",
        "--identity",
        str(keys.identity_file),
    )
    assert out.returncode == 0, out.output
    assert json.loads(out.stdout)["verdict"] == "pass"
    restored = dest / str(data).lstrip("/")
    assert (restored / "a.bin").read_bytes() == b"B" * SIZE  # the new version, whole
    assert not (restored / "z.txt").exists()
    assert (restored / "m.txt").read_text() == "steady\n"


def test_a_file_that_keeps_changing_fails_the_source_naming_it(tmp_path: Path, keys: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"A" * SIZE)
    flip = tmp_path / "flip"
    env = writer_tar(  # every checkpoint of every tar: a new version each time
        tmp_path / "bin",
        f"echo x >> {flip}; c=$(wc -l < {flip})\n"
        f"head -c {SIZE} /dev/zero | tr '\\0' \"$(printf '\\\\%03o' $((65 + c % 26)))\" "
        f"| dd of={data}/a.bin conv=notrunc\n",
    )
    policy = data_policy(tmp_path, keys, data)
    res = drkit("backup", "--policy", str(policy), env=env)
    assert res.returncode != 0, res.output
    assert f"{data}/a.bin changed again while read a second time" in res.output, res.output
    assert not list((tmp_path / "repo").rglob("manifest.json"))  # nothing committed
