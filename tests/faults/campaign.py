"""The fault campaign's machinery: a repository behind the S3 fault proxy, the ordinary
commands run through the real CLI, the invariants checked after every fault, and the
rows of docs/reliability.md.

A scenario is one operation (backup, verify, restore; whole or dedup repository)
under one S3 fault, run ``iterations()`` times with seeded injection points. Each
iteration checks:

- the faulted command either succeeded (what transient faults must give) or failed
  closed: exit 1, the error names the host and the object, no Python traceback;
- nothing partial is committed: no open multipart upload, no snapshot directory
  without a manifest, every committed snapshot verifies;
- the next ordinary command succeeds without a manual step;

and at the end every snapshot ``snapshots`` lists verifies and restores equal to
the data it was taken of (snapshots lost: committed ones that vanished or no
longer restore; bad snapshots: listed ones that do not verify or restore equal).

Prune and chunk GC (``PruneBench``, tests/faults/test_s3_prune_campaign.py) keep
``keep_last = 2`` and have two more snapshots to remove in every iteration. After
each faulted prune (``PruneBench.check_after``):

- it succeeded, failed closed (exit 1, an ``error:`` line naming the host and the
  object, no traceback), or was killed (the kill scenarios);
- no snapshot retention keeps is gone, and every object its backup stored is
  there: manifest, facts, artifact or chunk index, and every chunk the index names
  (a snapshot lost otherwise);
- every snapshot ``snapshots`` lists verifies, also one prune meant to remove and
  could not (its chunks are still needed while it is listed; a bad snapshot
  otherwise);
- no lock is left behind (unless the run was killed: the rerun takes it over);

and a rerun without faults converges (``PruneBench.check_converged``): it exits 0,
exactly the snapshots retention keeps are listed, no snapshot directory without
a manifest, no open upload, no lock, and no chunk that no kept snapshot's index
names (no orphan it could see).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drkit.pipeline.chunk_index import read_index
from tests.conftest import Keys
from tests.e2e.repos import RepoTarget
from tests.helpers import CliResult, drkit, write_policy
from tests.servers.s3faults import Fault, S3FaultProxy
from tests.servers.seaweed import SeaweedServer

HOST = "flt"
MiB = 1 << 20
SEED = int(os.environ.get("DRKIT_FAULTS_SEED", "1919"))
REPORT_ENV = "DRKIT_FAULTS_REPORT"  # a JSON-lines file the rows are appended to
LATER = "2031-01-01T00:00Z"


def iterations(default: int = 2) -> int:
    """Iterations per scenario: $DRKIT_FAULTS_ITERATIONS, else ``default``."""
    return max(1, int(os.environ.get("DRKIT_FAULTS_ITERATIONS", default)))


@dataclass
class Row:
    """One scenario's line in docs/reliability.md."""

    operation: str
    fault: str
    injection: str
    iterations: int = 0
    expected: str = ""
    observed: list[str] = field(default_factory=list)
    injected: int = 0
    lost: int = 0
    bad: int = 0
    recovered: bool = True
    excerpt: str = ""
    seconds: float = 0.0

    def write(self) -> None:
        path = os.environ.get(REPORT_ENV)
        if not path:
            return
        with open(path, "a") as f:
            f.write(json.dumps(asdict(self)) + "\n")


