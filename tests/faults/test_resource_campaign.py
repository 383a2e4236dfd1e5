"""Resource faults of the fault campaign (#19 item 3), each against real components:

- SIGTERM mid-backup (S3, local dedup): a clean stop, exit 143, the lock released, the
  multipart upload aborted, no partial snapshot, at once (no prune needed);
- disk full: the spool (``TMPDIR`` of an S3 backup), the state directory (locks,
  catalog), the local repository, and the target of a files restore: a small tmpfs the
  test mounts and unmounts;
- PostgreSQL's backend killed (SIGKILL, the server then recovers) mid-dump and
  mid-restore, on a server of the test's own;
- pg_dump hanging (a table locked by another session) against the source's ``timeout``;
- the clock one day ahead or behind between runs (libfaketime on drkit alone).

Every failure must be closed (exit 1, or 143 for SIGTERM), name the host and the
source or object, say what to do next, carry no traceback, leave nothing partial,
and the next ordinary run must succeed once the fault is gone; every listed
snapshot verifies and restores equal at the end (``Bench.audit``).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Keys
from tests.faults.campaign import HOST, Bench, MiB, Row, iterations, recorded, seeded
from tests.faults.crash import (
    Started,
    db_digest,
    drop_database,
    fill,
    interrupted,
    kill_point,
    make_database,
    make_tree,
    no_traceback,
    pg_policy,
    small_fs,
    staging_left,
    startup,
    tree_digest,
)
from tests.helpers import CliResult, drkit, write_policy
from tests.servers.postgres import PG_BIN, PgServer, postgres_server
from tests.servers.seaweed import SeaweedServer

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def said(res: CliResult, *words: str) -> str:
    """The error line(s), checked to name each of ``words`` (host, source, object, the
    next step) and to carry no traceback; the first ``error:`` line, for the report."""
    no_traceback(res)
    lines = res.stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    # The error runs from its first line to the end (a command's stderr tail spans lines).
    text = "\n".join(lines[lines.index(errors[0]) :]) if errors else ""
    for w in words:
        assert re.search(w, text), f"the error does not say {w!r}:\n{res.output}"
    return errors[0][:240] if errors else ""


def count(outcomes: dict[str, int], what: str) -> None:
    outcomes[what] = outcomes.get(what, 0) + 1


# -- SIGTERM -----------------------------------------------------------------------


@pytest.mark.parametrize("s3", [pytest.param(True, id="s3"), pytest.param(False, id="local-dedup")])
def test_sigterm_backup(
    s3: bool, request: pytest.FixtureRequest, tmp_path: Path, keys: Keys
) -> None:
    """SIGTERM (systemd's stop) mid-backup: exit 143, and at once no lock, no open
    upload, no snapshot directory without a manifest; the next backup succeeds."""
    seaweed: SeaweedServer | None = request.getfixturevalue("seaweed") if s3 else None
    n = iterations(1 if s3 else 2)
    row = Row(
        "backup (S3)" if s3 else "backup (dedup, local directory)",
        "SIGTERM to drkit",
        "a seeded moment of the backup",
        n,
        "stops cleanly at once: exit 143, lock released, upload aborted, no partial snapshot",
    )
    with recorded(row) as outcomes:
        bench = Bench(tmp_path, keys, seaweed, None, dedup=not s3, size=(12 if s3 else 4) * MiB)
        t0 = time.monotonic()
        assert bench.backup().returncode == 0
        window, start = time.monotonic() - t0, startup()
        for i in range(n):
            bench.change()
            taken = bench.src.read_bytes()
            argv, env = bench.argv("backup", "--json")
            at = kill_point(seeded("sigterm", i), window, start)
            sent, res = interrupted(argv, env, at, signal.SIGTERM)
            no_traceback(res)
            if res.returncode == 0:  # done before the signal, or it came after the commit
                count(outcomes, "done before the signal" if not sent else "committed, then stopped")
                bench.expected[json.loads(res.stdout)["results"][0]["snapshot"]] = taken
            elif res.returncode == -signal.SIGTERM:
                # Still starting (importing): no command had begun, nothing was taken.
                count(outcomes, "stopped before its command began")
                row.injected += 1
            else:
                assert res.returncode == 143, f"SIGTERM: exit {res.returncode}\n{res.output}"
                row.excerpt = row.excerpt or said(res, "SIGTERM", "run it again")
                count(outcomes, "stopped, exit 143")
                row.injected += 1
                for snap in set(bench.listed()) - set(bench.expected):  # it came after the commit
                    bench.expected[snap] = taken
                    count(outcomes, "stopped after its commit")
            left = bench.nothing_partial()
            if left:
                row.recovered = False
            assert not left, f"SIGTERM {i + 1}: left {left}\n{res.output}"
            again = bench.backup()
            assert again.returncode == 0, again.output
        bench.audit(row)


# -- disk full ---------------------------------------------------------------------


@pytest.mark.faults
def test_spool_full(tmp_path: Path, keys: Keys, seaweed: SeaweedServer) -> None:
    """An S3 backup whose part spool (``TMPDIR``) fills: fails closed naming the host,
    the source and the spool; the upload is aborted; with room again it succeeds."""
    row = Row(
        "backup (S3)",
        "disk full",
        "the part spool (TMPDIR, a 1 MiB tmpfs)",
        1,
        "fails closed naming host, source, spool; upload aborted; next run succeeds",
    )
    with recorded(row) as outcomes, small_fs(1024) as fs:
        bench = Bench(tmp_path, keys, seaweed, None, dedup=False, size=12 * MiB)
        old = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = str(fs)
        try:
            res = bench.backup()
        finally:
            os.environ.pop("TMPDIR") if old is None else os.environ.__setitem__("TMPDIR", old)
        assert res.returncode == 1, res.output
        row.excerpt = said(
            res, f"host {HOST}", "source db", "[Nn]o space left", str(fs), "set TMPDIR"
        )
        row.injected += 1
        count(outcomes, "failed closed")
        assert not bench.nothing_partial(), bench.nothing_partial()
        again = bench.backup()
        assert again.returncode == 0, again.output
        bench.audit(row)


@pytest.mark.faults
def test_state_full(tmp_path: Path, keys: Keys) -> None:
    """The state directory (lock files, catalog, restore progress) on a full disk."""
    row = Row(
        "backup (local directory)",
        "disk full",
        "the state directory (locks, catalog)",
        1,
        "fails closed or succeeds with a warning; snapshots sound; next run succeeds",
    )
    with recorded(row) as outcomes, small_fs(512) as fs:
        bench = Bench(tmp_path, keys, None, None, dedup=False, size=2 * MiB)
        first = bench.backup()  # the state directory exists, as on a machine in use
        assert first.returncode == 0, first.output
        state = fs / "state"
        shutil.copytree(os.environ["DRKIT_STATE_DIR"], state)
        filler = fill(fs)
        bench.repo.env["DRKIT_STATE_DIR"] = str(state)
        bench.change()
        res = bench.backup()
        row.injected += 1
        no_traceback(res)
        if res.returncode == 0:
            count(outcomes, "succeeded")
        else:
            count(outcomes, "failed closed")
            assert res.returncode == 1, res.output
            row.excerpt = said(res, f"host {HOST}", "[Nn]o space left", str(state))
        assert not bench.nothing_partial(), bench.nothing_partial()
        filler.unlink()
        again = bench.backup()
        assert again.returncode == 0, again.output
        bench.audit(row)


@pytest.mark.faults
def test_repository_full(tmp_path: Path, keys: Keys) -> None:
    """A local repository on a full disk: fails closed naming the host, source and
    object; no temp file or partial snapshot left; with room again it succeeds."""
    n = iterations(2)
    row = Row(
        "backup (local directory)",
        "disk full",
        "the repository's filesystem (seeded room)",
        n,
        "fails closed naming host, source, object; nothing partial; next run succeeds",
    )
    with recorded(row) as outcomes, small_fs(64 * 1024) as fs:
        bench = Bench(tmp_path, keys, None, None, dedup=False, size=4 * MiB)
        root = fs / "repo"
        bench.repo.root = root
        bench.policy.write_text(
            bench.policy.read_text().replace((tmp_path / "repo").as_uri(), root.as_uri())
        )
        assert bench.backup().returncode == 0
        for i in range(n):
            room = seeded("repo-full", i).randrange(64, 3 * 1024)  # KiB: mid-artifact or facts
            filler = fill(fs, leave_kib=room)
            bench.change()
            res = bench.backup()
            if res.returncode == 0:  # compressed smaller than the room left: not a fault
                count(outcomes, "fit")
            else:
                row.injected += 1
                count(outcomes, "failed closed")
                assert res.returncode == 1, res.output
                row.excerpt = row.excerpt or said(
                    res, f"host {HOST}", "[Nn]o space left", str(root), "free space there"
                )
            left = bench.nothing_partial()
            assert not left, f"{left}\n{res.output}"
            filler.unlink()
            again = bench.backup()
            assert again.returncode == 0, again.output
        assert row.injected, "the disk never filled"
        bench.audit(row)


def test_target_full(tmp_path: Path, keys: Keys) -> None:
    """A files restore onto a filesystem without room: refused or failed closed naming
    the host, the source and the path; the target as before; with room it succeeds."""
    row = Row(
        "restore (files tree)",
        "disk full",
        "the target filesystem (room for half the tree)",
        1,
        "fails closed naming host, source, path; target as before; next run succeeds",
    )
    with recorded(row) as outcomes, small_fs(8 * 1024) as fs:
        tree = tmp_path / "tree"
        make_tree(tree, seeded("target-full", 0), 40, 300 * 1024)  # ~12 MiB
        policy = write_policy(
            tmp_path / "flt.toml",
            HOST,
            {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient],
            [{"kind": "files", "name": "tree", "paths": [str(tree)]}],
        )
        assert drkit("backup", "--policy", str(policy)).returncode == 0
        dest = fs / "dest"
        (dest / "keep").mkdir(parents=True)
        (dest / "keep" / "note").write_text("was here before")
        before = tree_digest(dest)
        restore = ["restore", "--policy", str(policy), "--identity", str(keys.identity_file)]
        res = drkit(*restore, "--yes", "--dest", str(dest))
        row.injected += 1
        assert res.returncode == 1, res.output
        count(outcomes, "failed closed")
        row.excerpt = said(res, f"host {HOST}", "tree", str(dest))
        assert tree_digest(dest) == before, "the target changed"
        assert not staging_left(dest), staging_left(dest)
        subprocess.run(["mount", "-o", "remount,size=64m", str(fs)], check=True)
        again = drkit(*restore, "--yes", "--dest", str(dest))
        if again.returncode != 0:
            row.recovered = False
        assert again.returncode == 0, again.output
        assert tree_digest(dest / tree.relative_to("/")) == tree_digest(tree)


# -- PostgreSQL killed, pg_dump hanging ----------------------------------------------


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A server of this test's own: its backends are killed."""
    with postgres_server() as server:
        yield server


def backend_pid(pg: PgServer, application: str, deadline: float) -> int:
    """The pid of the backend serving ``application`` once it is copying data."""
    while time.monotonic() < deadline:
        pid = pg.psql(
            "postgres",
            f"SELECT pid FROM pg_stat_activity WHERE application_name = '{application}' "
            "AND state = 'active' AND query ILIKE 'COPY%' LIMIT 1;",
            check=False,
        ).strip()
        if pid:
            return int(pid)
        time.sleep(0.02)
    raise AssertionError(f"{application} never started copying")


def backend_killed(pg: PgServer, application: str, argv: list[str]) -> CliResult:
    """``drkit argv``, the backend serving its ``application`` SIGKILLed once it copies
    (the server then ends every session and recovers, as after a crash)."""
    run = Started.run(argv, {})
    try:
        os.kill(backend_pid(pg, application, time.monotonic() + 60), signal.SIGKILL)
        return run.result()
    finally:
        run.reap()


def wait_up(pg: PgServer) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if pg.psql("postgres", "SELECT 1;", check=False).strip() == "1":
            return
        time.sleep(0.2)
    raise AssertionError("PostgreSQL did not come back after its backend was killed")


@pytest.mark.faults
def test_postgres_killed_mid_dump(tmp_path: Path, keys: Keys, own_pg: PgServer) -> None:
    row = Row(
        "backup (database)",
        "PostgreSQL backend killed (SIGKILL)",
        "pg_dump's COPY",
        1,
        "fails closed naming host, source, database; nothing partial; next run succeeds",
    )
    with recorded(row) as outcomes:
        make_database(own_pg, "calls", 400_000)
        policy = pg_policy(tmp_path / "flt.toml", keys, own_pg, "calls")
        res = backend_killed(own_pg, "pg_dump", ["backup", "--policy", str(policy)])
        row.injected += 1
        count(outcomes, "failed closed")
        assert res.returncode == 1, res.output
        row.excerpt = said(res, f"host {HOST}", "source db", "pg_dump", "run the backup again")
        repo = tmp_path / "repo" / HOST / "snapshots"
        assert not [p for p in repo.glob("*") if not (p / "manifest.json").exists()]
        assert not list((tmp_path / "repo").rglob(".drkit-tmp-*"))
        wait_up(own_pg)
        again = drkit("backup", "--policy", str(policy))
        assert again.returncode == 0, again.output


@pytest.mark.faults
def test_postgres_killed_mid_restore(tmp_path: Path, keys: Keys, own_pg: PgServer) -> None:
    row = Row(
        "restore (database)",
        "PostgreSQL backend killed (SIGKILL)",
        "pg_restore's COPY",
        1,
        "fails closed naming host, source, database, next step; database absent; next run succeeds",
    )
    with recorded(row) as outcomes:
        make_database(own_pg, "calls", 400_000)
        want = db_digest(own_pg, "calls")
        policy = pg_policy(tmp_path / "flt.toml", keys, own_pg, "calls")
        assert drkit("backup", "--policy", str(policy)).returncode == 0
        drop_database(own_pg, "calls")
        restore = [
            "restore",
            "--policy",
            str(policy),
            "--identity",
            str(keys.identity_file),
            "--yes",
        ]
        res = backend_killed(own_pg, "pg_restore", restore)
        row.injected += 1
        count(outcomes, "failed closed")
        assert res.returncode == 1, res.output
        row.excerpt = said(res, f"host {HOST}", "db", "calls", "rerun the restore with --resume")
        wait_up(own_pg)
        assert db_digest(own_pg, "calls") is None, "a half-restored database is visible"
        again = drkit(*restore)
        if again.returncode != 0:
            row.recovered = False
        assert again.returncode == 0, again.output
        assert db_digest(own_pg, "calls") == want
        names = own_pg.psql("postgres", "SELECT datname FROM pg_database;").split()
        assert [d for d in names if "calls" in d] == ["calls"], names


@pytest.mark.faults
def test_pg_dump_hangs(tmp_path: Path, keys: Keys, own_pg: PgServer) -> None:
    """pg_dump waiting forever on a lock another session holds: the source's
    ``timeout`` stops it, the error says so and what to do."""
    row = Row(
        "backup (database)",
        "pg_dump hangs",
        "a table locked by another session",
        1,
        "stopped by the source's timeout (3s); fails closed; next run succeeds",
    )
    with recorded(row) as outcomes:
        make_database(own_pg, "calls", 1000)
        policy = pg_policy(tmp_path / "flt.toml", keys, own_pg, "calls", extra="3s")
        holder = subprocess.Popen(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-q",
                "-h",
                own_pg.host,
                "-p",
                str(own_pg.port),
                "-U",
                own_pg.user,
                "-d",
                "calls",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert holder.stdin is not None
            holder.stdin.write("BEGIN; LOCK TABLE calls IN ACCESS EXCLUSIVE MODE;\n")
            holder.stdin.flush()
            t0 = time.monotonic()
            res = drkit("backup", "--policy", str(policy))
            took = time.monotonic() - t0
        finally:
            holder.kill()
            holder.wait()
        row.injected += 1
        count(outcomes, "stopped by the timeout")
        assert res.returncode == 1, res.output
        assert took < 60, f"the timeout did not stop it: {took:.0f} s"
        row.excerpt = said(res, f"host {HOST}", "source db", "3s", "raise the source's `timeout`")
        assert not list((tmp_path / "repo").rglob(".drkit-tmp-*"))
        again = drkit("backup", "--policy", str(policy))
        assert again.returncode == 0, again.output


# -- clock skew ----------------------------------------------------------------------


def at_clock(bench: Bench, offset: str | None, *args: str) -> CliResult:
    """``drkit args`` on this machine's clock (``offset`` None), or with drkit's clock moved
    by ``offset`` (libfaketime; monotonic time left alone)."""
    argv, env = bench.argv(*args)
    env = {k: v for k, v in env.items() if k != "DRKIT_NOW"}
    if offset is not None:
        env.update(LD_PRELOAD=str(FAKETIME), FAKETIME=offset, FAKETIME_DONT_FAKE_MONOTONIC="1")
    res = drkit(*argv, env=env)
    no_traceback(res)
    return res


def snapshot_of(res: CliResult) -> str:
    assert res.returncode == 0, res.output
    return str(json.loads(res.stdout)["results"][0]["snapshot"])


@pytest.mark.faults
@pytest.mark.parametrize("offset", ["+1d", "-1d"])
def test_clock_skew(offset: str, tmp_path: Path, keys: Keys) -> None:
    """One backup of three by a machine whose clock is a day off: every backup succeeds;
    on the right clock a snapshot dated tomorrow is refused by every reader (listed as
    untrusted, naming the clocks; never chosen to restore, never counted by retention,
    prune still succeeds), and is trusted once its time comes; one dated yesterday is
    the oldest to retention (``keep_last = 2`` removes it, keeping the two taken on the
    right clock)."""
    if not FAKETIME.exists():
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    ahead = offset.startswith("+")
    row = Row(
        "backup, snapshots, restore, prune",
        f"clock {offset[0]}1 day",
        "the second of three backups, on drkit's clock (libfaketime)",
        1,
        "future snapshot refused until its time, never chosen; past one oldest to retention",
    )
    with recorded(row) as outcomes:
        bench = Bench(
            tmp_path, keys, None, None, dedup=False, size=1 * MiB, retention="keep_last = 2"
        )
        data = []
        for clock in (None, offset, None):
            bench.change()
            data.append(bench.src.read_bytes())
            snap = snapshot_of(at_clock(bench, clock, "backup", "--json"))
            bench.expected[snap] = data[-1]
        first, odd, last = sorted(bench.expected, key=lambda s: list(bench.expected).index(s))
        row.injected += 1
        count(outcomes, "every backup succeeded")
        listed = at_clock(bench, None, "snapshots", "--json")
        assert listed.returncode == 0, listed.output
        doc = json.loads(listed.stdout)
        trusted = [r["snapshot"] for r in doc["snapshots"]]
        untrusted = {r["snapshot"]: r["reason"] for r in doc["untrusted"]}
        plan = at_clock(
            bench, None, "restore", "--identity", str(keys.identity_file), "--plan", "--json"
        )
        assert plan.returncode == 0, plan.output
        chosen = json.loads(plan.stdout)["snapshot"]
        assert chosen == last, f"restore chose {chosen}, not the newest taken {last}"
        pruned = at_clock(bench, None, "prune", "--json")
        [report] = json.loads(pruned.stdout)["results"]
        # A snapshot dated tomorrow is untrusted: prune fails closed naming it and the
        # clocks (it collects no chunk while it cannot read a listed snapshot), its other
        # work done; a day behind is nothing to refuse.
        if pruned.returncode != (1 if ahead else 0):
            row.recovered = False
        assert pruned.returncode == (1 if ahead else 0), pruned.output
        if ahead:
            row.excerpt = said(pruned, f"host {HOST}", odd, "check the clocks")
        if ahead:
            assert trusted == [first, last], f"a snapshot dated tomorrow is trusted: {doc}"
            assert "check the clocks" in untrusted[odd], untrusted
            assert report["removed"] == [], report
            assert [s["snapshot"] for s in report["skipped"]] == [odd], report
            row.observed.append(
                "the future one untrusted; prune failed closed naming it, the rest done"
            )
        else:
            assert report["removed"] == [odd], report  # the oldest by its id
            del bench.expected[odd]
            assert sorted(trusted) == sorted([first, odd, last]), doc
            row.observed.append("the past snapshot removed first by keep_last = 2")
        again = at_clock(bench, None, "backup", "--json")
        bench.expected[snapshot_of(again)] = bench.src.read_bytes()
        # Past the skewed run's time (``Bench.audit`` reads at 2031): every snapshot
        # listed verifies and restores equal, the future one included.
        bench.audit(row)


def due_run(bench: Bench, offset: str, outcomes: dict[str, int]) -> str | None:
    """``backup --due`` on drkit's clock moved by ``offset``: the snapshot it took, or None
    when nothing was due. Either way exit 0: a clock jump is no reason to fail or refuse."""
    bench.change()
    res = at_clock(bench, offset, "backup", "--due", "--json")
    assert res.returncode == 0, f"backup --due at clock {offset}:\n{res.output}"
    doc = json.loads(res.stdout)
    results = doc.get("results", []) if isinstance(doc, dict) else []
    taken = [r["snapshot"] for r in results if r.get("status") == "success" and r.get("snapshot")]
    count(outcomes, f"clock {offset}: {'ran' if taken else 'not due'}")
    if taken:
        bench.expected[taken[0]] = bench.src.read_bytes()
    return taken[0] if taken else None


@pytest.mark.faults
def test_due_clock_jump(tmp_path: Path, keys: Keys) -> None:
    """``backup --due`` (``@hourly``) while drkit's clock jumps a day back, forward, and
    back to right: each slot runs once, a snapshot dated tomorrow never makes the host look
    backed up (it is untrusted until its time: the host stays due on the right clock), no
    run fails or is refused, and every snapshot verifies and restores equal later."""
    if not FAKETIME.exists():
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    row = Row(
        "backup --due (@hourly)",
        "clock jumps -1 day, +1 day, back",
        "between runs, on drkit's clock (libfaketime)",
        1,
        "each slot runs once; a snapshot dated tomorrow never makes the host look fresh; "
        "nothing fails or is refused",
    )
    with recorded(row) as outcomes:
        bench = Bench(tmp_path, keys, None, None, dedup=False, size=1 * MiB)
        text = bench.policy.read_text()
        bench.policy.write_text(
            text.replace(f'host = "{HOST}"\n', f'host = "{HOST}"\nschedule = "@hourly"\n', 1)
        )
        # (clock, what --due must do: True ran, False not due, None either)
        steps: list[tuple[str, bool | None]] = [
            ("-1d", True),  # a machine a day behind: its first run
            ("+0", True),  # the clock put right: yesterday's slot is long past
            ("+0", False),  # the same slot again: nothing due
            ("+1d", True),  # a day ahead: a snapshot dated tomorrow
            ("+2h", True),  # right again (2 h on): tomorrow's snapshot is no success yet
            ("+2h", False),
            ("-1d", None),  # behind again: the newer ones are in its future; no failure
        ]
        for i, (offset, want) in enumerate(steps):
            if i and offset != steps[i - 1][0]:
                row.injected += 1
            took = due_run(bench, offset, outcomes)
            if want is not None and (took is not None) != want:
                row.recovered = False
            assert want is None or (took is not None) == want, (
                f"step {i + 1}, clock {offset}: {'ran' if took else 'not due'}, expected "
                f"{'a run' if want else 'nothing due'}"
            )
        row.observed.append("every run exit 0; due decisions as on a right clock")
        bench.audit(row)


# -- file descriptors ------------------------------------------------------------------


def limited(argv: list[str], nofile: int) -> CliResult:
    """``drkit argv`` with at most ``nofile`` open files (``ulimit -n``), as under a
    service manager's LimitNOFILE or a crowded container."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    res = subprocess.run(
        [sys.executable, "-m", "drkit", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=cap,
    )
    out = CliResult(res.returncode, res.stdout, res.stderr)
    no_traceback(out)
    return out


@pytest.mark.faults
def test_fd_limit(tmp_path: Path, keys: Keys) -> None:
    """A dedup backup of many files, then a restore of them, each under a low open-file
    limit (seeded per iteration): each works, or (below drkit's floor of 64, which it
    checks at the start after raising its soft limit within the hard one) is refused
    before anything is done, naming the limit and what to raise; never a traceback
    (before the floor a run failed midway: "internal error: OSError(24)")."""
    n = iterations(4)  # two limits below the floor, two at or above it
    row = Row(
        "backup (dedup, files tree) + restore",
        "open-file limit (ulimit -n)",
        "drkit's RLIMIT_NOFILE at start (seeded: 8..15, then 64..128)",
        n,
        "works, or refused at the start naming the limit and what to raise; nothing partial",
    )
    with recorded(row) as outcomes:
        tree = tmp_path / "tree"
        make_tree(tree, seeded("fd-limit", -1), 600, 4 * 1024)
        policy = write_policy(
            tmp_path / "flt.toml",
            HOST,
            {"url": (tmp_path / "repo").as_uri(), "dedup": True},
            [keys.recipient],
            [{"kind": "files", "name": "tree", "paths": [str(tree)]}],
        )
        restore = [
            "restore",
            "--policy",
            str(policy),
            "--identity",
            str(keys.identity_file),
            "--yes",
        ]
        for i in range(n):
            rnd = seeded("fd-limit", i)  # below the floor, then at or above it, in turn
            nofile = rnd.randrange(8, 16) if i % 2 == 0 else rnd.randrange(64, 129)
            for p in sorted(tree.rglob("*.bin"))[i::5]:
                p.write_bytes(os.urandom(p.stat().st_size))
            want = tree_digest(tree)
            res = limited(["backup", "--policy", str(policy), "--json"], nofile)
            row.injected += 1
            if res.returncode == 0:
                count(outcomes, f"backup at {nofile} fds: done")
            else:
                count(outcomes, f"backup at {nofile} fds: failed closed")
                assert res.returncode == 1, res.output
                row.excerpt = row.excerpt or said(
                    res, f"open only {nofile} files", "nothing was done", "LimitNOFILE"
                )
                repo = tmp_path / "repo" / HOST / "snapshots"
                assert not [p for p in repo.glob("*") if not (p / "manifest.json").exists()]
                again = drkit("backup", "--policy", str(policy))
                assert again.returncode == 0, again.output
            dest = tmp_path / f"dest{i}"
            got = limited([*restore, "--dest", str(dest)], nofile)
            row.injected += 1
            if got.returncode == 0:
                count(outcomes, f"restore at {nofile} fds: done")
            else:
                count(outcomes, f"restore at {nofile} fds: failed closed")
                assert got.returncode == 1, got.output
                row.excerpt = row.excerpt or said(
                    got, f"open only {nofile} files", "nothing was done", "ulimit -n 1024"
                )
                assert not staging_left(dest), staging_left(dest)
                got = drkit(*restore, "--dest", str(dest))
                assert got.returncode == 0, got.output
            if tree_digest(dest / tree.relative_to("/")) != want:
                row.bad += 1
            assert tree_digest(dest / tree.relative_to("/")) == want, "restored tree differs"
