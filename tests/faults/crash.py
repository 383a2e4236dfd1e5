"""Crash and resource faults (#19 items 2 and 3): the real ``drkit`` started as a
process group of its own, killed (SIGKILL, SIGTERM) at a seeded moment, and the
machinery the campaign's kill and resource scenarios share: a files tree, a real
PostgreSQL database and their comparisons, a small filesystem mounted for a test.

The invariants after a kill (``check_after_kill``): every snapshot ``drkit
snapshots`` lists verifies; the next backup succeeds with no manual step (a killed
run's lock is taken over: its process is gone); the next prune (past the grace
period) removes what the killed run left and says so in its report (``incomplete
snapshot`` directories, open uploads or a local store's temp files), after which
nothing partial is left; the scenario ends with ``Bench.audit``: every listed
snapshot restores equal to the data it was taken of.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Keys
from tests.faults.campaign import HOST, Bench, CliResult, Row
from tests.helpers import write_policy
from tests.servers.postgres import PgServer


@dataclass
class Started:
    """A ``drkit`` process of its own session (so that its children die with it)."""

    proc: subprocess.Popen[str]
    t0: float

    @classmethod
    def run(cls, argv: list[str], env: dict[str, str]) -> Started:
        proc = subprocess.Popen(
            [sys.executable, "-m", "drkit", *argv],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        return cls(proc, time.monotonic())

    def signal_at(self, seconds: float, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` ``seconds`` after the start (SIGKILL: to the whole group, as a
        power cut or the OOM killer of a cgroup would; else to drkit alone, as systemd's
        stop or a person's ``kill`` would). False if it had ended before."""
        deadline = self.t0 + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            time.sleep(0.01)
        if self.proc.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, sig)
            else:
                os.kill(self.proc.pid, sig)
        return True

    def result(self, timeout: float = 120) -> CliResult:
        """Wait for the end (killing the group if it overstays), then its output."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
            err += f"\n(still running after {timeout:g} s: killed by the test)"
        self.reap()
        return CliResult(self.proc.returncode, out, err)

    def reap(self) -> None:
        """Whatever of its group is still running (a child left by a killed parent)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def interrupted(
    argv: list[str], env: dict[str, str], at: float, sig: int = signal.SIGKILL
) -> tuple[bool, CliResult]:
    """``drkit argv`` sent ``sig`` ``at`` seconds in (``Started.signal_at``): whether it
    was still running then, and its result."""
    run = Started.run(argv, env)
    try:
        sent = run.signal_at(at, sig)
        return sent, run.result()
    finally:
        run.reap()


