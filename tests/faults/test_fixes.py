"""Regression tests for what the crash and resource scenarios found (#19 items 2-3),
quick enough for `make test`; each fails on the code before its fix.

- A local repository write killed mid-file left its temp file (``.drkit-tmp-*``) for
  ever: listings skip it, prune never removed it, and the snapshot directory holding
  it stayed. Prune now removes those past the grace period and says so.
- A full disk under a local repository, or under an S3 backup's part spool, failed
  the backup with ``internal error: OSError(28, ...)``, naming neither the object nor
  the filesystem; now the object, the directory and what to do.
- SIGTERM ended drkit by the default action: its lock, its open multipart upload and
  its partial snapshot stayed. It now stops as Ctrl-C does, cleaning up; exit 143.
- A source's ``timeout`` error and a failed backup said nothing of what to do next.
- A snapshot dated in the future (its machine's clock ahead) was refused without a
  word on what to check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from tests.conftest import Keys
from tests.faults.campaign import HOST, LATER
from tests.faults.crash import Started, fill, small_fs
from tests.helpers import drkit, signed_manifest, write_policy


def _policy(tmp_path: Path, keys: Keys, source: dict[str, object], repo: Path) -> Path:
    return write_policy(
        tmp_path / f"{HOST}.toml", HOST, {"url": repo.as_uri()}, [keys.recipient], [source]
    )


def _cat(data: Path) -> dict[str, object]:
    return {"kind": "command", "name": "db", "command": ["cat", str(data)]}


def test_prune_removes_a_killed_writes_temp_file(tmp_path: Path, keys: Keys) -> None:
    repo = tmp_path / "repo"
    data = tmp_path / "data"
    data.write_bytes(b"x" * 1000)
    policy = _policy(tmp_path, keys, _cat(data), repo)
    assert drkit("backup", "--policy", str(policy)).returncode == 0
    # What a backup killed mid-write leaves: a snapshot directory holding a temp file.
    left = repo / HOST / "snapshots" / "20261207T000000.000Z-dead00" / "db"
    left.mkdir(parents=True)
    (left / ".drkit-tmp-abc123").write_bytes(b"half an artifact")
    res = drkit("prune", "--policy", str(policy), "--json", env={"DRKIT_NOW": LATER})
    assert res.returncode == 0, res.output
    [report] = json.loads(res.stdout)["results"]
    assert report["uploads_aborted"] == [
        f"{HOST}/snapshots/20261207T000000.000Z-dead00/db/.drkit-tmp-abc123 "
        "(upload unfinished write)"
    ], report
    assert not (repo / HOST / "snapshots" / "20261207T000000.000Z-dead00").exists()
    assert not list(repo.rglob(".drkit-tmp-*"))


def test_a_full_repository_disk_is_named(tmp_path: Path, keys: Keys) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(3 << 20))
    with small_fs(1024) as fs:
        policy = _policy(
            tmp_path,
            keys,
            {"kind": "command", "name": "db", "command": ["cat", str(data)]},
            fs / "repo",
        )
        res = drkit("backup", "--policy", str(policy))
        assert res.returncode == 1, res.output
        [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert line.startswith(f"error: host {HOST}: source db: {(fs / 'repo').as_uri()}/"), line
        assert "No space left on device" in line and "free space there" in line, line
        assert "internal error" not in res.output and "Traceback" not in res.output
        assert not list((fs / "repo").rglob(".drkit-tmp-*"))


def test_sigterm_stops_a_backup_cleanly(tmp_path: Path, keys: Keys) -> None:
    repo = tmp_path / "repo"
    started = tmp_path / "started"
    policy = _policy(
        tmp_path,
        keys,
        {
            "kind": "command",
            "name": "db",
            "command": ["sh", "-c", f"echo begin; touch {started}; exec sleep 30"],
        },
        repo,
    )
    run = Started.run(["backup", "--policy", str(policy)], {})
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert run.proc.poll() is None and time.monotonic() < deadline, run.result().output
            time.sleep(0.02)
        assert list((repo / HOST / "locks").iterdir()), "no lock while running"
        os.kill(run.proc.pid, signal.SIGTERM)
        res = run.result(timeout=30)
    finally:
        run.reap()
    assert res.returncode == 143, res.output
    assert "stopped by SIGTERM" in res.stderr and "Traceback" not in res.output, res.output
    assert not list((repo / HOST / "locks").glob("*")), "the lock was left"
    assert not list((repo / HOST / "snapshots").glob("*")), "a partial snapshot was left"
    assert not list(repo.rglob(".drkit-tmp-*"))


def test_a_source_timeout_says_what_to_do(tmp_path: Path, keys: Keys) -> None:
    policy = _policy(
        tmp_path,
        keys,
        {
            "kind": "command",
            "name": "db",
            "command": ["sleep", "30"],
            "timeout": "1s",
        },
        tmp_path / "repo",
    )
    res = drkit("backup", "--policy", str(policy))
    assert res.returncode == 1, res.output
    assert "timed out after 1s" in res.stderr and "raise the source's `timeout`" in res.stderr
    assert "run the backup again once the cause is fixed" in res.stderr, res.stderr


def test_a_future_snapshot_is_refused_naming_the_clocks(tmp_path: Path, keys: Keys) -> None:
    repo = tmp_path / "repo"
    data = tmp_path / "data"
    data.write_bytes(b"x" * 1000)
    policy = _policy(tmp_path, keys, _cat(data), repo)
    res = drkit("backup", "--policy", str(policy), "--json")
    real = json.loads(res.stdout)["results"][0]["snapshot"]
    # The same snapshot as a machine whose clock is a day ahead would have named it.
    ahead = "20990101T000000.000Z-f0f0f0"
    snaps = repo / HOST / "snapshots"
    shutil.copytree(snaps / real, snaps / ahead)
    manifest = json.loads((snaps / real / "manifest.json").read_text())
    manifest["snapshot"] = ahead
    (snaps / ahead / "manifest.json").write_text(signed_manifest(manifest))
    res = drkit("prune", "--policy", str(policy), "--json")
    # Prune fails closed on an untrusted snapshot (it cannot know its chunks), naming it
    # and the clocks; the rest of its work is done.
    assert res.returncode == 1, res.output
    [report] = json.loads(res.stdout)["results"]
    assert [s["snapshot"] for s in report["skipped"]] == [ahead], report
    assert "check the clocks" in report["skipped"][0]["reason"], report
    assert "check the clocks" in res.stderr and ahead in res.stderr, res.stderr
    listed = drkit("snapshots", "--policy", str(policy), "--json")
    assert [u["snapshot"] for u in json.loads(listed.stdout)["untrusted"]] == [ahead]


def test_a_full_spool_is_named(tmp_path: Path, keys: Keys, seaweed) -> None:  # type: ignore[no-untyped-def]
    """An S3 backup whose TMPDIR is full names the object, the spool and what to do."""
    bucket = seaweed.new_bucket_name("flt")
    seaweed.client().create_bucket(Bucket=bucket)
    data = tmp_path / "data"
    data.write_bytes(os.urandom(6 << 20))
    policy = write_policy(
        tmp_path / f"{HOST}.toml",
        HOST,
        {
            "url": f"s3://{bucket}/drkit",
            "endpoint": seaweed.endpoint,
            "region": seaweed.region,
            "dedup": False,
        },
        [keys.recipient],
        [{"kind": "command", "name": "db", "command": ["cat", str(data)]}],
    )
    # Whole artifacts in 5 MiB parts: 6 MiB is a multipart upload whose part spools.
    env = {
        "AWS_ACCESS_KEY_ID": seaweed.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
        "DRKIT_PART_SIZE": str(5 << 20),
    }
    with small_fs(1024) as fs:
        fill(fs, leave_kib=256)
        res = drkit("backup", "--policy", str(policy), env={**env, "TMPDIR": str(fs)})
    assert res.returncode == 1, res.output
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: host {HOST}: source db: s3://{bucket}/drkit/"), line
    assert f"cannot spool an upload part in {fs} (TMPDIR): No space left" in line, line
    assert "set TMPDIR to a larger filesystem" in line, line
    assert not seaweed.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
