"""Crash-consistency loops of the fault campaign (#19 item 2): the real ``drkit`` killed
with SIGKILL (its whole process group: drkit and the pg_dump, tar or cat it runs) at a
seeded moment, ``$DRKIT_FAULTS_ITERATIONS`` times (default 2) per operation.

- backup, whole and dedup, into a local directory and into SeaweedFS: after each kill,
  every listed snapshot verifies, the next backup succeeds with no manual step (the
  dead run's lock is taken over), the next prune removes what the kill left and says
  so, nothing partial is left, and at the end every listed snapshot restores equal
  (``crash.check_after_kill``, ``Bench.audit``);
- restore of a files tree over an older version (``--force-files``): after each kill the
  target holds the old tree or the new one, never a mix; ``--resume`` then completes it
  and no staging directory is left;
- restore of a real PostgreSQL database into a server without it: after each kill the
  database is absent or complete (never half loaded); ``--resume`` completes it and no
  staging database is left.

The restore scenarios also run with SIGTERM (systemd's stop) instead of kill -9: a clean
stop, exit 143, its error naming the signal and ``--resume``, no staging directory or
database left at once (before any ``--resume``), the target old or complete.

The quick scenarios (one iteration) run in `make test` too.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Keys
from tests.faults.campaign import HOST, Bench, MiB, Row, iterations, recorded, seeded
from tests.faults.crash import (
    check_after_kill,
    databases_like,
    db_digest,
    drop_database,
    interrupted,
    kill_point,
    make_database,
    make_tree,
    no_traceback,
    pg_policy,
    staging_left,
    startup,
    tree_digest,
)
from tests.helpers import CliResult, drkit, write_policy
from tests.servers.postgres import PgServer
from tests.servers.seaweed import SeaweedServer

KILL = "kill -9 (drkit's process group)"
TERM = "SIGTERM to drkit"
KEEP_ALL = "keep_last = 100"
SIGNALS = [
    pytest.param(signal.SIGKILL, id="kill9"),
    pytest.param(signal.SIGTERM, id="sigterm"),
]


def stopped(sig: int, res: CliResult, what: str) -> str:
    """How a signalled restore ended: "killed", "done", "stopped" (SIGTERM: a clean stop,
    exit 143, its error naming the signal and the next step, ``--resume``), or "before its
    command" (a SIGTERM during the interpreter's start-up: nothing had begun)."""
    no_traceback(res)
    if res.returncode == 0:
        return "done"
    if sig == signal.SIGKILL or res.returncode == -signal.SIGTERM:
        return "killed" if sig == signal.SIGKILL else "before its command"
    assert res.returncode == 143, f"{what}: SIGTERM gave exit {res.returncode}\n{res.output}"
    assert "SIGTERM" in res.stderr, f"{what}: the stop does not say why:\n{res.output}"
    # Stopped in a step: the host and `--resume`; before any (reading the snapshot): again.
    named = f"host {HOST}" in res.stderr and "--resume" in res.stderr
    assert named or "run it again" in res.stderr, (
        f"{what}: the stop names no next step:\n{res.output}"
    )
    return "stopped"


@dataclass(frozen=True)
class KillBackup:
    name: str
    s3: bool
    dedup: bool
    quick: bool = False

    @property
    def operation(self) -> str:
        where = "S3" if self.s3 else "local directory"
        return f"backup ({'dedup, ' if self.dedup else ''}{where})"


BACKUPS = [
    KillBackup("k-backup-local", s3=False, dedup=False, quick=True),
    KillBackup("k-backup-local-dedup", s3=False, dedup=True),
    KillBackup("k-backup-s3", s3=True, dedup=False),
    KillBackup("k-backup-s3-dedup", s3=True, dedup=True),
]


def _param(sc: KillBackup) -> object:
    return pytest.param(sc, id=sc.name, marks=() if sc.quick else (pytest.mark.faults,))


@pytest.fixture
def maybe_seaweed(request: pytest.FixtureRequest) -> Iterator[SeaweedServer | None]:
    sc = request.node.callspec.params["sc"]
    yield request.getfixturevalue("seaweed") if sc.s3 else None


