"""A/B of `drkit backup` between two commits on the bench workload: wall time and peak
RSS, runs interleaved (A, B, B, A, ...) so drift on a shared machine hits both alike.

    .venv/bin/python bench/ab.py OLD_REV NEW_REV [--runs 5] [--scale 30]

Each commit runs from its own `git worktree` with this venv's packages. Targets:
SeaweedFS S3 (whole artifacts and dedup) and a local directory, as in phase (a).
Prints one line per target: median wall and peak RSS of each commit and the ratio.
The two commits must read the same policy keys (signers: given when the newer
commit needs them; an older drkit refuses unknown keys, so it gets a copy without).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyrage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import Command, run  # noqa: E402
from bench.workload import DATABASE, DEFAULT_CACHE, WorkloadSpec, bench_cluster  # noqa: E402
from tests.helpers import ensure_signing_key, write_policy  # noqa: E402
from tests.servers.seaweed import seaweed_server  # noqa: E402


def worktree(rev: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev],
                   check=True, capture_output=True)  # fmt: skip
    return into


def signs(tree: Path) -> bool:
    return (tree / "drkit" / "signing.py").exists()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scale", type=int, default=30)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drkit-ab-"))
    trees = {"A": worktree(args.old, work / "a"), "B": worktree(args.new, work / "b")}
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        with bench_cluster(WorkloadSpec(scale=args.scale), DEFAULT_CACHE, print) as cluster, \
                seaweed_server() as s3:  # fmt: skip
            client = s3.client(read_timeout=300)
            pg = cluster.server
            source = {"kind": "postgres", "name": "db", "database": DATABASE, "host": pg.host,
                      "port": pg.port, "user": pg.user}  # fmt: skip
            for r in range(args.runs):
                order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
                for who in order:
                    tree = trees[who]
                    env = {k: v for k, v in os.environ.items() if not k.startswith("DRKIT_")}
                    env.update(DRKIT_CONFIG_DIR=str(work / f"config-{who}"),
                               DRKIT_STATE_DIR=str(work / f"state-{who}-{r}"),
                               AWS_ACCESS_KEY_ID=s3.access_key,
                               AWS_SECRET_ACCESS_KEY=s3.secret_key,
                               PYTHONPATH=str(tree))  # fmt: skip
                    signers = [ensure_signing_key(work / f"config-{who}")] if signs(tree) else []
                    targets = {}
                    for name, dedup in (("s3", False), ("s3-dedup", True)):
                        bucket = s3.new_bucket_name(f"ab{who.lower()}{r}{name.replace('-', '')}")
                        client.create_bucket(Bucket=bucket)
                        repo = {"url": f"s3://{bucket}/drkit", "endpoint": s3.endpoint}
                        targets[name] = {**repo, "dedup": dedup}
                    targets["local"] = {"url": (work / f"local-{who}-{r}").as_uri(), "dedup": False}
                    for name, repo in targets.items():
                        policy = write_policy(work / f"{who}-{r}-{name}.toml", "bench", repo,
                                              [recipient], [source], signers=signers)  # fmt: skip
                        if not signers:
                            text = policy.read_text().splitlines()
                            policy.write_text("\n".join(x for x in text if "signers" not in x))
                        cmd = Command.one([sys.executable, "-m", "drkit", "backup", "--policy",
                                           str(policy), "-q"])  # fmt: skip
                        old_cwd = os.getcwd()
                        os.chdir(tree)  # `python -m drkit` imports the tree's drkit
                        try:
                            sample = run(cmd, env=env)
                        finally:
                            os.chdir(old_cwd)
                        results.setdefault((name, who), []).append(
                            (sample.wall_s, sample.main_rss_mib)
                        )
                        print(f"run {r} {who} {name}: {sample.wall_s:.2f}s "
                              f"{sample.main_rss_mib:.0f} MiB", flush=True)  # fmt: skip
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nA = {args.old}, B = {args.new}, {args.runs} runs each, medians")
    for name in ("s3", "s3-dedup", "local"):
        a, b = results[(name, "A")], results[(name, "B")]
        wa, wb = statistics.median(x[0] for x in a), statistics.median(x[0] for x in b)
        ra, rb = statistics.median(x[1] for x in a), statistics.median(x[1] for x in b)
        print(f"{name:<9} wall A {wa:6.2f}s B {wb:6.2f}s B/A {wb / wa:.3f}   "
              f"RSS A {ra:5.1f} B {rb:5.1f} MiB B/A {rb / ra:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
