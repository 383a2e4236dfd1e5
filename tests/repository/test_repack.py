"""Repack (docs/dedup.md, "Repack") on a local directory, SeaweedFS, and SeaweedFS with
Object Lock: mostly-garbage packs are rewritten, their chunks followed through signed
move records; a move record the host's policy does not trust is never followed.

In-process with the real codec, layout, signed manifests and stores (tests/servers/).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest

from drkit.actions.repack import PackCollection, collect_packs, repack_share
from drkit.actions.verify import verify_snapshot
from drkit.errors import DrkitError, IntegrityError
from drkit.pipeline.chunk_index import read_index
from drkit.repository.chunks import pack_key, pack_of, recipient_set
from drkit.repository.layout import Repository
from drkit.repository.manifest import Manifest, dump_document
from drkit.repository.moves import KIND, Move, Moves, document, moves_key, write_record
from drkit.repository.store import Store
from drkit.repository.trust import Trust
from drkit.signing import Signers, SigningKey
from tests.helpers import trust_for
from tests.repository.test_packs import HOST, Keyring, MiB, back_up, packs, restore, text_like
from tests.test_prune import sid


@pytest.fixture
def repo(store: Store) -> Iterator[Repository]:
    yield Repository(store, trust_for())


@pytest.fixture
def ring() -> Keyring:
    identity = pyrage.x25519.Identity.generate()
    public = identity.to_public()
    return Keyring(identity, [public], recipient_set([str(public)]))


def collect(
    repo: Repository, kept: list[Manifest], share: float | None, *, dry_run: bool = False
) -> PackCollection:
    """Prune's pass over packs, now, as if every object were past the grace period (but
    not past its Object Lock retention)."""
    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    return collect_packs(
        repo,
        HOST,
        kept,
        now=now,
        grace=dt.timedelta(0),
        dry_run=dry_run,
        log=lambda _m: None,
        repack=share,
    )


def locked(store: Store) -> bool:
    return store.object_lock_enabled()


def blocks(seeds: list[int], size: int = 1536 << 10) -> bytes:
    return b"".join(text_like(s, size) for s in seeds)


A, B = [1, 2, 3, 4], [101, 102, 103, 104]
BOTH = [s for pair in zip(A, B, strict=True) for s in pair]  # a1 b1 a2 b2 ...


def three(repo: Repository, ring: Keyring) -> tuple[Manifest, Manifest, Manifest]:
    """m0 holds A and B interleaved (its packs mix them), m1 only A, m2 only B."""
    m0, _ = back_up(repo, ring, blocks(BOTH), sid(5), target=MiB)
    m1, _ = back_up(repo, ring, blocks(A), sid(4), target=MiB)
    m2, _ = back_up(repo, ring, blocks(B), sid(3), target=MiB)
    return m0, m1, m2


# -- trust: written first -------------------------------------------------------


def _planted(repo: Repository, ring: Keyring, body: dict[str, object], name: str) -> str:
    key = moves_key(HOST, ring.rset, name)
    repo.store.put_bytes(key, dump_document(body))
    return key


def test_a_planted_move_record_is_refused_and_named(
    repo: Repository, ring: Keyring, tmp_path: Path
) -> None:
    """The bucket's holder copies a pack elsewhere, plants a record moving it there
    (unsigned; signed by a key the policy does not trust; a trusted record of another
    host copied here) and removes the original: restore and verify must not follow it
    (the pack is missing, and the refused record is named); prune removes nothing."""
    data = blocks(A[:2])
    m, _ = back_up(repo, ring, data, sid(2), target=MiB)
    if locked(repo.store):
        pytest.skip("Object Lock: the holder cannot remove the original pack")
    original = sorted(packs(repo.store))[0]
    old = pack_of(original)
    copy = "e" * 64
    repo.store.put_bytes(pack_key(HOST, ring.rset, copy), repo.store.get_bytes(original))
    size = repo.store.stat(original).size  # type: ignore[union-attr]
    moves = {old: [Move(0, size, copy, 0, "")]}
    body = document(HOST, ring.rset, dt.datetime.now(dt.UTC), moves)
    unsigned = _planted(repo, ring, body, "a" * 64)
    stranger = SigningKey.create(tmp_path / "stranger")
    foreign = _planted(repo, ring, stranger.sign(KIND, body), "b" * 64)
    other = document("otherhost", ring.rset, dt.datetime.now(dt.UTC), moves)
    replayed = _planted(repo, ring, trust_for().signing_key.sign(KIND, other), "c" * 64)  # type: ignore[union-attr]
    repo.store.delete(original)

    loaded = Moves.load(Repository(repo.store, trust_for()), HOST)
    assert not loaded.by_pack and not loaded.records
    why = "\n".join(loaded.rejected)
    assert f"{unsigned}: move record refused, not followed: not signed" in why
    assert (
        f"{foreign}: move record refused, not followed: signed by" in why and "not trusted" in why
    )
    assert f"{replayed}: move record refused, not followed: names host 'otherhost'" in why

    with pytest.raises(
        IntegrityError, match=rf"{old}: pack is missing \(not followed: .*{unsigned}"
    ):
        restore(repo, ring, m)
    result = verify_snapshot(repo, m, [ring.identity])
    assert not result.ok and any("pack is missing" in p for p in result.problems), result.problems

    before = {i.key for i in repo.store.list(f"{HOST}/")}
    out = collect(repo, [m], 0.5)
    assert out.errors and "chunks not collected" in out.errors[0] and unsigned in out.errors[0]
    assert {i.key for i in repo.store.list(f"{HOST}/")} == before  # nothing removed
    assert out.packs_repacked == out.packs_removed == 0


def test_a_trusted_record_does_not_make_bytes_trusted(repo: Repository, ring: Keyring) -> None:
    """Even a record signed by the host's own key only says where to read: bytes found
    there that do not match the index's digest are refused, naming the pack and range."""
    m, _ = back_up(repo, ring, blocks(A[:2]), sid(2), target=MiB)
    if locked(repo.store):
        pytest.skip("Object Lock: the original pack cannot be removed")
    original = sorted(packs(repo.store))[0]
    size = repo.store.stat(original).size  # type: ignore[union-attr]
    wrong = "d" * 64
    repo.store.put_bytes(pack_key(HOST, ring.rset, wrong), b"\0" * size)
    write_record(repo, HOST, ring.rset, wrong, {pack_of(original): [Move(0, size, wrong, 0, "")]})
    repo.store.delete(original)
    with pytest.raises(IntegrityError, match="stored bytes do not match the index's digest"):
        restore(Repository(repo.store, trust_for()), ring, m)


