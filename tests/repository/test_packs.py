"""Packs (docs/dedup.md) on every store backend: a local directory, SeaweedFS, and
SeaweedFS with Object Lock behind the guard a policy with immutable_days opens.

In-process: the codec writes packs through ``Chunks``; snapshots are committed with
the real layout and signed manifests, so what a later backup may reuse, what
verify reads and what prune keeps are decided as in a run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
import zstandard
from pyfastcdc import FastCDC

from drkit.actions.repack import collect_packs
from drkit.actions.verify import verify_host, verify_snapshot
from drkit.errors import IntegrityError
from drkit.pipeline import chunked
from drkit.pipeline.chunk_index import IndexWriter, WrittenIndex, read_index
from drkit.pipeline.codec import Digests
from drkit.repository.chunks import Chunks, chunk_key, pack_of, recipient_set
from drkit.repository.layout import Repository, object_key
from drkit.repository.local import LocalStore
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord, snapshot_time
from drkit.repository.s3 import S3Store
from drkit.repository.store import Store
from tests.helpers import trust_for
from tests.repository.conftest import make_s3_store
from tests.servers.seaweed import SeaweedServer
from tests.test_prune import sid

HOST = "packhost"
MiB = 1 << 20
ID_KEY = bytes(range(32))


@dataclasses.dataclass
class Keyring:
    identity: Any
    recipients: list[Any]
    rset: str


@pytest.fixture
def ring() -> Keyring:
    identity = pyrage.x25519.Identity.generate()
    public = identity.to_public()
    return Keyring(identity, [public], recipient_set([str(public)]))


def text_like(seed: int, size: int) -> bytes:
    """Rows with repetition (compressible about 3x, as a dump), deterministic."""
    rnd = random.Random(seed)
    words = [f"w{rnd.randrange(10**6)}" for _ in range(4000)]
    out = bytearray()
    while len(out) < size:
        out += f"{len(out)}\t{' '.join(rnd.choices(words, k=10))}\n".encode()
    return bytes(out[:size])


class Counting:
    """Wraps a store's ranged reads and whole reads to count them (the store is real)."""

    def __init__(self, store: Store) -> None:
        self.store, self.ranges, self.gets = store, 0, 0
        self._get_range, self._get = store.get_range, store.get

        def get_range(key: str, start: int, length: int) -> bytes:
            self.ranges += 1
            return self._get_range(key, start, length)

        def get(key: str) -> Any:
            self.gets += "/packs/" in key
            return self._get(key)

        store.get_range = get_range  # type: ignore[method-assign]
        store.get = get  # type: ignore[method-assign]


def back_up(
    repo: Repository, ring: Keyring, data: bytes, snapshot: str, *, target: int = 4 * MiB
) -> tuple[Manifest, chunked.Encoded]:
    """One chunked artifact stored and committed as a run stores it."""
    chunks = Chunks(repo.store, HOST, ring.rset)
    chunks.pack_target = target
    done = chunked.encode(io.BytesIO(data), ring.recipients, chunks, id_key=ID_KEY)
    return commit(repo, ring, snapshot, done.index, done.new_bytes), done


def commit(
    repo: Repository, ring: Keyring, snapshot: str, index: WrittenIndex, new_bytes: int = 0
) -> Manifest:
    """Store ``index`` as the artifact db/dump of ``snapshot`` and commit it (signed)."""
    with index.file:
        repo.store.put(object_key(HOST, snapshot, "db/dump"), index.file)
    record = ArtifactRecord(
        "db",
        "dump",
        "db/dump",
        chunked.FORMAT,
        index.plain_size,
        index.tree_digest,
        index.stored_size,
        index.stored_sha256,
        new_bytes=new_bytes,
    )
    started = snapshot_time(snapshot).isoformat()
    manifest = Manifest(
        host=HOST,
        snapshot=snapshot,
        started=started,
        finished=started,
        drkit_version="test",
        policy_sha256="0" * 64,
        recipients=[str(ring.recipients[0])],
        sources=[SourceRecord("db", "command", [record], 0.1)],
        facts=None,
        status="complete",
        extra={chunked.ID_KEY_EXTRA: chunked.seal_id_key(ID_KEY, ring.recipients)},
    )
    repo.write_manifest(manifest)
    return manifest


def restore(repo: Repository, ring: Keyring, manifest: Manifest) -> bytes:
    (record,) = manifest.artifacts
    out = io.BytesIO()
    with repo.store.get(object_key(HOST, manifest.snapshot, record.key)) as stored:
        chunked.decode(
            stored,
            lambda rset: Chunks(repo.store, HOST, rset),
            [ring.identity],
            lambda s: out.write(s.read()),
            expected=Digests(
                record.plain_size, record.plain_sha256, record.stored_size, record.stored_sha256
            ),
            label="test",
            id_key=ID_KEY,
        )
    return out.getvalue()


def packs(store: Store) -> list[str]:
    return [i.key for i in store.list(f"{HOST}/packs/")]


