"""Object Lock capability on real SeaweedFS: `init` and `backup` refuse a bucket that cannot
hold the retention a policy asks for (before writing anything), `init` creates a missing
bucket with Object Lock, and a backup into such a bucket leaves every object retained."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from drkit.actions import repository_access
from drkit.actions.fleet import backup_fleet
from drkit.policy.loader import load_policy
from drkit.repository.s3 import S3Store
from tests.conftest import Keys
from tests.helpers import drkit, write_policy
from tests.servers.seaweed import SeaweedServer

HOST = "vultr"
PREFIX = "drkit"


def s3_policy(
    tmp_path: Path,
    seaweed: SeaweedServer,
    keys: Keys,
    bucket: str,
    host: str = HOST,
    days: int = 1,
    dedup: bool = False,
    command: tuple[str, ...] = (),
) -> Path:
    repo = {
        "url": f"s3://{bucket}/{PREFIX}",
        "endpoint": seaweed.endpoint,
        "region": seaweed.region,
        "immutable_days": days,
        "dedup": dedup,
    }
    argv = list(command) or ["echo", f"rows of {host}"]
    source = {"kind": "command", "name": "db", "command": argv}
    return write_policy(tmp_path / f"{host}.toml", host, repo, [keys.recipient], [source])


def creds(seaweed: SeaweedServer) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}


def objects(client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_init_and_backup_refuse_a_bucket_without_object_lock(
    tmp_path: Path, seaweed: SeaweedServer, keys: Keys
) -> None:
    client = seaweed.client()
    bucket = seaweed.new_bucket_name("nolock")
    client.create_bucket(Bucket=bucket)  # versioning and Object Lock off
    policy = s3_policy(tmp_path, seaweed, keys, bucket)
    env = creds(seaweed)

    init = drkit("init", "--policy", str(policy), env=env)
    assert init.returncode == 1, init.output
    assert (
        f"host {HOST}: bucket {bucket} (s3://{bucket}/{PREFIX}) does not have S3 Object Lock"
        in (init.stderr)
    )
    assert "immutable_days = 1" in init.stderr
    assert "create a new bucket with Object Lock enabled" in init.stderr

    for args in (("--policy", str(policy)), ("--policy", str(policy), "--json")):
        res = drkit("backup", *args, env=env)
        assert res.returncode == 1, res.output
        assert f"host {HOST}: bucket {bucket}" in res.stderr
        assert "does not have S3 Object Lock enabled" in res.stderr
        assert "nothing was written" in res.stderr
        assert seaweed.secret_key not in res.output and seaweed.access_key not in res.output
    # Fail closed: no lock object, no format marker, no artifact, no open upload.
    assert objects(client, bucket) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_init_creates_the_bucket_with_object_lock_and_backups_are_retained(
    tmp_path: Path, seaweed: SeaweedServer, keys: Keys
) -> None:
    client = seaweed.client()
    bucket = seaweed.new_bucket_name("lock")
    policy = s3_policy(tmp_path, seaweed, keys, bucket, days=2)
    env = creds(seaweed)

    init = drkit("init", "--policy", str(policy), "--json", env=env)
    assert init.returncode == 0, init.output
    out = json.loads(init.stdout)
    assert out["bucket_created"] is True and out["repository"] == f"s3://{bucket}/{PREFIX}"
    assert out["sample_policy"] is None
    assert out["dedup"] is False  # as this policy says (whole artifacts under Object Lock)
    conf = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert conf["ObjectLockEnabled"] == "Enabled"
    again = drkit("init", "--policy", str(policy), "--json", env=env)  # idempotent
    assert again.returncode == 0 and json.loads(again.stdout)["bucket_created"] is False

    res = drkit("backup", "--policy", str(policy), "--json", env=env)
    assert res.returncode == 0, res.output
    snapshot = json.loads(res.stdout)["results"][0]["snapshot"]
    keys_written = [k for k in objects(client, bucket) if f"/snapshots/{snapshot}/" in k]
    assert len(keys_written) == 3  # artifact, facts, manifest
    now = dt.datetime.now(dt.UTC)
    for key in keys_written:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE", key
        left = head["ObjectLockRetainUntilDate"] - now
        assert dt.timedelta(days=1, hours=23) < left <= dt.timedelta(days=2), key
    restored = drkit(
        "verify", "--policy", str(policy), "--identity", str(keys.identity_file), env=env
    )
    assert restored.returncode == 0, restored.output
    # The host's lock object is rewritten by heartbeats and deleted at the end of the
    # run: none of its versions may be held by retention (they would pile up, locked).
    listing = client.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}/")
    lock_versions = [v for v in listing.get("Versions", []) if "/locks/" in v["Key"]]
    assert lock_versions, listing
    for v in lock_versions:
        head = client.head_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
        assert "ObjectLockMode" not in head, v["Key"]


def test_a_fleet_run_checks_each_bucket_once_and_refuses_every_host(
    tmp_path: Path, seaweed: SeaweedServer, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, so the calls to the server can be counted (the real method, wrapped)."""
    for name, value in creds(seaweed).items():
        monkeypatch.setenv(name, value)
    client = seaweed.client()
    bucket = seaweed.new_bucket_name("fleet")
    client.create_bucket(Bucket=bucket)
    hosts = ["vultr", "hetzner", "e2i"]
    policies = [load_policy(s3_policy(tmp_path, seaweed, keys, bucket, host=h)) for h in hosts]
    asked: list[str] = []
    real = S3Store.object_lock_enabled

    def counted(self: S3Store) -> bool:
        asked.append(self.url)
        return real(self)

    monkeypatch.setattr(S3Store, "object_lock_enabled", counted)
    monkeypatch.setattr(repository_access, "_object_lock_checked", {})
    results = backup_fleet(policies, jobs=3, catalog=None, log=lambda _m: None)
    assert [r.status for r in results] == ["failed"] * 3
    for host, r in zip(hosts, results, strict=True):
        assert r.error is not None and r.error.startswith(f"host {host}: bucket {bucket} ")
    assert asked == [f"s3://{bucket}/{PREFIX}"]  # once for the whole run
    assert objects(client, bucket) == []