@pytest.mark.parametrize("sc", [_param(sc) for sc in BACKUPS])
def test_kill_backup(
    sc: KillBackup, tmp_path: Path, keys: Keys, maybe_seaweed: SeaweedServer | None
) -> None:
    n = iterations(1 if sc.quick else 2)
    row = Row(
        sc.operation,
        KILL,
        "a seeded moment of the backup, past start-up",
        n,
        "killed or done; listed snapshots verify; next backup and prune clean up",
    )
    with recorded(row) as outcomes:
        size = (4 if sc.dedup else 8) * MiB
        bench = Bench(
            tmp_path, keys, maybe_seaweed, None, dedup=sc.dedup, size=size, retention=KEEP_ALL
        )
        t0 = time.monotonic()
        first = bench.backup()
        window = time.monotonic() - t0
        assert first.returncode == 0, first.output
        start = startup()
        for i in range(n):
            rnd = seeded(sc.name, i)
            bench.change()
            taken = bench.src.read_bytes()
            argv, env = bench.argv("backup", "--json")
            at = kill_point(rnd, window, start)
            killed, res = interrupted(argv, env, at)
            what = f"kill {i + 1} at {at:.2f} s"
            if killed:
                outcomes["killed"] = outcomes.get("killed", 0) + 1
                row.injected += 1
            else:  # it finished first: an ordinary backup
                outcomes["done before the kill"] = outcomes.get("done before the kill", 0) + 1
                assert res.returncode == 0, res.output
                bench.expected[json.loads(res.stdout)["results"][0]["snapshot"]] = taken
            no_traceback(res)
            check_after_kill(bench, row, what, taken)
        bench.audit(row)


# -- restore of a files tree -------------------------------------------------------


@pytest.mark.faults
@pytest.mark.parametrize("sig", SIGNALS)
def test_kill_restore_files(sig: int, tmp_path: Path, keys: Keys) -> None:
    term = sig == signal.SIGTERM
    n = iterations(2)
    row = Row(
        "restore (files tree)",
        TERM if term else KILL,
        "a seeded moment of the restore over an older tree",
        n,
        "target old or new, never mixed; --resume completes"
        + ("; exit 143, no staging left at once" if term else ""),
    )
    with recorded(row) as outcomes:
        tree, dest = tmp_path / "tree", tmp_path / "dest"
        rnd = seeded("k-restore-files", -1)
        make_tree(tree, rnd, 120, 120 * 1024)
        policy = write_policy(
            tmp_path / "flt.toml",
            HOST,
            {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient],
            [{"kind": "files", "name": "tree", "paths": [str(tree)]}],
        )
        ident = ["--identity", str(keys.identity_file)]

        def run(*args: str) -> CliResult:
            res = drkit(args[0], "--policy", str(policy), *args[1:])
            no_traceback(res)
            return res

        def snapshot(res: CliResult) -> str:
            assert res.returncode == 0, res.output
            return str(json.loads(res.stdout)["results"][0]["snapshot"])

        old_snap, old = snapshot(run("backup", "--json")), tree_digest(tree)
        for p in sorted(tree.rglob("*.bin"))[::3]:  # a third of the files change
            p.write_bytes(rnd.randbytes(p.stat().st_size))
        make_tree(tree / "new", rnd, 20, 100 * 1024)
        new_snap, new = snapshot(run("backup", "--json")), tree_digest(tree)
        restored = dest / tree.relative_to("/")
        restore = ["restore", *ident, "--yes", "--force-files", "--dest", str(dest)]
        t0 = time.monotonic()
        assert run(*restore, "--snapshot", new_snap).returncode == 0
        window, start = time.monotonic() - t0, startup()
        for i in range(n):
            shutil.rmtree(dest)
            reset = run(*restore, "--snapshot", old_snap)
            assert reset.returncode == 0 and tree_digest(restored) == old, reset.output
            at = kill_point(seeded(f"k-restore-files-{sig}", i), window, start)
            argv = [*restore, "--policy", str(policy), "--snapshot", new_snap]
            killed, res = interrupted(argv, {}, at, sig)
            how = stopped(sig, res, f"signal {i + 1}")
            now = tree_digest(restored)
            state = "old tree" if now == old else "new tree" if now == new else "a mix"
            row.observed.append(f"signal {i + 1} at {at:.2f} s: {how}, {state}")
            assert state != "a mix", f"signal {i + 1}: the target is neither tree"
            if how == "stopped":  # a clean stop cleans up at once, before any --resume
                assert not staging_left(dest), f"SIGTERM left {staging_left(dest)}:\n{res.output}"
                row.excerpt = row.excerpt or res.stderr.strip().splitlines()[-1][:240]
            if killed:
                outcomes[how] = outcomes.get(how, 0) + 1
                row.injected += 1
            else:
                outcomes["done before the signal"] = outcomes.get("done before the signal", 0) + 1
            resumed = run(*restore, "--resume", "--snapshot", new_snap)
            if resumed.returncode != 0:
                row.recovered = False
            assert resumed.returncode == 0, resumed.output
            assert tree_digest(restored) == new, f"kill {i + 1}: --resume did not complete"
            left = staging_left(dest)
            assert not left, f"kill {i + 1}: staging left after --resume: {left}"