@pytest.fixture
def repo(store: Store) -> Iterator[Repository]:
    yield Repository(store, trust_for())


def packs_named(repo: Repository, snapshot: str) -> set[str]:
    """The packs a snapshot's index names (read as drkit reads it: versions 1-3)."""
    key = object_key(HOST, snapshot, "db/dump")
    _reader, refs = read_index(repo.store.get_bytes(key), key)
    return {r.at.pack for r in refs if r.at is not None}


def test_chunks_go_to_packs_and_come_back_in_order_by_ranged_reads(
    repo: Repository, ring: Keyring
) -> None:
    data = text_like(1, 24 * MiB)
    manifest, done = back_up(repo, ring, data, sid(2))
    stored = packs(repo.store)
    assert not list(repo.store.list(f"{HOST}/chunks/"))
    assert done.packs == len(stored) >= 2
    sizes = [repo.store.stat(k).size for k in stored]  # type: ignore[union-attr]
    assert sum(sizes) == done.new_bytes
    assert all(s < 4 * MiB + 2 * MiB for s in sizes)  # the target plus at most one chunk

    counted = Counting(repo.store)
    assert restore(repo, ring, manifest) == data
    # Adjacent chunks of a pack are read together (up to 2 MiB a read), not one by one.
    assert counted.ranges <= done.new_bytes // (2 * MiB) + 2 * len(stored), counted.ranges
    assert counted.ranges < done.index.chunks / 4


def test_a_second_backup_reuses_packs_of_trusted_snapshots_only(
    repo: Repository, ring: Keyring
) -> None:
    data = text_like(2, 8 * MiB)
    first, _ = back_up(repo, ring, data, sid(3))
    changed = data[: 4 * MiB] + b"a changed row\n" + data[4 * MiB :]
    second, done = back_up(repo, ring, changed, sid(2))
    assert 1 <= done.new_chunks <= 3 and done.reused_chunks >= done.index.chunks - 3
    assert restore(repo, ring, second) == changed
    assert restore(repo, ring, first) == data

    # A repository read without trust in the snapshots' key reuses nothing.
    untrusting = Repository(repo.store, trust_for("someone-else"))
    chunks = Chunks(untrusting.store, HOST, ring.rset)
    again = chunked.encode(io.BytesIO(data), ring.recipients, chunks, id_key=ID_KEY)
    again.index.file.close()
    assert again.reused_chunks == 0


def test_an_index_altered_in_the_bucket_is_not_reused(repo: Repository, ring: Keyring) -> None:
    data = text_like(3, 3 * MiB)
    first, _ = back_up(repo, ring, data, sid(3))
    key = object_key(HOST, first.snapshot, "db/dump")
    raw = repo.store.get_bytes(key)
    repo.store.put_bytes(key, raw + b"\n")  # its digest no longer matches the manifest
    Repository(repo.store, trust_for())  # a new run opens the repository anew
    _second, done = back_up(repo, ring, data, sid(2))
    assert done.reused_chunks == 0 and done.new_chunks > 0


def test_verify_reads_each_pack_once_and_names_a_bad_one_with_its_snapshots(
    repo: Repository, ring: Keyring
) -> None:
    data = text_like(4, 12 * MiB)
    first, _ = back_up(repo, ring, data, sid(3))
    packs_of_first = packs(repo.store)
    second, _ = back_up(repo, ring, data + b"tail\n", sid(2))
    named = packs_named(repo, second.snapshot)
    needed = [k for k in packs(repo.store) if pack_of(k) in named]
    shared = [k for k in needed if k in packs_of_first]
    counted = Counting(repo.store)
    for identities in (None, [ring.identity]):
        result = verify_snapshot(repo, second, identities)
        assert result.ok, result.problems
    assert counted.gets == 2 * len(needed) and counted.ranges == 0  # each pack once

    victim = shared[0]
    raw = bytearray(repo.store.get_bytes(victim))
    raw[len(raw) // 3] ^= 0x40
    repo.store.put_bytes(victim, bytes(raw))
    for identities in (None, [ring.identity]):
        results = verify_host(repo, HOST, identities, every=True)
        for r in results:
            assert not r.ok and r.bad_packs == [pack_of(victim)]
            text = "\n".join(r.problems)
            assert f"{repo.url}/{victim} (bytes " in text
            assert f"is needed by snapshot(s) {first.snapshot}, {second.snapshot}" in text
    with pytest.raises(IntegrityError, match=victim):
        restore(repo, ring, second)


def test_chunks_stored_one_object_each_still_restore_and_verify(
    repo: Repository, ring: Keyring
) -> None:
    """A snapshot from before packs: each chunk its own object, a version 1 index."""
    data = text_like(5, 3 * MiB)
    index = IndexWriter(chunked.FORMAT, ring.rset)
    cutter = FastCDC(chunked.AVG_CHUNK, min_size=chunked.MIN_CHUNK, max_size=chunked.MAX_CHUNK)
    for piece in cutter.cut_buf(data):
        plain = bytes(piece.data)
        cid = chunked.chunk_id(plain, ID_KEY)
        blob = pyrage.encrypt(zstandard.ZstdCompressor().compress(plain), ring.recipients)
        repo.store.put_bytes(chunk_key(HOST, ring.rset, cid), blob)
        index.add(cid, len(plain))
    old = commit(repo, ring, sid(4), index.finish())
    assert restore(repo, ring, old) == data
    for identities in (None, [ring.identity]):
        assert verify_snapshot(repo, old, identities).ok
    # A packed backup on top stores its chunks anew in packs; both restore; prune of
    # nothing keeps both the chunk objects and the packs.
    new, done = back_up(repo, ring, data, sid(3))
    assert done.reused_chunks == 0 and packs(repo.store)
    assert restore(repo, ring, new) == data
    gc = collect_packs(
        repo,
        HOST,
        [old, new],
        now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2),
        grace=dt.timedelta(0),
        dry_run=False,
        log=lambda _m: None,
    )
    assert gc.errors == [] and gc.removed == gc.packs_removed == 0
    assert restore(repo, ring, old) == data


