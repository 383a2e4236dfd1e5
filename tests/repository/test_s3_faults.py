"""S3Store against a faulty S3: the fault proxy (tests/servers/s3faults.py) in front of
the real SeaweedFS. Transient faults are retried to success; the others fail naming the
store, the object and what the server said; nothing partial is left behind."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from drkit.actions.prune import PruneResult, prune
from drkit.errors import RepositoryError
from drkit.pipeline import chunked
from drkit.repository.chunks import chunk_key
from drkit.repository.layout import Repository, manifest_key, snapshot_prefix
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord, snapshot_time
from drkit.repository.s3 import S3Store
from drkit.repository.store import Written
from drkit.retention import Policy
from tests.clock import VirtualClock
from tests.helpers import trust_for
from tests.repository.conftest import make_s3_store
from tests.servers.s3faults import Fault, S3FaultProxy, fault_proxy
from tests.servers.seaweed import SeaweedServer
from tests.test_prune import HOST, committed, sid

MiB = 1 << 20


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[S3FaultProxy]:
    with fault_proxy(seaweed) as p:
        yield p


@pytest.fixture
def store(seaweed: SeaweedServer, proxy: S3FaultProxy) -> Iterator[S3Store]:
    """A store on a fresh bucket, reached through the proxy."""
    direct = make_s3_store(seaweed)
    options = dataclasses.replace(direct.options, endpoint=proxy.endpoint)
    s = S3Store(direct.bucket, direct.prefix, options)
    s.clock = VirtualClock()  # retries wait on it: no test sleeps for its backoff
    yield s
    s.close()
    direct.close()


def blob(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{seed}".encode()).digest(size)


def uploads(store: S3Store) -> list[str]:
    return [k for k, _, _ in store.list_incomplete_uploads()]


def test_proxy_forwards_byte_exact(store: S3Store, proxy: S3FaultProxy) -> None:
    data = blob(12 * MiB)
    store.put("big", io.BytesIO(data))  # multipart: 3 signed parts through the proxy
    with store.get("big") as f:
        assert f.read() == data
    assert [o.key for o in store.list()] == ["big"]
    assert proxy.requests >= 6 and proxy.injected == []


@pytest.mark.parametrize(
    ("status", "code"), [(500, "InternalError"), (503, "SlowDown"), (503, "ServiceUnavailable")]
)
def test_transient_status_is_retried(
    store: S3Store, proxy: S3FaultProxy, status: int, code: str
) -> None:
    proxy.add(Fault("status", "PUT", status=status, code=code, times=2))
    proxy.add(Fault("status", "GET", r"/small$", status=status, code=code))
    store.put_bytes("small", b"hello")
    assert store.get_bytes("small") == b"hello"
    assert len(proxy.injected) == 3


def test_access_denied_fails_at_once_naming_the_object(store: S3Store, proxy: S3FaultProxy) -> None:
    proxy.add(Fault("status", "PUT", status=403, code="AccessDenied", times=0))
    with pytest.raises(RepositoryError) as err:
        store.put_bytes("denied", b"x")
    assert f"{store.url}/denied: put failed: AccessDenied (HTTP 403)" in str(err.value)
    assert len(proxy.injected) == 1  # not retried
    assert store.stat("denied") is None


def test_persistent_500_gives_up_after_the_attempts(store: S3Store, proxy: S3FaultProxy) -> None:
    proxy.add(Fault("status", "PUT", times=0))
    with pytest.raises(RepositoryError, match=r"/x: put failed: InternalError \(HTTP 500\)"):
        store.put_bytes("x", b"x")
    assert len(proxy.injected) == store.max_attempts
    assert isinstance(store.clock, VirtualClock)
    waits = store.clock.sleeps  # full jitter below 0.5 s * 2^n
    assert len(waits) == store.max_attempts - 1
    assert all(0 <= w <= 0.5 * 2**n for n, w in enumerate(waits))


@pytest.mark.parametrize("action", ["reset_request", "status"])
def test_multipart_part_fault_is_retried(store: S3Store, proxy: S3FaultProxy, action: str) -> None:
    data = blob(12 * MiB, 1)
    proxy.add(Fault(action, "PUT", r"partNumber=2", after=1 * MiB))
    store.put("big", io.BytesIO(data))
    assert store.get_bytes("big") == data
    assert len(proxy.injected) == 1
    assert uploads(store) == []


def test_multipart_part_failing_for_good_aborts_the_upload(
    store: S3Store, proxy: S3FaultProxy
) -> None:
    proxy.add(Fault("reset_request", "PUT", r"partNumber=2", after=1000, times=0))
    with pytest.raises(
        RepositoryError, match=r"/big: upload part 2 of failed: ConnectionResetError"
    ):
        store.put("big", io.BytesIO(blob(12 * MiB, 2)))
    assert store.stat("big") is None
    assert uploads(store) == []


def test_an_upload_that_cannot_be_aborted_is_named(store: S3Store, proxy: S3FaultProxy) -> None:
    proxy.add(Fault("status", "PUT", r"partNumber=2", status=403, code="AccessDenied", times=0))
    proxy.add(Fault("status", "DELETE", r"uploadId=", times=0))
    with pytest.raises(RepositoryError) as err:
        store.put("big", io.BytesIO(blob(12 * MiB, 5)))
    said = str(err.value)
    assert "/big: upload part 2 of failed: AccessDenied" in said
    assert "also: could not abort the multipart upload" in said and "drkit prune" in said
    proxy.clear()
    left = store.list_incomplete_uploads()
    assert [k for k, _, _ in left] == ["big"]
    store.abort_upload("big", left[0][1])  # what prune does after the grace period
    assert uploads(store) == []


@pytest.mark.parametrize("action", ["reset_response", "short_body"])
def test_broken_small_answer_is_retried(store: S3Store, proxy: S3FaultProxy, action: str) -> None:
    store.put_bytes("small", blob(4000))
    proxy.add(Fault(action, "GET", r"/small$", after=100))
    assert store.get_bytes("small") == blob(4000)
    assert len(proxy.injected) == 1


@pytest.mark.parametrize("action", ["reset_response", "short_body"])
def test_broken_streamed_answer_resumes(store: S3Store, proxy: S3FaultProxy, action: str) -> None:
    data = blob(6 * MiB, 3)
    store.put("big", io.BytesIO(data))
    proxy.add(Fault(action, "GET", r"/big$", after=2 * MiB + 17))
    with store.get("big") as f:
        assert f.read() == data
    assert len(proxy.injected) == 1


def test_listing_that_omits_a_key_once(store: S3Store, proxy: S3FaultProxy) -> None:
    for name in ("a", "b", "c"):
        store.put_bytes(name, b"x")
    proxy.add(Fault("omit_key", "GET", r"list-type=2", key="/b"))
    assert [o.key for o in store.list()] == ["a", "c"]
    assert [o.key for o in store.list()] == ["a", "b", "c"]


def test_server_ignoring_conditions_is_found_out(store: S3Store, proxy: S3FaultProxy) -> None:
    proxy.add(Fault("ignore_conditions", "PUT", times=0))
    assert store.put_bytes_if("lock", b"one", tag=None) is Written.UNCHECKED
    assert proxy.injected, "the proxy dropped no header"


def test_conditions_checked_without_the_fault(store: S3Store) -> None:
    assert store.put_bytes_if("lock", b"one", tag=None) is Written.YES
    assert store.put_bytes_if("lock", b"two", tag=None) is Written.REFUSED


def test_latency_is_only_slow(store: S3Store, proxy: S3FaultProxy) -> None:
    proxy.add(Fault("delay", "PUT", seconds=0.5))
    store.put_bytes("slow", b"x")
    assert store.get_bytes("slow") == b"x"


def test_stall_beyond_the_read_timeout_is_retried(store: S3Store, proxy: S3FaultProxy) -> None:
    s = S3Store(store.bucket, store.prefix, store.options)
    s.read_timeout = 1
    try:
        proxy.add(Fault("stall", "PUT", seconds=30))
        started = time.monotonic()
        s.put_bytes("stalled", b"x")
        assert time.monotonic() - started < 10  # the client gave up on the stall and retried
        assert s.get_bytes("stalled") == b"x"
        assert len(proxy.injected) == 1
    finally:
        s.close()


def test_stalled_body_is_resumed(store: S3Store, proxy: S3FaultProxy) -> None:
    data = blob(3 * MiB, 4)
    store.put("big", io.BytesIO(data))
    s = S3Store(store.bucket, store.prefix, store.options)
    s.read_timeout = 1
    try:
        proxy.add(Fault("stall_body", "GET", r"/big$", after=MiB, seconds=30))
        started = time.monotonic()
        with s.get("big") as f:
            assert f.read() == data
        assert time.monotonic() - started < 10
        assert len(proxy.injected) == 1
    finally:
        s.close()


def test_garbled_listing_fails_naming_the_server(store: S3Store, proxy: S3FaultProxy) -> None:
    store.put_bytes("a", b"x")
    proxy.add(Fault("garble", "GET", r"list-type=2", after=120))
    with pytest.raises(RepositoryError, match=r"list failed: http://127\.0\.0\.1:\d+: .*not XML"):
        list(store.list())
    assert [o.key for o in store.list()] == ["a"]


def test_delete_whose_answer_is_lost_is_retried(store: S3Store, proxy: S3FaultProxy) -> None:
    store.put_bytes("gone", b"x")
    proxy.add(Fault("lose_answer", "DELETE", r"/gone$"))
    store.delete("gone")  # the retry finds it already deleted: not an error
    assert store.stat("gone") is None
    assert [i.detail for i in proxy.injected] == ["HTTP 204 (0 body bytes) not sent"]


# -- prune and chunk GC through the proxy (regressions found by the fault campaign,
# tests/faults/test_s3_prune_campaign.py): snapshots s1 < s2 < s3, keep_last = 2, each
# with a chunk index naming a shared chunk and one of its own.

SNAP_LIST = r"list-type=2&prefix=repo%2Fsub%2Fvultr%2Fsnapshots%2F&"


def write_chunked(repo: Repository, snapshot: str, names: list[str]) -> list[str]:
    """A committed snapshot whose artifact is a chunk index naming chunks ``names``
    (written too, a few bytes each); returns their keys."""
    rset = "ab" * 8
    ids = [hashlib.sha256(n.encode()).digest() for n in names]
    keys = [chunk_key(HOST, rset, i) for i in ids]
    for key in keys:
        repo.store.put_bytes(key, b"chunk")
    tree = hashlib.sha256(b"".join(ids)).hexdigest()
    lines = [f"drkit-chunk-index 1 {chunked.FORMAT} {rset}", *(f"{i.hex()} 5" for i in ids)]
    index = ("\n".join([*lines, f"end {5 * len(ids)} {tree}"]) + "\n").encode()
    repo.store.put_bytes(snapshot_prefix(HOST, snapshot) + "db/dump", index)
    record = ArtifactRecord(
        "db",
        "dump",
        "db/dump",
        chunked.FORMAT,
        5 * len(ids),
        tree,
        len(index),
        hashlib.sha256(index).hexdigest(),
    )
    started = snapshot_time(snapshot).isoformat()
    manifest = Manifest(
        host=HOST,
        snapshot=snapshot,
        started=started,
        finished=started,
        drkit_version="test",
        policy_sha256="0" * 64,
        recipients=[],
        sources=[SourceRecord("db", "command", [record], 0.1)],
        facts=None,
        status="complete",
    )
    repo.write_manifest(manifest)
    return keys


@pytest.fixture
def chunked_repo(store: S3Store) -> tuple[Repository, list[str], dict[str, list[str]]]:
    repo = Repository(store, trust_for())
    snaps = [sid(3), sid(2), sid(1)]
    chunks = {s: write_chunked(repo, s, ["shared", s]) for s in snaps}
    return repo, snaps, chunks


def denied(method: str, key: str) -> Fault:
    """Every ``method`` request of ``key`` answered 403 AccessDenied."""
    return Fault("status", method, f"/{re.escape(key)}$", status=403, code="AccessDenied", times=0)


def prune_later(repo: Repository) -> PruneResult:
    """prune with keep_last = 2, two days on: everything is past the grace period."""
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    return prune(repo, HOST, Policy(keep_last=2), now=later, dry_run=False)


def chunk_keys(store: S3Store) -> set[str]:
    return {o.key for o in store.list(f"{HOST}/chunks/")}


@pytest.mark.parametrize("skip", [0, 1], ids=["first-listing", "read-host-listing"])
def test_prune_keeps_a_snapshot_whose_manifest_a_listing_omits(
    store: S3Store, proxy: S3FaultProxy, chunked_repo: Any, skip: int
) -> None:
    # Before: omitted from the first listing, the kept s3 was removed as an incomplete
    # snapshot; omitted from read_host's, it was left out of the chunk GC's references.
    repo, (s1, s2, s3), chunks = chunked_repo
    proxy.add(Fault("omit_key", "GET", SNAP_LIST, key=f"{s3}/manifest.json", skip=skip))
    result = prune_later(repo)
    assert [i.detail for i in proxy.injected] == [f"left out repo/sub/{manifest_key(HOST, s3)}"]
    assert result.ok, result.errors
    assert result.removed == [s1] and result.incomplete_removed == []
    assert committed(repo) == [s2, s3]
    assert chunk_keys(store) == set(chunks[s2]) | set(chunks[s3])


def test_prune_keeps_the_chunks_of_a_snapshot_whose_manifest_reads_absent_once(
    store: S3Store, proxy: S3FaultProxy, chunked_repo: Any
) -> None:
    # Before: read_host dropped s3 as "pruned since listed" and its own chunk was collected.
    repo, (s1, s2, s3), chunks = chunked_repo
    proxy.add(Fault("status", "GET", f"/{s3}/manifest\\.json$", status=404, code="NoSuchKey"))
    result = prune_later(repo)
    assert len(proxy.injected) == 1
    assert result.ok, result.errors
    assert result.removed == [s1]
    assert chunk_keys(store) == set(chunks[s2]) | set(chunks[s3])


def test_prune_keeps_the_chunks_of_a_snapshot_it_could_not_remove(
    store: S3Store, proxy: S3FaultProxy, chunked_repo: Any
) -> None:
    # Before: s1 stayed listed (its manifest DELETE refused) but lost its own chunk.
    repo, (s1, s2, s3), chunks = chunked_repo
    proxy.add(denied("DELETE", manifest_key(HOST, s1)))
    result = prune_later(repo)
    assert result.removed == []
    assert [e for e in result.errors if f"could not remove snapshot {s1}" in e], result.errors
    assert committed(repo) == [s1, s2, s3]
    assert chunk_keys(store) == {k for s in (s1, s2, s3) for k in chunks[s]}


def test_an_unreadable_manifest_stops_chunk_collection_naming_it(
    store: S3Store, proxy: S3FaultProxy, chunked_repo: Any
) -> None:
    repo, (s1, s2, s3), chunks = chunked_repo
    proxy.add(denied("GET", manifest_key(HOST, s3)))
    result = prune_later(repo)
    assert result.removed == []  # s3 is left out of retention: s1 and s2 are the newest two
    (error,) = result.errors
    assert error.startswith(f"host {HOST}: chunks not collected: snapshot {s3} is unreadable")
    assert f"{store.url}/{manifest_key(HOST, s3)}: read failed: AccessDenied" in error
    assert chunk_keys(store) == {k for s in (s1, s2, s3) for k in chunks[s]}


def test_a_failed_listing_names_the_host(
    store: S3Store, proxy: S3FaultProxy, chunked_repo: Any
) -> None:
    repo, _snaps, _chunks = chunked_repo
    store.max_attempts = 2
    store.close()  # the client is made anew with the attempts above
    proxy.add(Fault("status", "GET", SNAP_LIST, status=503, code="SlowDown", times=0))
    with pytest.raises(RepositoryError) as err:
        prune_later(repo)
    assert str(err.value).startswith(
        f"host {HOST}: {store.url}/{HOST}/snapshots/: list failed: SlowDown (HTTP 503)"
    )
