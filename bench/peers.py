"""What drkit is measured against: restic, borg, and the pipeline floors.

Install the peers from Debian (``apt-get install -y restic borgbackup age
zstd``); ``require_tools`` names what is missing. restic writes to the same
SeaweedFS S3 server as drkit (a fresh bucket per round), borg to a local
directory (borg has no S3 backend). Every command reads the same database
through ``pg_dump -Fp`` (plain SQL), as a user of either tool would run it:

- restic: repository format 2, its default ``auto`` compression (zstd), AES-256
  + Poly1305-AES; ``restic backup --stdin``.
- borg: ``repokey-blake2`` (AES-256-CTR + BLAKE2b: faster than HMAC-SHA256 on
  CPUs without SHA extensions), ``--compression zstd,3`` like drkit's zstd -3.

The floors are what the operating system can do with no backup tool at all:
``pg_dump | wc -c`` (dump cost), ``pg_dump | zstd -3 -T2`` and
``pg_dump | zstd -3 | age`` (the pipeline floor drkit is held to) into a
local file; and for restores, ``pg_restore -j2`` of an uncompressed custom
dump (drkit's own artifact format) and ``psql -f`` of a plain dump.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import Command, Stage
from bench.workload import DATABASE, Cluster
from tests.servers.postgres import PG_BIN

# binary -> Debian package
TOOLS = {"restic": "restic", "borg": "borgbackup", "age": "age", "zstd": "zstd"}
PSQL_LOAD = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
STDIN_NAME = "bench.sql"


def missing_packages() -> list[str]:
    """Debian packages whose binaries are not on PATH."""
    return [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]


def require_tools() -> None:
    """Raise RuntimeError with the install command if a peer tool is missing."""
    missing = missing_packages()
    if missing:
        raise RuntimeError(
            f"missing: {', '.join(missing)}; install with: apt-get install -y {' '.join(missing)}"
        )


def first_line(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    return (res.stdout or res.stderr).strip().splitlines()[0] if (res.stdout or res.stderr) else ""


def versions() -> dict[str, str]:
    """Version strings of every peer tool (as each prints it)."""
    return {
        "restic": first_line(["restic", "version"]),
        "borg": first_line(["borg", "--version"]),
        "zstd": first_line(["zstd", "--version"]),
        "age": first_line(["age", "--version"]),
        "PostgreSQL": first_line([str(PG_BIN / "postgres"), "--version"]),
    }


# ---- floors ---------------------------------------------------------------


def pg_dump(cluster: Cluster, *args: str) -> Stage:
    return Stage([cluster.tool("pg_dump"), *cluster.pg_args(), *args])


def psql_load(cluster: Cluster, database: str, *args: str) -> Stage:
    """psql applying a plain dump, stopping at the first error, in one transaction."""
    return Stage([cluster.tool("psql"), *PSQL_LOAD, *cluster.pg_args(database), *args])


def floor_dump(cluster: Cluster) -> Command:
    """``pg_dump -Fp | wc -c``: what reading the database costs."""
    return Command((pg_dump(cluster, "-Fp"), Stage(["wc", "-c"])), main=0, capture=True)


def floor_zstd(cluster: Cluster, out: Path) -> Command:
    return Command(
        (pg_dump(cluster, "-Fp"), Stage(["zstd", "-q", "-3", "-T2", "-c"])),
        main=1,
        stdout_path=out,
    )


def floor_pipeline(cluster: Cluster, out: Path, recipient: str, *fmt: str) -> Command:
    """``pg_dump | zstd -3 | age -r KEY > out``: the pipeline floor (``fmt`` default -Fp)."""
    return Command(
        (
            pg_dump(cluster, *(fmt or ("-Fp",))),
            Stage(["zstd", "-q", "-3", "-c"]),
            Stage(["age", "-r", recipient]),
        ),
        main=1,
        stdout_path=out,
    )


def dump_files(cluster: Cluster, custom: Path, plain: Path) -> None:
    """Untimed: the inputs of the restore floors."""
    for fmt, path in ((("-Fc", "-Z0"), custom), (("-Fp",), plain)):
        subprocess.run([*pg_dump(cluster, *fmt, "-f", str(path)).argv], check=True)


def floor_pg_restore(cluster: Cluster, custom: Path, database: str) -> Command:
    argv = [cluster.tool("pg_restore"), "-j2", "--exit-on-error", "--no-comments"]
    return Command.one([*argv, *cluster.pg_args(database), str(custom)])


def floor_psql(cluster: Cluster, plain: Path, database: str) -> Command:
    return Command((psql_load(cluster, database, "-f", str(plain)),))


# ---- restic -----------------------------------------------------------------


@dataclass(frozen=True)
class Restic:
    """One restic repository in an S3 bucket (``endpoint`` is SeaweedFS)."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    password: str
    cache_dir: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "RESTIC_REPOSITORY": f"s3:{self.endpoint}/{self.bucket}",
            "RESTIC_PASSWORD": self.password,
            "RESTIC_CACHE_DIR": str(self.cache_dir),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def init(self) -> None:
        _check(["restic", "init", "--repository-version", "2"], self.env, "restic init")

    def backup(self, cluster: Cluster) -> Command:
        argv = ["restic", "backup", "-q", "--stdin", "--stdin-filename", STDIN_NAME]
        return Command(
            (pg_dump(cluster, "-Fp"), Stage([*argv, "--host", "bench"], self.env)), main=1
        )

    def restore(self, cluster: Cluster, database: str) -> Command:
        dump = Stage(["restic", "dump", "-q", "latest", f"/{STDIN_NAME}"], self.env)
        return Command((dump, psql_load(cluster, database)), main=0)

    def check(self) -> Command:
        return Command.one(["restic", "check", "-q", "--read-data"], self.env)


