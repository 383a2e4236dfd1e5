"""prune: retention on real repositories (local, and SeaweedFS with Object Lock).

Snapshots are written with the real layout and manifests (``Repository`` and
``Manifest``), with ids chosen in the past so the history spans days; one
test uses snapshots made by the real ``backup`` action.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from drkit.actions.backup import backup
from drkit.actions.prune import prune
from drkit.actions.verify import verify_snapshot
from drkit.policy.models import Policy as PolicyModel
from drkit.policy.models import Retention
from drkit.repository.factory import StoreOptions
from drkit.repository.layout import Repository, manifest_key, snapshot_prefix
from drkit.repository.local import LocalStore
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord, snapshot_time
from drkit.repository.s3 import S3Store
from drkit.repository.store import Store
from drkit.retention import Policy
from tests.conftest import Keys
from tests.helpers import local_signer, trust_for
from tests.servers.seaweed import SeaweedServer

HOST = "vultr"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def sid(days_ago: float, n: int = 0) -> str:
    t = NOW - dt.timedelta(days=days_ago)
    return t.strftime("%Y%m%dT%H%M%SZ") + f"-{n:06x}"


def write_snapshot(
    repo: Repository,
    snapshot: str,
    sources: tuple[str, ...] = ("db",),
    *,
    status: str = "complete",
    commit: bool = True,
    host: str = HOST,
) -> Manifest:
    """Objects for each source, then (if ``commit``) the manifest: the real layout."""
    records = []
    for name in sources:
        data = f"{snapshot}/{name}".encode() * 100
        key = f"{name}/dump"
        repo.store.put_bytes(snapshot_prefix(host, snapshot) + key, data)
        digest = hashlib.sha256(data).hexdigest()
        artifact = ArtifactRecord(
            name, "dump", key, "zstd+age/v1", len(data), digest, len(data), digest
        )
        records.append(SourceRecord(name, "command", [artifact], 0.1))
    started = snapshot_time(snapshot).isoformat()
    manifest = Manifest(
        host=host,
        snapshot=snapshot,
        started=started,
        finished=started,
        drkit_version="test",
        policy_sha256="0" * 64,
        recipients=[],
        sources=records,
        facts=None,
        status=status,
    )
    if commit:
        repo.write_manifest(manifest)
    return manifest


def committed(repo: Repository, host: str = HOST) -> list[str]:
    return [r.snapshot for r in repo.snapshots(host) if r.committed]


def all_dirs(repo: Repository, host: str = HOST) -> list[str]:
    return [r.snapshot for r in repo.snapshots(host)]


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(LocalStore(tmp_path / "repo"), trust_for())


def reasons_of(result: Any) -> dict[str, list[str]]:
    return {d.snapshot.id: d.reasons for d in result.decisions}


# -- local repository ---------------------------------------------------------------


def test_prune_removes_what_retention_does_not_keep(repo: Repository) -> None:
    ids = [sid(d) for d in range(10, 0, -1)]  # oldest first
    manifests = [write_snapshot(repo, s) for s in ids]
    result = prune(repo, HOST, Policy(keep_last=3), now=NOW, dry_run=False)
    assert result.ok
    assert sorted(result.removed) == ids[:7]
    assert committed(repo) == ids[7:]
    assert all_dirs(repo) == ids[7:]  # data gone too, not just the manifests
    assert result.freed_bytes == sum(m.stored_bytes for m in manifests[:7])
    assert reasons_of(result)[ids[-1]] == ["last 1 of 3", "newest complete snapshot"]
    assert reasons_of(result)[ids[0]] == ["matched no rule (keep_last=3)"]
    for s in ids[7:]:  # what is kept is intact
        m = repo.manifest(HOST, s)
        assert verify_snapshot(repo, m, None).ok


def test_dry_run_reports_the_same_and_changes_nothing(repo: Repository) -> None:
    ids = [sid(d) for d in range(6, 0, -1)]
    for s in ids:
        write_snapshot(repo, s)
    before = sorted(o.key for o in repo.store.list())
    dry = prune(repo, HOST, Policy(keep_daily=2), now=NOW, dry_run=True)
    assert sorted(o.key for o in repo.store.list()) == before
    assert sorted(dry.removed) == ids[:4]
    real = prune(repo, HOST, Policy(keep_daily=2), now=NOW, dry_run=False)
    assert real.removed == dry.removed
    assert committed(repo) == ids[4:]


def test_accepts_the_policy_model(repo: Repository) -> None:
    for d in (3, 2, 1):
        write_snapshot(repo, sid(d))
    result = prune(repo, HOST, Retention(keep_within="36h"), now=NOW, dry_run=False)
    assert committed(repo) == [sid(2), sid(1)]
    assert result.policy == "keep_within=36h"


def test_never_removes_the_newest_complete_or_the_newest_drilled(repo: Repository) -> None:
    proven = sid(5)
    write_snapshot(repo, sid(6))
    write_snapshot(repo, proven)
    write_snapshot(repo, sid(3))  # the newest complete one
    write_snapshot(repo, sid(1), status="partial")  # newest, but a source failed
    result = prune(repo, HOST, Policy(keep_last=1), now=NOW, dry_run=False, drilled={proven})
    assert committed(repo) == [proven, sid(3), sid(1)]
    reasons = reasons_of(result)
    assert reasons[sid(3)] == ["newest complete snapshot"]
    assert reasons[proven] == ["newest snapshot that passed a drill"]
    assert result.removed == [sid(6)]


def test_empty_policy_keeps_everything(repo: Repository) -> None:
    for d in (3, 2, 1):
        write_snapshot(repo, sid(d))
    result = prune(repo, HOST, Policy(), now=NOW, dry_run=False)
    assert result.removed == [] and len(committed(repo)) == 3


def test_incomplete_snapshots_are_removed_after_the_grace_period(repo: Repository) -> None:
    write_snapshot(repo, sid(1))
    stale = sid(3, 1)
    write_snapshot(repo, stale, commit=False)  # a run killed three days ago
    fresh = sid(0.01, 2)
    write_snapshot(repo, fresh, commit=False)  # a run still going
    long_running = sid(2, 3)  # started two days ago, still writing a minute ago
    write_snapshot(repo, long_running, commit=False)
    old = (NOW - dt.timedelta(days=3)).timestamp()
    root = Path(str(getattr(repo.store, "root")))  # noqa: B009
    for path in (root / HOST / "snapshots" / stale).rglob("*"):
        os.utime(path, (old, old))

    result = prune(
        repo, HOST, Policy(keep_last=5), now=NOW, dry_run=False, grace=dt.timedelta(hours=24)
    )
    assert result.incomplete_removed == [stale]
    assert {s for s, _ in result.incomplete_kept} == {fresh, long_running}
    assert all("younger than the grace period 1d" in why for _, why in result.incomplete_kept)
    assert all_dirs(repo) == sorted([sid(1), fresh, long_running])


def test_a_source_only_in_older_snapshots_keeps_its_newest(repo: Repository) -> None:
    # Source "files" runs weekly (its own schedule), "db" daily.
    write_snapshot(repo, sid(9), ("db", "files"))
    weekly = sid(8)
    write_snapshot(repo, weekly, ("db", "files"))
    for d in range(7, 0, -1):
        write_snapshot(repo, sid(d), ("db",))
    result = prune(
        repo,
        HOST,
        Policy(keep_last=2),
        now=NOW,
        dry_run=False,
        sources={"db": None, "files": None},
    )
    assert committed(repo) == [weekly, sid(2), sid(1)]
    assert reasons_of(result)[weekly] == ["newest complete snapshot of source files"]


def test_a_source_retention_lengthens_what_is_kept(repo: Repository) -> None:
    for d in range(6, 0, -1):
        write_snapshot(repo, sid(d), ("db", "env"))
    result = prune(
        repo,
        HOST,
        Policy(keep_last=1),
        now=NOW,
        dry_run=False,
        sources={"db": Policy(keep_last=3), "env": None},
    )
    assert committed(repo) == [sid(3), sid(2), sid(1)]
    assert reasons_of(result)[sid(3)] == ["source db: last 3 of 3"]


def test_other_hosts_and_foreign_directories_are_left_alone(repo: Repository) -> None:
    write_snapshot(repo, sid(5), host="hetzner")
    write_snapshot(repo, sid(5))
    write_snapshot(repo, sid(1))
    repo.store.put_bytes(f"{HOST}/snapshots/not-a-snapshot/file", b"x")
    result = prune(repo, HOST, Policy(keep_last=1), now=NOW, dry_run=False, grace=dt.timedelta(0))
    assert committed(repo, "hetzner") == [sid(5)]
    assert result.skipped == [("not-a-snapshot", "not a drkit snapshot id: left alone")]
    assert repo.store.stat(f"{HOST}/snapshots/not-a-snapshot/file") is not None


def test_snapshots_made_by_the_backup_action(repo: Repository, keys: Keys) -> None:
    policy = PolicyModel.model_validate(
        {
            "host": HOST,
            "repository": {"url": "file:///unused"},
            "encryption": {"recipients": [keys.recipient], "signers": [local_signer()]},
            "source": [{"kind": "command", "name": "app", "command": ["printf", "x"]}],
        }
    )
    first = backup(policy, repo).manifest
    # Snapshot ids have one-second resolution: make the second run sort later.
    while dt.datetime.now(dt.UTC).replace(microsecond=0) <= snapshot_time(first.snapshot):
        time.sleep(0.05)
    second = backup(policy, repo).manifest
    keep_one = policy.retention.model_copy(update={"keep_last": 1})
    result = prune(repo, HOST, keep_one, now=dt.datetime.now(dt.UTC), dry_run=False)
    assert result.removed == [first.snapshot]
    assert committed(repo) == [second.snapshot]
    assert repo.store.stat(manifest_key(HOST, first.snapshot)) is None
    assert verify_snapshot(repo, repo.manifest(HOST, second.snapshot), None).ok


# -- S3 with Object Lock (SeaweedFS) ------------------------------------------------------


def s3_store(server: SeaweedServer, bucket: str, lock_days: int) -> S3Store:
    options = StoreOptions(
        endpoint=server.endpoint,
        region=server.region,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        object_lock_days=lock_days,
    )
    return S3Store(bucket, "fleet", options)


def test_prune_respects_object_lock_on_seaweedfs(seaweed: SeaweedServer) -> None:
    bucket = seaweed.new_bucket_name("lock")
    locked_store = s3_store(seaweed, bucket, lock_days=1)
    assert locked_store.ensure_bucket()  # created with Object Lock enabled
    plain_store = s3_store(seaweed, bucket, lock_days=0)  # same bucket, writes without retention
    locked_repo, repo = Repository(locked_store, trust_for()), Repository(plain_store, trust_for())
    try:
        locked_ids = [sid(5), sid(4)]
        for s in locked_ids:
            write_snapshot(locked_repo, s)  # every object under GOVERNANCE retention for 1 day
        plain_ids = [sid(3), sid(2), sid(1)]
        for s in plain_ids:
            write_snapshot(repo, s)
        client = seaweed.client()
        # A dangling multipart upload of a killed run, and one of another host.
        ours = client.create_multipart_upload(
            Bucket=bucket, Key=f"fleet/{HOST}/snapshots/{sid(0.5)}/db/dump"
        )["UploadId"]
        theirs = client.create_multipart_upload(
            Bucket=bucket, Key=f"fleet/hetzner/snapshots/{sid(0.5)}/db/dump"
        )["UploadId"]
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)

        dry = prune(repo, HOST, Policy(keep_last=1), now=later, dry_run=True, grace=dt.timedelta(0))
        assert sorted(dry.removed) == plain_ids[:2]
        assert committed(repo) == locked_ids + plain_ids

        result = prune(
            repo, HOST, Policy(keep_last=1), now=later, dry_run=False, grace=dt.timedelta(0)
        )
        assert result.ok, result.errors
        assert sorted(result.removed) == plain_ids[:2]
        assert committed(repo) == [*locked_ids, plain_ids[-1]]
        reasons = reasons_of(result)
        for s in locked_ids:
            (why,) = reasons[s]
            assert why.startswith("object lock retention until ")
            until = dt.datetime.strptime(why.rsplit(" ", 1)[1], "%Y-%m-%dT%H:%M:%SZ")
            assert until.replace(tzinfo=dt.UTC) > later + dt.timedelta(hours=23)
            # Locked snapshots are whole and readable.
            assert verify_snapshot(repo, repo.manifest(HOST, s), None).ok

        # The server itself refuses to destroy a locked version.
        key = f"fleet/{manifest_key(HOST, locked_ids[0])}"
        version = client.head_object(Bucket=bucket, Key=key)["VersionId"]
        with pytest.raises(ClientError) as refused:
            client.delete_object(Bucket=bucket, Key=key, VersionId=version)
        assert refused.value.response["Error"]["Code"] == "AccessDenied"

        uploads = {
            u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        }
        assert ours not in uploads and theirs in uploads
        assert result.uploads_aborted == [f"{HOST}/snapshots/{sid(0.5)}/db/dump (upload {ours})"]
        client.abort_multipart_upload(
            Bucket=bucket, Key=f"fleet/hetzner/snapshots/{sid(0.5)}/db/dump", UploadId=theirs
        )
        # An upload younger than the grace period may belong to a running backup.
        young_key = f"fleet/{HOST}/snapshots/{sid(0)}/db/dump"
        young = client.create_multipart_upload(Bucket=bucket, Key=young_key)["UploadId"]
        again = prune(repo, HOST, Policy(keep_last=1), now=later, dry_run=False)
        assert again.uploads_aborted == [] and again.removed == []
        uploads = {
            u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        }
        assert young in uploads
        client.abort_multipart_upload(Bucket=bucket, Key=young_key, UploadId=young)
    finally:
        locked_store.close()
        plain_store.close()


def test_prune_on_s3_without_object_lock(seaweed: SeaweedServer) -> None:
    store: Store = s3_store(seaweed, seaweed.new_bucket_name("plain"), lock_days=0)
    assert isinstance(store, S3Store) and store.ensure_bucket()
    repo = Repository(store, trust_for())
    try:
        for d in (3, 2, 1):
            write_snapshot(repo, sid(d))
        result = prune(repo, HOST, Policy(keep_last=1), now=NOW, dry_run=False)
        assert result.ok and sorted(result.removed) == [sid(3), sid(2)]
        assert committed(repo) == [sid(1)]
        assert [o.key for o in store.list(f"{HOST}/snapshots/{sid(3)}/")] == []
    finally:
        store.close()