# -- restore of a PostgreSQL database -------------------------------------------------


@pytest.mark.faults
@pytest.mark.parametrize("sig", SIGNALS)
def test_kill_restore_database(
    sig: int, tmp_path: Path, keys: Keys, pg: PgServer, uniq: str
) -> None:
    term = sig == signal.SIGTERM
    n = iterations(2)
    row = Row(
        "restore (database)",
        TERM if term else KILL,
        "a seeded moment of the restore into a fresh database",
        n,
        "database absent or complete, never half loaded; --resume completes"
        + ("; exit 143, no staging database left at once" if term else ""),
    )
    db = f"fltk_{uniq}"
    try:
        with recorded(row) as outcomes:
            make_database(pg, db, 150_000)
            want = db_digest(pg, db)
            policy = pg_policy(tmp_path / "flt.toml", keys, pg, db)
            ident = ["--identity", str(keys.identity_file)]
            backup = drkit("backup", "--policy", str(policy))
            assert backup.returncode == 0, backup.output
            restore = ["restore", "--policy", str(policy), *ident, "--yes"]
            drop_database(pg, db)
            t0 = time.monotonic()
            first = drkit(*restore)
            window, start = time.monotonic() - t0, startup()
            assert first.returncode == 0 and db_digest(pg, db) == want, first.output
            for i in range(n):
                drop_database(pg, db)
                at = kill_point(seeded(f"k-restore-db-{sig}", i), window, start)
                killed, res = interrupted(restore, {}, at, sig)
                how = stopped(sig, res, f"signal {i + 1}")
                now = db_digest(pg, db)
                state = "absent" if now is None else "complete" if now == want else "partial"
                row.observed.append(f"signal {i + 1} at {at:.2f} s: {how}, {state}")
                assert state != "partial", f"signal {i + 1}: database {db} half restored: {now}"
                if how == "stopped":  # a clean stop drops its staging database at once
                    extra = [d for d in databases_like(pg, f"%{db}%") if d != db]
                    assert not extra, f"SIGTERM left staging databases {extra}:\n{res.output}"
                    row.excerpt = row.excerpt or res.stderr.strip().splitlines()[-1][:240]
                if killed:
                    outcomes[how] = outcomes.get(how, 0) + 1
                    row.injected += 1
                else:  # done first: complete, and a --resume now would be a new restore
                    outcomes["done before the signal"] = (
                        outcomes.get("done before the signal", 0) + 1
                    )
                    assert res.returncode == 0 and state == "complete", res.output
                    continue
                resumed = drkit(*restore, "--resume")
                no_traceback(resumed)
                if state == "complete" and "nothing to resume" in resumed.stderr:
                    # Killed after the last step was recorded (in the checks): complete,
                    # so --resume is a new restore, refused over the live database.
                    assert "--force-db" in resumed.stderr, resumed.output
                    continue
                if resumed.returncode != 0:
                    row.recovered = False
                assert resumed.returncode == 0, resumed.output
                assert db_digest(pg, db) == want, f"kill {i + 1}: --resume did not complete"
                extra = [d for d in databases_like(pg, f"%{db}%") if d != db]
                assert not extra, f"kill {i + 1}: staging databases left: {extra}"
    finally:
        for d in databases_like(pg, f"%{db}%"):
            drop_database(pg, d)
