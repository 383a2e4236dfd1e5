"""Peak RSS of `drkit backup` and `drkit restore` over a large dump (a benchmark, not a test).

A `command` source streams N MiB of pg_dump-like text (bench/gen_dump.py)
through drkit into a local repository (and, with --s3, into a real SeaweedFS
server). The drkit process's peak RSS (VmHWM) is read from /proc while it
runs. Run at two sizes to see that memory stays flat as data grows.

    python bench/backup_rss.py --size-mb 1100 [--size-mb 110] [--s3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyrage  # noqa: E402

from tests.helpers import write_policy  # noqa: E402


def peak_rss_mib(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run argv; return (wall seconds, peak RSS MiB of that process, exit code)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)
    _, err = proc.communicate()
    if proc.returncode != 0:
        sys.stderr.write(err.decode())
    return time.monotonic() - t0, peak / 1024, proc.returncode


def run(size_mb: int, repo: dict[str, str], work: Path, env: dict[str, str]) -> dict[str, object]:
    identity = pyrage.x25519.Identity.generate()
    ident_file = work / f"id-{size_mb}.txt"
    ident_file.write_text(f"{identity}\n")
    out_file = work / f"restored-{size_mb}.sql"
    policy = write_policy(
        work / f"bench{size_mb}.toml",
        f"bench{size_mb}",
        repo,
        [str(identity.to_public())],
        [
            {
                "kind": "command",
                "name": "dump",
                "artifact": "dump.sql",
                "command": [
                    sys.executable,
                    str(ROOT / "bench/gen_dump.py"),
                    "--size-mb",
                    str(size_mb),
                ],
                "restore_command": ["sh", "-c", f"cat > {out_file}"],
            }
        ],
    )
    drkit = [sys.executable, "-m", "drkit"]
    b_wall, b_rss, rc = peak_rss_mib([*drkit, "backup", "--policy", str(policy), "-q"], env)
    assert rc == 0, "backup failed"
    r_wall, r_rss, rc = peak_rss_mib(
        [*drkit, "restore", "--yes", "--policy", str(policy), "--identity", str(ident_file)], env
    )
    assert rc == 0, "restore failed"
    restored = out_file.stat().st_size
    out_file.unlink()
    return {
        "size_mb": size_mb,
        "restored_bytes": restored,
        "backup_seconds": round(b_wall, 2),
        "backup_peak_rss_mib": round(b_rss, 1),
        "restore_seconds": round(r_wall, 2),
        "restore_peak_rss_mib": round(r_rss, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, action="append", required=True)
    ap.add_argument("--s3", action="store_true", help="also measure against SeaweedFS S3")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drkit-bench-"))
    env = dict(
        os.environ, DRKIT_STATE_DIR=str(work / "state"), DRKIT_CONFIG_DIR=str(work / "config")
    )
    results = []
    for size in args.size_mb:
        res = run(size, {"url": (work / f"repo{size}").as_uri()}, work, env)
        results.append({"repository": "local", **res})
        print(json.dumps(results[-1]), flush=True)
    if args.s3:
        from tests.servers.seaweed import seaweed_server

        with seaweed_server() as s3:
            s3env = dict(env, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
            client = s3.client()
            for size in args.size_mb:
                bucket = s3.new_bucket_name("bench")
                client.create_bucket(Bucket=bucket)
                repo = {"url": f"s3://{bucket}/drkit", "endpoint": s3.endpoint}
                res = run(size, repo, work, s3env)
                results.append({"repository": "s3", **res})
                print(json.dumps(results[-1]), flush=True)
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