def startup() -> float:
    """Seconds ``drkit --version`` takes here now: before that, a kill finds no work begun."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "drkit", "--version"], capture_output=True, check=True)
    return time.monotonic() - t0


def kill_point(rnd: random.Random, window: float, start: float = 0.0) -> float:
    """A seeded moment within a run expected to take ``window`` seconds, past ``start``
    (the interpreter's start-up) when the run is longer than that."""
    start = min(start, window * 0.5)
    return start + rnd.uniform(0.0, 1.0) * (window - start)


def leftovers(bench: Bench) -> list[str]:
    """What a killed run left in the repository, in words."""
    keys = bench.repo.keys(f"{HOST}/snapshots/")
    dirs = {k.split("/")[2] for k in keys}
    committed = {k.split("/")[2] for k in keys if k.endswith("/manifest.json")}
    if bench.repo.root is not None:  # empty snapshot directories count too
        snaps = bench.repo.root / HOST / "snapshots"
        dirs |= {p.name for p in snaps.iterdir()} if snaps.exists() else set()
    words = []
    if dirs - committed:
        words.append(f"{len(dirs - committed)} snapshot dir(s) without a manifest")
    if bench.repo.open_uploads():
        words.append(f"{len(bench.repo.open_uploads())} open upload(s)/temp file(s)")
    if bench.repo.keys(f"{HOST}/locks/"):
        words.append("the lock")
    return words


def check_after_kill(bench: Bench, row: Row, what: str, taken: bytes) -> None:
    """After a killed (or terminated) backup: listed snapshots verify; the next backup and
    prune succeed with no manual step; prune's report names what it cleaned; nothing
    partial is left. ``taken``: the data the killed run read (a snapshot it managed to
    commit holds it)."""
    left = leftovers(bench)
    for snap in bench.listed():
        bench.expected.setdefault(snap, taken)
    res = bench.run("verify", "--all-snapshots", "--json")
    no_traceback(res)
    bad = [r["snapshot"] for r in json.loads(res.stdout).get("results", []) if not r["ok"]]
    if bad or res.returncode != 0:
        row.bad += len(bad) or 1
        row.observed.append(f"{what}: listed but does not verify: {bad}")
    assert not bad and res.returncode == 0, f"{what}: {res.output[-3000:]}"
    bench.change()
    again = bench.backup()
    no_traceback(again)
    if again.returncode != 0:
        row.recovered = False
    assert again.returncode == 0, f"{what}: the next backup failed:\n{again.output}"
    pruned = bench.run("prune", "--json")
    no_traceback(pruned)
    if pruned.returncode != 0:
        row.recovered = False
    assert pruned.returncode == 0, f"{what}: the next prune failed:\n{pruned.output}"
    [report] = json.loads(pruned.stdout)["results"]
    cleaned = len(report.get("incomplete_removed", [])) + len(report.get("uploads_aborted", []))
    problems = bench.nothing_partial()
    if bench.repo.root is not None:
        snaps = bench.repo.root / HOST / "snapshots"
        empty = [p.name for p in snaps.iterdir() if not any(p.iterdir())]
        problems += [f"empty snapshot directories: {empty}"] if empty else []
    if problems:
        row.recovered = False
    assert not problems, f"{what}: left after the next backup and prune: {problems}\n{left}"
    left_data = [w for w in left if w != "the lock"]
    assert cleaned or not left_data, (
        f"{what}: prune cleaned {left_data} without saying so:\n{pruned.stdout}"
    )
    row.observed.append(f"{what}: left {', '.join(left) or 'nothing'}")


def no_traceback(res: CliResult) -> None:
    assert "Traceback" not in res.output, res.output


# -- a files tree ---------------------------------------------------------------


def make_tree(root: Path, rnd: random.Random, files: int, size: int) -> None:
    """``files`` files of about ``size`` bytes in a few directories, random content."""
    for i in range(files):
        path = root / f"d{i % 7}" / f"f{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rnd.randbytes(rnd.randrange(size // 2, size * 3 // 2)))


def tree_digest(root: Path) -> dict[str, str]:
    """Each file's sha256 under ``root``, by relative path (staging dirs left out)."""
    out = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if ".drkit-staging-" in rel or not p.is_file():
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def staging_left(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.rglob(".drkit-staging-*")) if parent.exists() else []


# -- a PostgreSQL database --------------------------------------------------------


def make_database(pg: PgServer, name: str, rows: int) -> None:
    pg.psql("postgres", f"CREATE DATABASE {name};")
    pg.psql(
        name,
        "CREATE TABLE calls (id bigint PRIMARY KEY, caller text, body text);"
        f"INSERT INTO calls SELECT g, 'caller-' || (g % 977), md5(g::text) || repeat('x', 80) "
        f"FROM generate_series(1, {rows}) g;"
        "CREATE INDEX calls_caller ON calls (caller);",
    )


def db_digest(pg: PgServer, name: str) -> str | None:
    """The table's row count and content digest; None if the database is absent."""
    exists = pg.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{name}';")
    if exists.strip() == "0":
        return None
    res = pg.psql(
        name,
        "SELECT count(*) || ':' || md5(string_agg(id || caller || body, ',' ORDER BY id)) "
        "FROM calls;",
        check=False,
    )
    return res.strip() or "(no table)"


def pg_policy(path: Path, keys: Keys, pg: PgServer, db: str, extra: str = "") -> Path:
    source = {
        "kind": "postgres",
        "name": "db",
        "database": db,
        "host": "127.0.0.1",
        "port": pg.port,
        "user": "postgres",
    }
    if extra:
        source["timeout"] = extra
    return write_policy(
        path, HOST, {"url": (path.parent / "repo").as_uri()}, [keys.recipient], [source]
    )


def databases_like(pg: PgServer, pattern: str) -> list[str]:
    out = pg.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{pattern}';")
    return sorted(out.split())


def drop_database(pg: PgServer, name: str) -> None:
    pg.psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


# -- a small filesystem ------------------------------------------------------------


@contextlib.contextmanager
def small_fs(size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB mounted for the test (we are root), unmounted after."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip("mounting a tmpfs needs root")
    mnt = Path(tempfile.mkdtemp(prefix="drkit-full-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=1777", "tmpfs", str(mnt)],
        check=True,
        capture_output=True,
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def fill(fs: Path, leave_kib: int = 0) -> Path:
    """Fill ``fs`` up to ``leave_kib`` KiB free; the filler file's path (remove to free)."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize - leave_kib * 1024
    filler = fs / "filler"
    with open(filler, "wb") as f:
        while free > 0:
            n = min(free, 1 << 20)
            try:
                f.write(b"\0" * n)
                f.flush()
            except OSError:
                break
            free -= n
    return filler
