"""Peak RSS of `drkit backup` and `drkit restore` as the data grows (phase (e) of the bench).

A ``command`` source streams N MB through drkit; its restore command counts
the bytes that come back (``wc -c``), so the restore measures drkit's decode
path alone. The drkit process's own peak (VmHWM) and its children's are read
by bench/measure.py while it runs. Run at 1x and 10x the data to see that
memory stays flat.

``make bench`` streams the real plain dump of the bench database k times
(``cat``: real data, near-zero generation cost). Standalone, this script
streams synthetic pg_dump-like text (bench/gen_dump.py):

    python bench/backup_rss.py --size-mb 110 --size-mb 1100 [--s3 | --s3-only]

It prints one JSON line per repository and size, with the drkit process's
peak RSS (``backup_peak_rss_mib``, ``restore_peak_rss_mib``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyrage  # noqa: E402

from bench.measure import Command, Sample, run  # noqa: E402
from tests.helpers import ensure_signing_key, write_policy  # noqa: E402

DRKIT = [sys.executable, "-m", "drkit"]


@dataclass(frozen=True)
class StreamRun:
    """One backup + restore of a stream through drkit."""

    backup: Sample
    restore: Sample
    plain_bytes: int
    restored_bytes: int
    stored_bytes: int


def stream_policy(
    path: Path,
    host: str,
    repo: dict[str, Any],
    recipient: str,
    stream: list[str],
    out: Path,
    env: dict[str, str],
) -> Path:
    """A policy whose one ``command`` source runs ``stream``; restore writes its size to
    ``out``. Trusts the signing key of the config dir ``env`` names (made if missing)."""
    return write_policy(
        path,
        host,
        repo,
        [recipient],
        [
            {
                "kind": "command",
                "name": "stream",
                "artifact": "dump.sql",
                "command": stream,
                "restore_command": ["sh", "-c", f"wc -c > {shlex.quote(str(out))}"],
            }
        ],
        signers=[ensure_signing_key(Path(env["DRKIT_CONFIG_DIR"]))],
    )


def backup_command(policy: Path) -> Command:
    return Command.one([*DRKIT, "backup", "--policy", str(policy), "-q", "--json"], capture=True)


def restore_command(policy: Path, identity: Path) -> Command:
    argv = [*DRKIT, "restore", "--yes", "--policy", str(policy), "--identity", str(identity)]
    return Command.one([*argv, "--json"], capture=True)


def backup_and_restore(policy: Path, identity: Path, out: Path, env: dict[str, str]) -> StreamRun:
    """Back up, restore, and check that every byte came back."""
    b = run(backup_command(policy), env=env)
    result = json.loads(b.stdout)["results"][0]
    r = run(restore_command(policy, identity), env=env)
    restored = int(out.read_text().split()[0])
    if restored != result["plain_bytes"]:
        raise RuntimeError(f"restored {restored} bytes, backed up {result['plain_bytes']}")
    out.unlink()
    return StreamRun(b, r, result["plain_bytes"], restored, result["stored_bytes"])


def _standalone(
    size_mb: int, repo: dict[str, Any], work: Path, env: dict[str, str]
) -> dict[str, Any]:
    identity = pyrage.x25519.Identity.generate()
    ident_file = work / f"id-{size_mb}.txt"
    ident_file.write_text(f"{identity}\n")
    out = work / f"restored-{size_mb}.txt"
    stream = [sys.executable, str(ROOT / "bench/gen_dump.py"), "--size-mb", str(size_mb)]
    policy = stream_policy(
        work / f"bench{size_mb}.toml",
        f"bench{size_mb}",
        repo,
        str(identity.to_public()),
        stream,
        out,
        env,
    )
    res = backup_and_restore(policy, ident_file, out, env)
    return {
        "size_mb": size_mb,
        "restored_bytes": res.restored_bytes,
        "backup_seconds": round(res.backup.wall_s, 2),
        "backup_peak_rss_mib": round(res.backup.main_rss_mib, 1),
        "backup_children_rss_mib": round(res.backup.children_rss_mib, 1),
        "restore_seconds": round(res.restore.wall_s, 2),
        "restore_peak_rss_mib": round(res.restore.main_rss_mib, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=int, action="append", required=True)
    ap.add_argument("--s3", action="store_true", help="also measure against SeaweedFS S3")
    ap.add_argument("--s3-only", action="store_true", help="only S3 (skip the local repository)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drkit-bench-"))
    env = dict(
        os.environ, DRKIT_STATE_DIR=str(work / "state"), DRKIT_CONFIG_DIR=str(work / "config")
    )
    try:
        for size in [] if args.s3_only else args.size_mb:
            res = _standalone(size, {"url": (work / f"repo{size}").as_uri()}, work, env)
            print(json.dumps({"repository": "local", **res}), flush=True)
        if args.s3 or args.s3_only:
            from tests.servers.seaweed import seaweed_server

            with seaweed_server() as s3:
                s3env = dict(
                    env, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key
                )
                client = s3.client()
                for size in args.size_mb:
                    bucket = s3.new_bucket_name("bench")
                    client.create_bucket(Bucket=bucket)
                    repo = {"url": f"s3://{bucket}/drkit", "endpoint": s3.endpoint}
                    res = _standalone(size, repo, work, s3env)
                    print(json.dumps({"repository": "s3", **res}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