# -- repack -----------------------------------------------------------------------


def test_repack_moves_live_chunks_and_follows_them_through_two_records(
    repo: Repository, ring: Keyring
) -> None:
    _m0, m1, m2 = three(repo, ring)
    if locked(repo.store):
        out = collect(repo, [m1, m2], 0.01)
        assert out.packs_repacked == 0 and out.repack_locked > 0 and not out.errors, out
        assert restore(repo, ring, m2) == blocks(B)
        return
    # m0 goes: its packs mix A and B (live) with the chunks across block joins (garbage).
    first = set(packs(repo.store))
    out = collect(repo, [m1, m2], 0.01)
    assert not out.errors, out.errors
    assert out.packs_repacked > 0 and out.packs_written == 1, out
    now = set(packs(repo.store))
    assert len(first - now) >= out.packs_repacked  # old packs gone (and garbage ones)
    records = [i.key for i in repo.store.list(f"{HOST}/moves/")]
    assert len(records) == 1
    fresh = Repository(repo.store, trust_for())  # a new run
    assert restore(fresh, ring, m1) == blocks(A)
    assert restore(fresh, ring, m2) == blocks(B)
    assert verify_snapshot(fresh, m2, [ring.identity]).ok
    assert verify_snapshot(fresh, m2, None).ok

    # m1 goes: the new pack is now about half garbage, and is repacked in turn; m2's
    # index still names the first packs: followed through both records.
    out = collect(fresh, [m2], 0.3)
    assert not out.errors, out.errors
    assert out.packs_repacked >= 1, out
    assert len(list(repo.store.list(f"{HOST}/moves/"))) == 2
    fresh = Repository(repo.store, trust_for())
    assert restore(fresh, ring, m2) == blocks(B)
    checked = verify_snapshot(fresh, m2, [ring.identity])
    assert checked.ok, checked.problems

    # A new backup of the same data reuses every chunk where it is now: its index names
    # no moved pack, and once m2 goes no record is needed.
    m3, done = back_up(fresh, ring, blocks(B), sid(1), target=MiB)
    assert done.new_chunks == 0
    moved = set(Moves.load(fresh, HOST).by_pack)
    _reader, refs = read_index(repo.store.get_bytes(f"{HOST}/snapshots/{m3.snapshot}/db/dump"), "i")
    assert not {(ring.rset, r.at.pack) for r in refs if r.at is not None} & moved
    out = collect(Repository(repo.store, trust_for()), [m3], 0.3)
    assert not out.errors and out.moves_removed == 2, out
    assert not list(repo.store.list(f"{HOST}/moves/"))
    assert restore(Repository(repo.store, trust_for()), ring, m3) == blocks(B)


