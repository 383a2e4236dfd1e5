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
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
        seaweed: SeaweedServer,
        proxy: S3FaultProxy,
        *,
        dedup: bool,
        size: int,
    ) -> None:
        self.tmp, self.keys, self.proxy, self.size = tmp_path, keys, proxy, size
        bucket = seaweed.new_bucket_name("flt")
        client = seaweed.client()
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="warm-up", Body=b"x")  # grow a volume first
        client.delete_object(Bucket=bucket, Key="warm-up")
        settings: dict[str, Any] = {"url": f"s3://{bucket}/drkit", "endpoint": proxy.endpoint}
        settings["region"] = seaweed.region
        if dedup:
            settings["dedup"] = True
        self.repo = RepoTarget(
            "s3", settings,
            env={"AWS_ACCESS_KEY_ID": seaweed.access_key,
                 "AWS_SECRET_ACCESS_KEY": seaweed.secret_key},
            s3=client, bucket=bucket, prefix="drkit",
        )  # fmt: skip
        self.src, self.out = tmp_path / "data.bin", tmp_path / "restored.bin"
        self.policy = write_policy(
            tmp_path / f"{HOST}.toml", HOST, settings, [keys.recipient],
            [{"kind": "command", "name": "db", "artifact": "dump",
              "command": ["cat", str(self.src)],
              "restore_command": ["sh", "-c", f"cat > {self.out}"]}],
        )  # fmt: skip
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

    def run(self, *args: str) -> CliResult:
        env = {**self.repo.env, "DRKIT_NOW": LATER} if args[0] != "backup" else self.repo.env
        needs_key = args[0] in ("verify", "restore")
        ident = ["--identity", str(self.keys.identity_file)] if needs_key else []
        return drkit(args[0], "--policy", str(self.policy), *ident, *args[1:], env=env)

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
        """Every listed snapshot verifies and restores equal; none we committed is gone."""
        listed = self.listed()
        row.lost += len(set(self.expected) - set(listed))
        for snap in listed:
            ok = self.run("verify", "--snapshot", snap, "--json")
            res = self.restore(snap)
            good = (
                ok.returncode == 0
                and res.returncode == 0
                and snap in self.expected
                and self.out.exists()
                and self.out.read_bytes() == self.expected[snap]
            )
            if not good:
                row.bad += 1
                row.observed.append(f"{snap}: verify {ok.returncode}, restore {res.returncode}")
            for r in (ok, res):
                assert "Traceback" not in r.output, r.output


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


def seeded(scenario: str, iteration: int) -> random.Random:
    return random.Random(f"{SEED}/{scenario}/{iteration}")


def faults_for(template: Fault, rnd: random.Random, skip: int, after: int) -> Fault:
    """``template`` at a seeded injection point: after 0..skip-1 matching requests, and
    (for body faults) after 0..after-1 bytes."""
    return Fault(
        template.action, template.method, template.target,
        skip=rnd.randrange(skip) if skip > 1 else 0, times=template.times,
        status=template.status, code=template.code,
        after=rnd.randrange(after) if after > 1 else 0,
        seconds=template.seconds, key=template.key,
    )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def seconds(self) -> float:
        return round(time.monotonic() - self.start, 1)