class Bench:
    """A host ``flt`` with a command source (a data file, restored by a command writing it
    back) in a fresh bucket reached through ``proxy``; knows what each snapshot holds."""

    def __init__(
        self,
        tmp_path: Path,
        keys: Keys,
        seaweed: SeaweedServer | None,
        proxy: S3FaultProxy | None,
        *,
        dedup: bool,
        size: int,
        retention: str = "",
    ) -> None:
        """``seaweed`` None: a local directory repository; ``proxy`` None: straight to
        SeaweedFS."""
        self.tmp, self.keys, self.size = tmp_path, keys, size
        settings: dict[str, Any]
        if seaweed is None:
            root = tmp_path / "repo"
            settings = {"url": root.as_uri()}
            self.repo = RepoTarget("local", settings, root=root)
        else:
            bucket = seaweed.new_bucket_name("flt")
            client = seaweed.client()
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="warm-up", Body=b"x")  # grow a volume first
            client.delete_object(Bucket=bucket, Key="warm-up")
            endpoint = proxy.endpoint if proxy is not None else seaweed.endpoint
            settings = {"url": f"s3://{bucket}/drkit", "endpoint": endpoint}
            settings["region"] = seaweed.region
            self.repo = RepoTarget(
                "s3",
                settings,
                env={
                    "AWS_ACCESS_KEY_ID": seaweed.access_key,
                    "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
                },
                s3=client,
                bucket=bucket,
                prefix="drkit",
            )
        settings["dedup"] = dedup
        if dedup:
            # The smallest packs (#20): a backup of a few MiB writes several, so a fault
            # at the Nth pack PUT or ranged GET has an N to land on, as chunks had.
            self.repo.env["DRKIT_PACK_SIZE"] = str(1 << 20)
        else:
            # S3's smallest parts: a whole artifact of 6 MiB is a two-part upload.
            self.repo.env["DRKIT_PART_SIZE"] = str(5 << 20)
        self.src, self.out = tmp_path / "data.bin", tmp_path / "restored.bin"
        self.policy = write_policy(
            tmp_path / f"{HOST}.toml",
            HOST,
            settings,
            [keys.recipient],
            [
                {
                    "kind": "command",
                    "name": "db",
                    "artifact": "dump",
                    "command": ["cat", str(self.src)],
                    "restore_command": ["sh", "-c", f"cat > {self.out}"],
                }
            ],
        )
        if retention:
            self.policy.write_text(self.policy.read_text() + f"[retention]\n{retention}\n")
        self.expected: dict[str, bytes] = {}  # snapshot id -> the data it was taken of
        self.generation = 0
        self.change()

    def change(self) -> None:
        """New data for the next backup: mostly the same (dedup reuses chunks), some new."""
        self.generation += 1
        rnd = random.Random(SEED * 1000 + self.generation)
        base = random.Random(SEED).randbytes(self.size)
        edit = rnd.randrange(0, self.size - 4096)
        data = base[:edit] + rnd.randbytes(4096) + base[edit + 4096 :] + rnd.randbytes(1000)
        self.src.write_bytes(data)

    # -- commands -------------------------------------------------------------

    def argv(self, *args: str) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of ``drkit args...`` on this bench."""
        env = {**self.repo.env, "DRKIT_NOW": LATER} if args[0] != "backup" else self.repo.env
        needs_key = args[0] in ("verify", "restore")
        ident = ["--identity", str(self.keys.identity_file)] if needs_key else []
        return [args[0], "--policy", str(self.policy), *ident, *args[1:]], env

    def run(self, *args: str) -> CliResult:
        argv, env = self.argv(*args)
        return drkit(*argv, env=env)

    def backup(self) -> CliResult:
        res = self.run("backup", "--json")
        if res.returncode == 0:
            snap = json.loads(res.stdout)["results"][0]["snapshot"]
            self.expected[snap] = self.src.read_bytes()
        return res

    def listed(self) -> list[str]:
        res = self.run("snapshots", "--json")
        assert res.returncode == 0, res.output
        return [s["snapshot"] for s in json.loads(res.stdout)["snapshots"]]

    def restore(self, snap: str) -> CliResult:
        self.out.unlink(missing_ok=True)
        return self.run("restore", "--yes", "--snapshot", snap)

    # -- invariants -----------------------------------------------------------

    def nothing_partial(self) -> list[str]:
        """What a failed or faulted run left that it must not have."""
        problems = []
        if self.repo.open_uploads():
            problems.append(f"open multipart uploads: {self.repo.open_uploads()}")
        keys = self.repo.keys(f"{HOST}/snapshots/")
        dirs = {k.split("/")[2] for k in keys}
        committed = {k.split("/")[2] for k in keys if k.endswith("/manifest.json")}
        if dirs - committed:
            problems.append(f"snapshot directories without a manifest: {sorted(dirs - committed)}")
        if self.repo.keys(f"{HOST}/locks/"):
            problems.append("a lock left behind")
        return problems

    def audit(self, row: Row) -> None:
        """Every listed snapshot verifies and restores equal; none we committed is gone.
        (One ``verify --all-snapshots`` for all: a run per snapshot cost the campaign
        minutes of interpreter start-ups.)"""
        listed = self.listed()
        row.lost += len(set(self.expected) - set(listed))
        verify = self.run("verify", "--all-snapshots", "--json")
        assert "Traceback" not in verify.output, verify.output
        try:
            results = json.loads(verify.stdout).get("results", [])
        except ValueError:
            results = []
        verified = {r["snapshot"] for r in results if r.get("ok")}
        for snap in listed:
            res = self.restore(snap)
            good = (
                snap in verified
                and res.returncode == 0
                and snap in self.expected
                and self.out.exists()
                and self.out.read_bytes() == self.expected[snap]
            )
            if not good:
                row.bad += 1
                row.observed.append(
                    f"{snap}: verified {snap in verified} (exit {verify.returncode}), "
                    f"restore {res.returncode}"
                )
            assert "Traceback" not in res.output, res.output


class PruneBench(Bench):
    """A Bench whose retention keeps the ``KEEP`` newest snapshots, filled before each
    prune so that it has ``REMOVABLE`` more to remove; knows what a kept snapshot needs."""

    KEEP = 2
    REMOVABLE = 2

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, retention=f"keep_last = {self.KEEP}", **kw)
        self.dedup = bool(kw.get("dedup"))
        self.objects: dict[str, set[str]] = {}  # snapshot id -> what its backup stored

    def backup(self) -> CliResult:
        """A backup; what it stored is noted (the snapshot's objects, its index's chunks)."""
        res = super().backup()
        if res.returncode == 0:
            snap = json.loads(res.stdout)["results"][0]["snapshot"]
            prefix = f"{HOST}/snapshots/{snap}/"
            stored = set(self.repo.keys(prefix))
            assert f"{prefix}manifest.json" in stored and f"{prefix}db/dump" in stored, stored
            if self.dedup:
                stored |= self.chunks_of(self.repo.read(f"{prefix}db/dump"))
            self.objects[snap] = stored
        return res

    def fill(self) -> None:
        """Back up until retention has ``REMOVABLE`` snapshots to remove."""
        while len(self.expected) < self.KEEP + self.REMOVABLE:
            self.change()
            res = self.backup()
            assert res.returncode == 0, res.output

    def kept(self) -> list[str]:
        """What retention keeps: the ``KEEP`` newest snapshots taken (ids sort by time)."""
        return sorted(self.expected)[-self.KEEP :]

    def prune(self) -> CliResult:
        return self.run("prune", "--json")

    def start_prune(self) -> subprocess.Popen[str]:
        """``drkit prune`` in the background (to be killed)."""
        argv, env = self.argv("prune", "--json")
        return subprocess.Popen(
            [sys.executable, "-m", "drkit", *argv],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # -- what the bucket holds, read directly (not through the proxy) ----------

    def committed(self) -> set[str]:
        keys = self.repo.keys(f"{HOST}/snapshots/")
        return {k.split("/")[2] for k in keys if k.endswith("/manifest.json")}

    @staticmethod
    def chunks_of(index: bytes) -> set[str]:
        """The objects a chunk index names: one object per chunk (version 1) or the
        packs holding them (versions 2 and 3), read by drkit's own index reader (which
        checks the index whole: lines, end line, compression)."""
        reader, refs = read_index(index, "campaign")
        if reader.version == 1:
            return {f"{HOST}/chunks/{reader.rset}/{r.id.hex()[:2]}/{r.id.hex()}" for r in refs}
        packs = {r.at.pack for r in refs if r.at is not None}
        return {f"{HOST}/packs/{reader.rset}/{p[:2]}/{p}" for p in packs}

    def missing(self, snaps: list[str]) -> dict[str, list[str]]:
        """For each of ``snaps``, the objects its backup stored that are gone."""
        present = set(self.repo.keys(f"{HOST}/"))
        out = {}
        for snap in snaps:
            gone = sorted(self.objects[snap] - present)
            if gone:
                out[snap] = gone
        return out

    def orphans(self) -> list[str]:
        """Chunk objects and packs that no committed snapshot's index names."""
        if not self.dedup:
            return []
        referenced: set[str] = set()
        for snap in self.committed():
            referenced |= self.chunks_of(self.repo.read(f"{HOST}/snapshots/{snap}/db/dump"))
        stored = set(self.repo.keys(f"{HOST}/chunks/")) | set(self.repo.keys(f"{HOST}/packs/"))
        return sorted(stored - referenced)

    def verified(self) -> tuple[set[str], CliResult]:
        """The listed snapshots that ``verify --all-snapshots`` passes, and its result."""
        res = self.run("verify", "--all-snapshots", "--json")
        assert "Traceback" not in res.output, res.output
        try:
            doc = json.loads(res.stdout)
        except ValueError:
            return set(), res
        return {r["snapshot"] for r in doc.get("results", []) if r["ok"]}, res

    # -- invariants --------------------------------------------------------------

    def check_after(self, row: Row, res: CliResult | None, what: str) -> None:
        """After a faulted prune (``res`` None: it was killed): nothing retention keeps
        is gone or missing an object, every listed snapshot verifies, no lock is left
        (unless killed)."""
        kept, listed = self.kept(), self.listed()
        gone = [s for s in kept if s not in listed]
        broken = self.missing([s for s in kept if s in listed])
        if gone or broken:
            row.lost += len(gone) + len(broken)
            row.observed.append(f"{what}: kept snapshots gone {gone}, missing objects {broken}")
        ok, verify = self.verified()
        bad = sorted(set(listed) - ok)
        if bad:
            row.bad += len(bad)
            row.observed.append(f"{what}: listed but does not verify: {bad}")
        assert not (gone or broken or bad), (
            f"{what}: kept snapshots gone {gone}, missing objects {broken}, listed snapshots "
            f"that do not verify {bad}\n{verify.output[-3000:]}\n"
            + (res.output[-3000:] if res is not None else "(killed)")
        )
        if res is not None:
            assert not self.repo.keys(f"{HOST}/locks/"), f"{what}: a lock left behind"

    def check_converged(self, row: Row, res: CliResult, what: str) -> None:
        """After the rerun without faults: it succeeded and left exactly what retention
        keeps, nothing partial, no orphan chunk; ``expected`` follows what was removed."""
        if res.returncode != 0:
            row.recovered = False
        assert res.returncode == 0, f"{what}: the rerun failed\n{res.output}"
        assert "Traceback" not in res.output, res.output
        kept, listed = self.kept(), self.listed()
        problems = self.nothing_partial()
        if sorted(listed) != kept:
            problems.append(f"listed {sorted(listed)}, retention keeps {kept}")
        if self.orphans():
            problems.append(f"orphan chunks: {self.orphans()}")
        if problems:
            row.recovered = False
        assert not problems, f"{what}: the rerun did not converge: {problems}\n{res.output}"
        self.expected = {k: v for k, v in self.expected.items() if k in kept}