def test_repack_needs_this_machines_signing_key(store: Store, ring: Keyring) -> None:
    signing = Repository(store, trust_for())
    _m0, m1, m2 = three(signing, ring)
    if locked(store):
        pytest.skip("Object Lock: nothing is repacked")
    unsigned = Repository(store, trust_for(signing=False))
    out = collect(unsigned, [m1, m2], 0.01)
    assert any("packs not repacked" in e and "no signing key" in e for e in out.errors), out
    assert out.packs_repacked == 0 and not list(store.list(f"{HOST}/moves/"))
    assert restore(unsigned, ring, m2) == blocks(B)


def test_a_dry_run_names_what_it_would_repack_and_changes_nothing(
    repo: Repository, ring: Keyring
) -> None:
    _m0, m1, m2 = three(repo, ring)
    before = {i.key for i in repo.store.list(f"{HOST}/")}
    out = collect(repo, [m1, m2], 0.01, dry_run=True)
    assert {i.key for i in repo.store.list(f"{HOST}/")} == before
    if locked(repo.store):
        assert not out.would_repack and out.repack_locked > 0
    else:
        assert out.would_repack and all(k in before for k in out.would_repack)


def test_an_untrusted_key_rotation_stops_collection_rather_than_lose_moved_chunks(
    store: Store, ring: Keyring, tmp_path: Path
) -> None:
    """A record signed by a key the policy no longer trusts is refused: prune then removes
    nothing (the new packs it names would otherwise look unreferenced)."""
    repo = Repository(store, trust_for())
    _m0, m1, m2 = three(repo, ring)
    if locked(store):
        pytest.skip("Object Lock: nothing is repacked")
    assert collect(repo, [m1, m2], 0.01).packs_repacked > 0
    new = SigningKey.create(tmp_path / "new")
    only_new = Trust(
        {HOST: Signers([new.public, *trust_for().snapshot_signers(HOST).keys])},
        signing_key=new,
    )
    # The old key still signs manifests here; only the record's trust is taken away by
    # re-signing it with a key that is not trusted.
    (key,) = [i.key for i in store.list(f"{HOST}/moves/")]
    body = json.loads(store.get_bytes(key))
    store.put_bytes(key, dump_document(SigningKey.create(tmp_path / "old").sign(KIND, body)))
    before = {i.key for i in store.list(f"{HOST}/")}
    out = collect(Repository(store, only_new), [m2], 0.3)
    assert out.errors and "move record refused" in out.errors[0]
    assert {i.key for i in store.list(f"{HOST}/")} == before


def test_the_garbage_share_setting() -> None:
    assert repack_share("") is None and repack_share("0.5") == 0.5 and repack_share("1") == 1
    for bad in ("0", "-1", "1.5", "half", "nan"):
        with pytest.raises(DrkitError, match="DRKIT_REPACK"):
            repack_share(bad)


def test_a_missing_new_pack_is_named_with_the_pack_it_replaced(
    repo: Repository, ring: Keyring
) -> None:
    _m0, m1, m2 = three(repo, ring)
    if locked(repo.store):
        pytest.skip("Object Lock: nothing is repacked")
    assert collect(repo, [m1, m2], 0.01).packs_repacked > 0
    (record,) = [i.key for i in repo.store.list(f"{HOST}/moves/")]
    new = record.rsplit("/", 1)[1].removesuffix(".json")
    repo.store.delete(pack_key(HOST, ring.rset, new))
    with pytest.raises(IntegrityError, match=rf"{new}: pack is missing \(where a repack moved"):
        restore(Repository(repo.store, trust_for()), ring, m2)