# ---- borg -------------------------------------------------------------------


@dataclass(frozen=True)
class Borg:
    """One borg repository in a local directory."""

    repo: Path
    home: Path  # BORG_BASE_DIR: its cache, keys and security dirs stay in the work dir
    passphrase: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "BORG_REPO": str(self.repo),
            "BORG_PASSPHRASE": self.passphrase,
            "BORG_BASE_DIR": str(self.home),
        }

    def init(self) -> None:
        _check(["borg", "init", "-e", "repokey-blake2"], self.env, "borg init")

    def backup(self, cluster: Cluster, archive: str) -> Command:
        argv = ["borg", "create", "--compression", "zstd,3", "--stdin-name", STDIN_NAME]
        return Command(
            (pg_dump(cluster, "-Fp"), Stage([*argv, f"::{archive}", "-"], self.env)), main=1
        )

    def restore(self, cluster: Cluster, database: str, archive: str) -> Command:
        extract = Stage(["borg", "extract", "--stdout", f"::{archive}"], self.env)
        return Command((extract, psql_load(cluster, database)), main=0)

    def check(self) -> Command:
        return Command.one(["borg", "check", "--verify-data"], self.env)

    def stored_bytes(self) -> int:
        return tree_bytes(self.repo)


def tree_bytes(path: Path) -> int:
    """Bytes of every regular file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check(argv: list[str], env: dict[str, str], what: str) -> None:
    res = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed ({res.returncode}): {res.stderr[-2000:]}")


# ---- S3 buckets ---------------------------------------------------------------


def bucket_bytes(client: Any, bucket: str) -> int:
    """Total size of every object in ``bucket``."""
    total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += sum(int(o["Size"]) for o in page.get("Contents", []))
    return total


def drop_bucket(client: Any, bucket: str) -> None:
    """Delete every object, then the bucket (SeaweedFS then frees its volumes)."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


def database_fingerprint(cluster: Cluster, database: str = DATABASE) -> str:
    """Row counts and sums that a partial or wrong restore would change."""
    return cluster.server.psql(
        database,
        "SELECT (SELECT count(*) || '/' || sum(abalance) FROM pgbench_accounts) || ' ' || "
        "(SELECT count(*) || '/' || coalesce(sum(delta), 0) FROM pgbench_history) || ' ' || "
        "(SELECT count(*) || '/' || max(id) || '/' || sum(length(uid::text)) FROM conversations);",
    ).strip()