def test_dedup_packs_are_held_as_long_as_the_newest_snapshot_that_uses_them(
    tmp_path: Path, seaweed: SeaweedServer, keys: Keys
) -> None:
    """Dedup with Object Lock through the CLI: the second backup reuses the first one's
    packs, and each of them is then held at least as long as that second snapshot."""
    client = seaweed.client()
    bucket = seaweed.new_bucket_name("lockdedup")
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3 << 20))
    policy = s3_policy(
        tmp_path, seaweed, keys, bucket, days=2, dedup=True, command=("cat", str(data))
    )
    env = creds(seaweed)
    assert drkit("policy", "validate", str(policy), env=env).returncode == 0
    assert drkit("init", "--policy", str(policy), env=env).returncode == 0
    first = drkit("backup", "--policy", str(policy), env=env)
    assert first.returncode == 0, first.output
    packs = sorted(k for k in objects(client, bucket) if "/packs/" in k)
    assert packs, objects(client, bucket)
    held = {k: client.head_object(Bucket=bucket, Key=k)["ObjectLockRetainUntilDate"] for k in packs}

    time.sleep(2)  # the second snapshot's retention ends later than the first's
    second = drkit("backup", "--policy", str(policy), "--json", env=env)
    assert second.returncode == 0, second.output
    snapshot = json.loads(second.stdout)["results"][0]["snapshot"]
    manifest = next(
        k for k in objects(client, bucket) if f"/snapshots/{snapshot}/" in k and "manifest" in k
    )
    until = client.head_object(Bucket=bucket, Key=manifest)["ObjectLockRetainUntilDate"]
    assert sorted(k for k in objects(client, bucket) if "/packs/" in k) == packs  # reused
    for key in packs:
        now_held = client.head_object(Bucket=bucket, Key=key)["ObjectLockRetainUntilDate"]
        assert now_held >= until, (key, now_held, until)
        assert now_held > held[key], key
    res = drkit(
        "verify",
        "--policy",
        str(policy),
        "--all-snapshots",
        "--identity",
        str(keys.identity_file),
        env=env,
    )
    assert res.returncode == 0, res.output