FAULT_WORDS = {
    "status": "HTTP {status} {code}",
    "reset_request": "connection reset mid-request",
    "reset_response": "connection reset mid-answer",
    "short_body": "short body (Content-Length lies)",
    "stall_body": "answer stalls {seconds:g} s mid-body",
    "delay": "latency {seconds:g} s",
    "omit_key": "listing omits a key once",
    "ignore_conditions": "If-None-Match/If-Match ignored",
    "garble": "answer cut short, well framed (garbled document)",
    "lose_answer": "request applied, answer lost",
    "stall": "request never answered",
}


def fault_words(f: Fault) -> str:
    """A fault in words, for the report: what, and how often."""
    what = FAULT_WORDS[f.action].format(status=f.status, code=f.code, seconds=f.seconds)
    times = "every time" if f.times == 0 else f"x{f.times}"
    return f"{what} ({times})"


def excerpt(stderr: str) -> str:
    """The error line a user reads."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:  # the line naming the object, else the first saying what failed
        if "s3://" in ln:
            return ln[:240]
    for ln in lines:
        if "failed" in ln.lower() or "error" in ln.lower():
            return ln[:240]
    return lines[0][:240] if lines else ""


def check_failure(bench: Bench, res: CliResult, row: Row, what: str) -> None:
    """A faulted command that failed must have failed closed and said where: the host
    (``host flt:``, or verify's ``flt <snapshot>: FAILED`` line) and the object (its URL)."""
    assert res.returncode == 1, f"{what}: exit {res.returncode}\n{res.output}"
    assert "Traceback" not in res.output, res.output
    named = re.search(rf"(host {HOST}\b|^{HOST} \S+: FAILED)", res.output, re.M)
    assert named, f"{what}: the error does not name host {HOST}:\n{res.output}"
    assert f"s3://{bench.repo.bucket}/" in res.output, f"{what}: no object named:\n{res.output}"
    row.excerpt = row.excerpt or excerpt(res.stderr or res.stdout)


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL, as the OOM killer or a power cut would: no cleanup runs."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def seeded(scenario: str, iteration: int) -> random.Random:
    return random.Random(f"{SEED}/{scenario}/{iteration}")


def faults_for(template: Fault, rnd: random.Random, skip: int, after: int) -> Fault:
    """``template`` at a seeded injection point: after 0..skip-1 matching requests, and
    (for body faults) after 0..after-1 bytes."""
    return Fault(
        template.action,
        template.method,
        template.target,
        skip=rnd.randrange(skip) if skip > 1 else 0,
        times=template.times,
        status=template.status,
        code=template.code,
        after=rnd.randrange(after) if after > 1 else 0,
        seconds=template.seconds,
        key=template.key,
    )


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def seconds(self) -> float:
        return round(time.monotonic() - self.start, 1)


@contextlib.contextmanager
def recorded(row: Row) -> Iterator[dict[str, int]]:
    """Around a scenario's set-up, iterations and audit, which count their outcomes in
    the dict yielded: the row is written whatever happens (a failure as ``FAILED: ...``),
    with the seconds the ``with`` took; then the scenario fails if it lost a snapshot or
    left a bad one listed."""
    clock = Clock()
    outcomes: dict[str, int] = {}
    try:
        yield outcomes
        row.observed[:0] = [f"{k} x{v}" for k, v in sorted(outcomes.items())]
    except BaseException as exc:
        row.recovered = False
        row.observed.append(f"FAILED: {str(exc).splitlines()[0][:200]}")
        raise
    finally:
        row.seconds = clock.seconds()
        row.write()
    assert row.lost == 0 and row.bad == 0, row.observed