def test_packs_are_spooled_not_held_in_memory(tmp_path: Path, ring: Keyring) -> None:
    repo = Repository(LocalStore(tmp_path / "repo"), trust_for())
    data = random.Random(6).randbytes(48 * MiB)  # incompressible: packs of 32 MiB
    chunks = Chunks(repo.store, HOST, ring.rset)
    chunks.pack_target = 32 * MiB
    tracemalloc.start()
    try:
        done = chunked.encode(io.BytesIO(data), ring.recipients, chunks, id_key=ID_KEY)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    done.index.file.close()
    assert done.packs == 2
    assert peak < 16 * MiB, peak  # chunks in flight, never a pack


def test_prune_removes_unreferenced_packs_and_keeps_the_rest(
    repo: Repository, ring: Keyring
) -> None:
    first, _ = back_up(repo, ring, text_like(7, 6 * MiB), sid(3))
    second, _ = back_up(repo, ring, text_like(8, 6 * MiB), sid(2))  # shares nothing
    named = packs_named(repo, second.snapshot)
    only_first = {k for k in packs(repo.store) if pack_of(k) not in named}
    assert only_first and len(only_first) < len(packs(repo.store))
    repo.delete_snapshot(HOST, first.snapshot)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    gc = collect_packs(
        repo, HOST, [second], now=later, grace=dt.timedelta(0), dry_run=False, log=lambda _m: None
    )
    assert gc.errors == []
    if repo.store.object_lock_enabled():
        # Object Lock holds the first snapshot's packs for a day: kept, each named with why.
        assert gc.packs_removed == 0 and len(gc.locked_kept) == len(only_first)
        assert all(
            "unreferenced pack kept: Object Lock retention until" in w for w in gc.locked_kept
        )
        assert only_first <= set(packs(repo.store))
    else:
        assert gc.packs_removed == len(only_first) and not only_first & set(packs(repo.store))
    assert restore(repo, ring, second) == text_like(8, 6 * MiB)


# -- Object Lock: a reused pack lives as long as the snapshot that reuses it ---------------


def test_a_reused_pack_gets_the_new_snapshots_retention(
    seaweed: SeaweedServer, ring: Keyring
) -> None:
    short = make_s3_store(seaweed, object_lock_days=1)
    long = S3Store(
        short.bucket, short.prefix, dataclasses.replace(short.options, object_lock_days=5)
    )
    try:
        data = text_like(9, 6 * MiB)
        back_up(Repository(short, trust_for()), ring, data, sid(3))
        old = packs(short)
        for key in old:
            before = short.object_retention(key)
            assert before is not None and before < dt.datetime.now(dt.UTC) + dt.timedelta(days=2)

        repo = Repository(long, trust_for())
        second, done = back_up(repo, ring, data + b"x\n", sid(2))
        assert done.reused_chunks > 0
        # Extended past the new snapshot's own lock (a manifest written after them).
        for key in old:
            until = long.object_retention(key)
            assert until is not None and until > dt.datetime.now(dt.UTC) + dt.timedelta(days=5)
        assert restore(repo, ring, second) == data + b"x\n"
    finally:
        short.close()
        long.close()


def test_a_ranged_read_holds_a_bounded_plain_size_however_well_chunks_compress() -> None:
    """Chunks of spaces seal to a few KiB: grouped by stored size alone, one 2 MiB read
    would open into hundreds of MiB (a restore measured 367 MiB peak RSS)."""
    from drkit.pipeline.chunk_index import ChunkRef, Packed

    refs = [
        ChunkRef(bytes(32), MiB, Packed("ab" * 32, i * 5000, 5000, bytes(32))) for i in range(40)
    ]
    groups = list(chunked._groups(iter(refs)))
    assert sum(len(g) for g in groups) == 40
    assert all(sum(r.size for r in g) <= chunked._GROUP_PLAIN for g in groups)
    assert len(groups) == 10  # and still several chunks per read
