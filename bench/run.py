"""`make bench`: drkit against restic, borg and the pipeline floors on bench-1G.

One session, one throwaway PostgreSQL (bench/workload.py, cached build) and
one SeaweedFS S3 server (tests/servers/seaweed.py) on loopback. Each figure is
measured ``--runs`` times; within a round every tool runs once, in an order
rotated round by round, so drift (cache, other load) hits every tool alike,
and ratios drkit/X are taken pair by pair within a round.

Per round: (a) full backups -> churn (pgbench -T, VACUUM, CHECKPOINT) ->
(b) incremental backups -> (d) verify/check -> (c) restores into fresh
databases (each checked against the source, then dropped). Then (e) peak RSS
at 1x and 10x the data, (f) 4 hosts concurrently vs the slowest alone, and a
py-spy profile of one more full backup (not part of any figure).

    .venv/bin/python bench/run.py [--runs 3] [--scale 30] [--quick] [--only a,b,c,d,e,f,g]

Writes bench/results/<date>.{json,md,png} and the generated block of
docs/benchmarks.md (full runs only, unless --docs is given).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyrage  # noqa: E402

from bench import peers  # noqa: E402
from bench.backup_rss import (  # noqa: E402
    backup_and_restore,
    backup_command,
    restore_command,
    stream_policy,
)
from bench.measure import Command, Sample, process_cpu_s, rotated, run  # noqa: E402
from bench.report import (  # noqa: E402
    Results,
    declare_all,
    git_revision,
    machine_facts,
    output_stem,
    summarize_profile,
    write_outputs,
)
from bench.workload import (  # noqa: E402
    DATABASE,
    DEFAULT_CACHE,
    Cluster,
    WorkloadSpec,
    bench_cluster,
    churn,
    describe,
)
from tests.helpers import ensure_signing_key, write_policy  # noqa: E402
from tests.servers.postgres import PG_BIN  # noqa: E402
from tests.servers.seaweed import SeaweedServer, seaweed_server  # noqa: E402

DRKIT = [sys.executable, "-m", "drkit"]
PHASES = "abcdefg"
_SPY_RATE = 100  # py-spy samples per second


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Round:
    """What one round of (a)-(d) writes: drkit buckets (whole artifacts, and with
    ``dedup = true`` unless ``--no-dedup-variant``), a restic bucket, a borg repo."""

    index: int
    dir: Path
    drkit_bucket: str
    drkit_policy: Path
    restic: peers.Restic
    borg: peers.Borg
    dedup_bucket: str | None = None
    dedup_policy: Path | None = None
    local_policy: Path | None = None
    borg_archive: str = ""


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        spec: WorkloadSpec,
        cluster: Cluster,
        s3: SeaweedServer,
        work: Path,
        res: Results,
    ) -> None:
        self.args, self.spec, self.cluster, self.s3 = args, spec, cluster, s3
        self.work, self.res = work, res
        self.client = s3.client(read_timeout=300)
        identity = pyrage.x25519.Identity.generate()
        self.recipient = str(identity.to_public())
        self.identity = work / "identity.txt"
        self.identity.write_text(f"{identity}\n")
        self.identity.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DRKIT_"))}
        env.update(
            DRKIT_STATE_DIR=str(work / "drkit-state"),
            DRKIT_CONFIG_DIR=str(work / "drkit-config"),
            AWS_ACCESS_KEY_ID=s3.access_key,
            AWS_SECRET_ACCESS_KEY=s3.secret_key,
        )
        self.env = env
        self.shorten = {
            str(work): "$WORK",
            sys.executable: "python",
            str(PG_BIN) + "/": "",
            self.recipient: "$AGE_RECIPIENT",
            s3.endpoint: "$S3_ENDPOINT",
            f" {cluster.server.port} ": " $PGPORT ",
        }

    # ---- plumbing -------------------------------------------------------

    def measure(
        self,
        phase: str,
        key: str,
        index: int,
        cmd: Command,
        after: Callable[[Sample], dict[str, Any]] | None = None,
    ) -> Sample:
        server0 = process_cpu_s(self.s3.pid)
        sample = run(cmd, env=self.env)
        extra = {"server_cpu_s": round(process_cpu_s(self.s3.pid) - server0, 2)}
        extra.update(after(sample) if after else {})
        self.res.declare(phase, key, "", "", self.command_text(cmd))
        self.res.record(phase, key, index, sample, **extra)
        m = self.res.measurements[(phase, key)]
        stored = f", stored {extra['stored_bytes'] / 1e6:.1f} MB" if "stored_bytes" in extra else ""
        log(
            f"({phase}) round {index + 1}: {m.label}: {sample.wall_s:.2f}s, "
            f"RSS {sample.main_rss_mib:.0f}/{sample.children_rss_mib:.0f} MiB{stored}"
        )
        return sample

    def command_text(self, cmd: Command) -> str:
        text = f" {cmd.shell()} "
        for long, short in self.shorten.items():
            text = text.replace(long, short)
        return text.strip()

    def new_bucket(self, stem: str) -> str:
        name = self.s3.new_bucket_name(stem)
        self.client.create_bucket(Bucket=name)
        return name

    def pg_source(self) -> dict[str, Any]:
        pg = self.cluster.server
        return {"kind": "postgres", "name": "db", "database": DATABASE, "host": pg.host,
                "port": pg.port, "user": pg.user}  # fmt: skip

    def drkit_policy(self, path: Path, host: str, bucket: str, *, dedup: bool = False) -> Path:
        return write_policy(
            path,
            host,
            self.drkit_repo(bucket, dedup=dedup),
            [self.recipient],
            [self.pg_source()],
            signers=[ensure_signing_key(Path(self.env["DRKIT_CONFIG_DIR"]))],
        )

    def drkit_repo(self, bucket: str, *, dedup: bool = False) -> dict[str, Any]:
        """drkit's repository in ``bucket``: whole artifacts (``dedup = false``), or
        deduplicated chunks in packs (``dedup = true``, the policy default)."""
        repo: dict[str, Any] = {"url": f"s3://{bucket}/drkit", "endpoint": self.s3.endpoint}
        return {**repo, "dedup": dedup}

    def drkit_backup(self, policy: Path) -> Command:
        return Command.one(
            [*DRKIT, "backup", "--policy", str(policy), "-q", "--json"], capture=True
        )

    def drkit_json(self, sample: Sample) -> Any:
        return json.loads(sample.stdout)

    # ---- rounds (a) (b) (d) (c) ---------------------------------------------

    def new_round(self, index: int) -> Round:
        d = self.work / f"r{index}"
        d.mkdir()
        bucket = self.new_bucket(f"drkit-r{index}")
        restic = peers.Restic(
            self.s3.endpoint, self.new_bucket(f"restic-r{index}"), self.s3.access_key,
            self.s3.secret_key, "bench-restic-password", d / "restic-cache",
        )  # fmt: skip
        borg = peers.Borg(d / "borg-repo", d / "borg-home", "bench-borg-passphrase")
        restic.init()
        borg.init()
        rnd = Round(
            index, d, bucket, self.drkit_policy(d / "bench.toml", "bench", bucket), restic, borg
        )
        # The embedded default: a repository in a local directory, no S3 server
        # sharing the CPUs (measured in (a) only).
        local = {"url": f"file://{d / 'drkit-local'}", "dedup": False}
        rnd.local_policy = write_policy(
            d / "bench-local.toml",
            "bench",
            local,
            [self.recipient],
            [self.pg_source()],
            signers=[ensure_signing_key(Path(self.env["DRKIT_CONFIG_DIR"]))],
        )
        if self.args.dedup_variant:
            rnd.dedup_bucket = self.new_bucket(f"drkit-dedup-r{index}")
            rnd.dedup_policy = self.drkit_policy(
                d / "bench-dedup.toml", "bench", rnd.dedup_bucket, dedup=True
            )
        return rnd

    def end_round(self, rnd: Round) -> None:
        for bucket in (rnd.drkit_bucket, rnd.dedup_bucket, rnd.restic.bucket):
            if bucket:
                peers.drop_bucket(self.client, bucket)
        shutil.rmtree(rnd.dir, ignore_errors=True)

    def drkit_tools(self, rnd: Round) -> list[tuple[str, Path]]:
        """(measurement key, policy) of each drkit configuration measured in (a), (b), (d)."""
        tools = [("drkit", rnd.drkit_policy)]
        return tools + ([("drkit-dedup", rnd.dedup_policy)] if rnd.dedup_policy else [])

    def stored(self, tool: str, rnd: Round) -> int:
        if tool == "drkit":
            return peers.bucket_bytes(self.client, rnd.drkit_bucket)
        if tool == "drkit-dedup" and rnd.dedup_bucket:
            return peers.bucket_bytes(self.client, rnd.dedup_bucket)
        if tool == "restic":
            return peers.bucket_bytes(self.client, rnd.restic.bucket)
        if tool == "drkit-local":
            return peers.tree_bytes(rnd.dir / "drkit-local")
        return rnd.borg.stored_bytes()

    def backups(self, phase: str, rnd: Round, *, record: bool) -> None:
        """drkit, restic and borg back up the database into this round's repositories."""
        c, r = self.cluster, rnd.index
        drkits = self.drkit_tools(rnd)
        if phase == "a" and record and rnd.local_policy:
            drkits.append(("drkit-local", rnd.local_policy))
        before = {t: self.stored(t, rnd) for t in (*(k for k, _ in drkits), "restic", "borg")}
        archive = f"{phase}-r{r}"

        def tool(name: str, cmd: Command) -> Callable[[], None]:
            def go() -> None:
                def after(s: Sample) -> dict[str, Any]:
                    # Full: the whole repository; incremental: what this backup added.
                    if phase == "a":
                        return {"stored_bytes": self.stored(name, rnd)}
                    delta = self.stored(name, rnd) - before[name]
                    return {"stored_bytes": delta, "stored_is_delta": True}

                if record:
                    self.measure(phase, name, r, cmd, after)
                else:
                    run(cmd, env=self.env)

            return go

        entries = [
            *(tool(key, self.drkit_backup(policy)) for key, policy in drkits),
            tool("restic", rnd.restic.backup(c)),
            tool("borg", rnd.borg.backup(c, archive)),
        ]
        if record:
            out = rnd.dir / "floor.out"

            def floor(key: str, cmd: Command) -> Callable[[], None]:
                def go() -> None:
                    def after(s: Sample) -> dict[str, Any]:
                        size = int(s.stdout.split()[0]) if cmd.capture else out.stat().st_size
                        out.unlink(missing_ok=True)
                        return {"stored_bytes": size}

                    self.measure(phase, key, r, cmd, after)

                return go

            entries.append(floor("floor-pipeline", peers.floor_pipeline(c, out, self.recipient)))
            if phase == "a":
                entries += [
                    floor("floor-dump", peers.floor_dump(c)),
                    floor("floor-zstd", peers.floor_zstd(c, out)),
                    floor(
                        "floor-pipeline-fc",
                        peers.floor_pipeline(c, out, self.recipient, "-Fc", "-Z0"),
                    ),
                ]
        for go in rotated(entries, r):
            go()
        rnd.borg_archive = archive

    def verify(self, rnd: Round) -> None:
        r = rnd.index

        def verify(policy: Path) -> Command:
            argv = [*DRKIT, "verify", "--policy", str(policy), "--identity", str(self.identity)]
            return Command.one([*argv, "--json"], capture=True)

        def drkit_after(s: Sample) -> dict[str, Any]:
            out = self.drkit_json(s)["results"][0]
            if not out["ok"]:
                raise RuntimeError(f"drkit verify found problems: {out['problems']}")
            return {"stored_bytes": out["bytes"]}

        entries: list[Callable[[], Sample]] = [
            *(partial(self.measure, "d", key, r, verify(policy), drkit_after)
              for key, policy in self.drkit_tools(rnd)),
            lambda: self.measure("d", "restic", r, rnd.restic.check(),
                                 lambda s: {"stored_bytes": self.stored("restic", rnd)}),
            lambda: self.measure("d", "borg", r, rnd.borg.check(),
                                 lambda s: {"stored_bytes": self.stored("borg", rnd)}),
        ]  # fmt: skip
        for go in rotated(entries, r):
            go()

    def restores(self, rnd: Round) -> None:
        """Each tool restores its newest backup into a fresh database, checked then dropped."""
        c, r = self.cluster, rnd.index
        custom, plain = rnd.dir / "custom.dump", rnd.dir / "plain.sql"
        peers.dump_files(c, custom, plain)
        expected = peers.database_fingerprint(c)
        restore = [*DRKIT, "restore", "--yes", "--policy", str(rnd.drkit_policy),
                   "--identity", str(self.identity), "--json"]  # fmt: skip

        def into(
            key: str, make: Callable[[str], Command], create: bool = True
        ) -> Callable[[], None]:
            def go() -> None:
                db = f"restored_{key.replace('-', '_')}_r{r}"
                if create:
                    c.server.psql("postgres", f"CREATE DATABASE {db};")
                self.measure("c", key, r, make(db))
                got = peers.database_fingerprint(c, db)
                if got != expected:
                    raise RuntimeError(
                        f"{key}: restored {db} differs from the source: {got} != {expected}"
                    )
                c.server.psql("postgres", f"DROP DATABASE {db};")
                c.server.psql("postgres", "CHECKPOINT;")  # the next tool starts with clean buffers

            return go

        entries = [
            into("floor-pg_restore", lambda db: peers.floor_pg_restore(c, custom, db)),
            into("floor-psql", lambda db: peers.floor_psql(c, plain, db)),
            into(
                "drkit",
                lambda db: Command.one([*restore, "--database", db], capture=True),
                create=False,
            ),
            into("restic", lambda db: rnd.restic.restore(c, db)),
            into("borg", lambda db: rnd.borg.restore(c, db, rnd.borg_archive)),
        ]
        if rnd.dedup_policy:
            dedup = [*restore]
            dedup[dedup.index(str(rnd.drkit_policy))] = str(rnd.dedup_policy)
            entries.append(
                into(
                    "drkit-dedup",
                    lambda db: Command.one([*dedup, "--database", db], capture=True),
                    create=False,
                )
            )
        for go in rotated(entries, r):
            go()
        custom.unlink()
        plain.unlink()

    def rounds(self, phases: str) -> None:
        for r in range(self.args.runs):
            rnd = self.new_round(r)
            try:
                self.backups("a", rnd, record="a" in phases)
                if "b" in phases:
                    done = churn(self.cluster, self.spec.churn_seconds)
                    self.res.meta.setdefault("churn", []).append(done)
                    log(f"churn: {done['transactions']} transactions in {done['seconds']}s")
                    self.backups("b", rnd, record=True)
                if "d" in phases:
                    self.verify(rnd)
                if "c" in phases:
                    self.restores(rnd)
            finally:
                self.end_round(rnd)

    # ---- (e) peak RSS at 1x and 10x -------------------------------------------

    def rss_scaling(self, factor: int) -> None:
        plain = self.work / "e-plain.sql"
        subprocess.run(peers.pg_dump(self.cluster, "-Fp", "-f", str(plain)).argv, check=True)
        out = self.work / "e-restored.txt"
        for r in range(self.args.runs):
            for k in rotated([1, factor], r):
                bucket = self.new_bucket(f"stream-{k}x")
                repo = self.drkit_repo(bucket)
                stream = ["sh", "-c", f"for i in $(seq {k}); do cat {plain}; done"]
                policy = stream_policy(self.work / f"stream-{k}x.toml", f"stream-{k}x", repo,
                                       self.recipient, stream, out, self.env)  # fmt: skip
                res = backup_and_restore(policy, self.identity, out, self.env)
                tag = "1x" if k == 1 else "kx"
                cmds = (backup_command(policy), restore_command(policy, self.identity))
                self.res.declare("e", f"backup-{tag}", "", "", self.command_text(cmds[0]))
                self.res.declare("e", f"restore-{tag}", "", "", self.command_text(cmds[1]))
                self.res.record("e", f"backup-{tag}", r, res.backup, stored_bytes=res.stored_bytes,
                                plain_bytes=res.plain_bytes)  # fmt: skip
                self.res.record(
                    "e", f"restore-{tag}", r, res.restore, plain_bytes=res.restored_bytes
                )
                log(f"(e) round {r + 1}: {k}x ({res.plain_bytes / 1e6:.0f} MB): backup "
                    f"{res.backup.wall_s:.1f}s {res.backup.main_rss_mib:.0f} MiB, restore "
                    f"{res.restore.wall_s:.1f}s {res.restore.main_rss_mib:.0f} MiB")  # fmt: skip
                peers.drop_bucket(self.client, bucket)
        plain.unlink()

    # ---- (g) S3 requests per GB ---------------------------------------------

    def requests(self) -> None:
        """Each S3 tool's full backup, incremental backup (after churn) and restore, once,
        through a counting proxy (untimed: the proxy adds a hop), as requests per GB of
        the plain dump. Recorded in ``meta["s3_requests"]``."""
        from tests.servers.s3faults import fault_proxy

        c = self.cluster
        gb = self.res.meta["workload"]["dump_bytes"] / 1e9
        out: dict[str, dict[str, float]] = {}
        with fault_proxy(self.s3) as proxy:
            buckets = {
                "drkit": self.new_bucket("req-drkit"), "drkit-dedup": self.new_bucket("req-dedup"),
            }  # fmt: skip
            policies = {}
            signer = ensure_signing_key(Path(self.env["DRKIT_CONFIG_DIR"]))
            for key, bucket in buckets.items():
                repo = {"url": f"s3://{bucket}/drkit", "endpoint": proxy.endpoint,
                        "dedup": key == "drkit-dedup"}  # fmt: skip
                policies[key] = write_policy(
                    self.work / f"req-{key}.toml", f"req-{key}", repo, [self.recipient],
                    [self.pg_source()], signers=[signer],
                )  # fmt: skip
            restic = peers.Restic(
                proxy.endpoint, self.new_bucket("req-restic"), self.s3.access_key,
                self.s3.secret_key, "bench-restic-password", self.work / "req-restic-cache",
            )  # fmt: skip
            restic.init()

            def counted(cmd: Command, env: dict[str, str] | None = None) -> float:
                before = proxy.requests
                run(cmd, env=env or self.env)
                return round((proxy.requests - before) / gb, 1)

            for step in ("full", "incremental", "restore"):
                if step == "incremental":
                    churn(c, self.spec.churn_seconds)
                for key, policy in policies.items():
                    if step == "restore":
                        db = f"req_{key.replace('-', '_')}"
                        argv = [*DRKIT, "restore", "--yes", "--policy", str(policy), "--identity",
                                str(self.identity), "--database", db, "--json"]  # fmt: skip
                        out.setdefault(key, {})[step] = counted(Command.one(argv, capture=True))
                        c.server.psql("postgres", f"DROP DATABASE {db};")
                    else:
                        out.setdefault(key, {})[step] = counted(self.drkit_backup(policy))
                if step == "restore":
                    c.server.psql("postgres", "CREATE DATABASE req_restic;")
                    out.setdefault("restic", {})[step] = counted(restic.restore(c, "req_restic"))
                    c.server.psql("postgres", "DROP DATABASE req_restic;")
                else:
                    out.setdefault("restic", {})[step] = counted(restic.backup(c))
                log(f"(g) {step}: " + ", ".join(f"{k} {v[step]}/GB" for k, v in out.items()))
            for bucket in [*buckets.values(), restic.bucket]:
                peers.drop_bucket(self.client, bucket)
        self.res.meta["s3_requests"] = out

    # ---- (f) fleet ----------------------------------------------------------

    def fleet(self) -> None:
        for r in range(self.args.runs):
            self.fleet_round(r)

    def fleet_round(self, r: int) -> None:
        """Each host alone, then all at once (--jobs = hosts), in an order rotated by round."""
        d = self.work / f"fleet-r{r}"
        d.mkdir()
        bucket = self.new_bucket(f"fleet-r{r}")
        n = self.args.fleet_hosts
        hosts = [f"fleet-{i}" for i in range(1, n + 1)]
        for h in hosts:
            self.drkit_policy(d / f"{h}.toml", h, bucket)
        base = [
            *DRKIT,
            "--policy-dir",
            str(d),
            "backup",
            "-q",
            "--json",
            "--jobs",
            str(n),
        ]
        walls: dict[str, float] = {}
        nproc = os.cpu_count() or 1

        def single(i: int, h: str) -> Callable[[], None]:
            def go() -> None:
                cmd = Command.one([*base, "--host", h], capture=True)
                walls[h] = self.measure("f", f"host-{i}", r, cmd).wall_s

            return go

        def together() -> None:
            s = self.measure("f", "fleet", r, Command.one([*base, "--all"], capture=True))
            states = [x["status"] for x in self.drkit_json(s)["results"]]
            if states != ["success"] * n:
                raise RuntimeError(f"fleet backup: {states}")
            # What the machine's CPUs allow: no scheduler can finish faster than this.
            self.res.record("f", "cpu-bound", r, None, wall_s=s.machine_cpu_s / nproc)

        for go in rotated([*(single(i, h) for i, h in enumerate(hosts, 1)), together], r):
            go()
        self.res.record("f", "slowest-alone", r, None, wall_s=max(walls.values()))
        peers.drop_bucket(self.client, bucket)
        shutil.rmtree(d, ignore_errors=True)

    # ---- restore steps --------------------------------------------------------

    def restore_steps(self) -> list[dict[str, Any]]:
        """Untimed by the rounds: the custom dump restored step by step into one database
        (schema, each table's data alone, post-data with -j2), each step's wall time."""
        c = self.cluster
        custom = self.work / "steps.dump"
        subprocess.run(peers.pg_dump(c, "-Fc", "-Z0", "-f", str(custom)).argv, check=True)
        toc = subprocess.run(
            [c.tool("pg_restore"), "-l", str(custom)], check=True, capture_output=True, text=True
        ).stdout
        data = [ln for ln in toc.splitlines() if " TABLE DATA " in ln]
        db = "restored_steps"
        c.server.psql("postgres", f"CREATE DATABASE {db};")
        base = [c.tool("pg_restore"), "--exit-on-error", "--no-comments", *c.pg_args(db)]
        steps = [("schema (--section=pre-data)", ["--section=pre-data"])]
        for n, line in enumerate(data):
            listing = self.work / f"steps-{n}.list"
            listing.write_text(line + "\n")
            table = " ".join(line.split(" ")[6:-1])
            steps.append((f"data of {table}", ["--section=data", "-L", str(listing)]))
        steps.append(("indexes, constraints (--section=post-data -j2)",
                      ["--section=post-data", "-j2"]))  # fmt: skip
        out = []
        for name, args in steps:
            t0 = time.monotonic()
            subprocess.run([*base, *args, str(custom)], check=True)
            out.append({"step": name, "seconds": round(time.monotonic() - t0, 3)})
        c.server.psql("postgres", f"DROP DATABASE {db};")
        custom.unlink()
        log("restore steps: " + ", ".join(f"{s['step']} {s['seconds']:.2f}s" for s in out))
        return out

    # ---- profile ------------------------------------------------------------

    def profile(self, out_dir: Path, stem: str) -> dict[str, Any] | None:
        spy = Path(sys.executable).parent / "py-spy"
        if not spy.exists():
            log("profile skipped: py-spy is not installed in the venv (pip install py-spy)")
            return None
        bucket = self.new_bucket("profile")
        policy = self.drkit_policy(self.work / "profile.toml", "profile", bucket)
        raw = out_dir / f"{stem}-backup-profile.txt"
        svg = out_dir / f"{stem}-backup-profile.svg"
        backup = [*DRKIT, "backup", "--policy", str(policy), "-q"]
        native = ["--native"]
        for fmt, path in (("raw", raw), ("flamegraph", svg)):
            # --idle: waiting threads are sampled too, so shares are of wall time.
            argv = [str(spy), "record", "--idle", "--full-filenames", "--rate", str(_SPY_RATE),
                    "--format", fmt, "-o", str(path), "--", *backup]  # fmt: skip
            t0 = time.monotonic()
            done = subprocess.run(
                [*argv[:2], *native, *argv[2:]], env=self.env, capture_output=True
            )
            # Native unwinding is not available everywhere, and where it is slow py-spy
            # drops samples (2026-12-05: 53 samples of a 9 s backup): Python frames only.
            expected = (time.monotonic() - t0) * _SPY_RATE / 2  # the main thread alone
            why = (
                (done.stderr.decode()[-200:] or f"exit {done.returncode}")
                if done.returncode
                else ""
            )
            if native and fmt == "raw" and not why:
                got = summarize_profile(raw.read_text())["samples"]
                why = f"{got} samples, expected {expected:.0f}" if got < expected else ""
            if why and native:
                log(f"py-spy --native failed ({why}); retrying without")
                native = []
                peers.drop_bucket(self.client, bucket)
                self.client.create_bucket(Bucket=bucket)
                done = subprocess.run(argv, env=self.env, capture_output=True)
            if done.returncode != 0:
                log(f"profile skipped: py-spy failed: {done.stderr.decode()[-500:]}")
                return None
            peers.drop_bucket(self.client, bucket)
            self.client.create_bucket(Bucket=bucket)
        peers.drop_bucket(self.client, bucket)
        summary = summarize_profile(raw.read_text())
        # Collapsed stacks are ~1 MB of text: keep them compressed (report.load reads them).
        packed = raw.with_suffix(".txt.gz")
        packed.write_bytes(gzip.compress(raw.read_bytes()))
        raw.unlink()
        raw = packed
        shown = Command.one(["py-spy", "record", "--idle", *native, "--", *backup])
        summary.update(command=self.command_text(shown), svg=svg.name, raw=raw.name)
        return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    ap.add_argument("--scale", type=int, default=30, help="pgbench scale (default 30: bench-1G)")
    ap.add_argument("--quick", action="store_true", help="tiny data (a few MB): a smoke run")
    ap.add_argument("--only", default=PHASES, help="phases to run, e.g. a,b (default all: a-g)")
    ap.add_argument("--rss-factor", type=int, help="(e): data multiple (default 10; --quick: 2)")
    ap.add_argument("--fleet-hosts", type=int, help="(f): hosts (default 4; --quick: 2)")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--docs", type=Path, default=None,
                    help="Markdown file to update (default: docs/benchmarks.md)")  # fmt: skip
    ap.add_argument("--no-docs", action="store_true", help="do not touch any docs file")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                    help="py-spy profile of a full backup (default: on, not --quick)")  # fmt: skip
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="built workloads")
    ap.add_argument("--dedup-variant", action=argparse.BooleanOptionalAction, default=True,
                    help="(a), (b), (d): drkit also with `dedup = true` (default: on); every "
                    "other drkit figure uses whole artifacts, the policy default")  # fmt: skip
    args = ap.parse_args(argv)
    args.only = "".join(sorted(set(args.only.replace(",", "")) & set(PHASES)))
    if not args.only or args.runs < 1:
        ap.error("--only needs phases among a-g and --runs must be >= 1")
    if args.fleet_hosts is None:
        args.fleet_hosts = 2 if args.quick else 4
    if args.rss_factor is None:
        args.rss_factor = 2 if args.quick else 10
    if args.rss_factor < 2:
        ap.error("--rss-factor must be >= 2")
    if args.docs is None and not args.quick and not args.no_docs:
        args.docs = ROOT / "docs" / "benchmarks.md"
    if args.no_docs:
        args.docs = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    peers.require_tools()
    spec = WorkloadSpec.quick() if args.quick else WorkloadSpec(scale=args.scale)
    started = dt.datetime.now().astimezone()
    res = Results()
    declare_all(res, args.only, args.rss_factor, args.fleet_hosts, dedup=args.dedup_variant)
    stem = output_stem(args.results_dir, args.quick)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="drkit-bench-"))
    t0 = time.monotonic()
    try:
        with bench_cluster(spec, args.cache_dir, log) as cluster, seaweed_server() as s3:
            bench = Bench(args, spec, cluster, s3, work, res)
            facts = describe(cluster)
            dump = run(peers.floor_dump(cluster))  # warms the page cache; not a figure
            facts["dump_bytes"] = int(dump.stdout.split()[0])
            res.meta.update(
                started=started.isoformat(timespec="seconds"), git=git_revision(ROOT),
                runs=args.runs, quick=args.quick, phases=args.only, machine=machine_facts(),
                loadavg_start=round(os.getloadavg()[0], 2), workload={**facts, **spec.__dict__},
                versions=versions(), fleet_runner="local", rss_factor=args.rss_factor,
                fleet_hosts=args.fleet_hosts, dedup_variant=args.dedup_variant,
                workload_text=(
                    f"pgbench -i -s {spec.scale} + {spec.conversations} conversations, "
                    f"database {facts['database_bytes'] / 1e6:.0f} MB, "
                    f"pg_dump -Fp {facts['dump_bytes'] / 1e6:.0f} MB"
                ),
            )  # fmt: skip
            if set("abcd") & set(args.only):
                bench.rounds(args.only)
            if "c" in args.only:
                res.meta["restore_steps"] = bench.restore_steps()
            if "e" in args.only:
                bench.rss_scaling(args.rss_factor)
            if "f" in args.only:
                bench.fleet()
            if "g" in args.only:
                bench.requests()
            if args.profile if args.profile is not None else not args.quick:
                res.profile = bench.profile(args.results_dir, stem)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.meta["duration_s"] = round(time.monotonic() - t0, 1)
    paths = write_outputs(res, args.results_dir, stem=stem, docs=args.docs)
    for kind, path in paths.items():
        log(f"wrote {kind}: {path}")
    print(Path(paths["md"]).read_text())
    return 0


def versions() -> dict[str, str]:
    """Every program measured or used, as each prints its version."""
    from tests.servers.seaweed import weed_binary

    return {
        "drkit": peers.first_line([*DRKIT, "--version"]),
        **peers.versions(),
        "SeaweedFS": peers.first_line([weed_binary(), "version"]),
        "Python": sys.version.split()[0],
    }


if __name__ == "__main__":
    sys.exit(main())
