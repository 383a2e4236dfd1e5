"""Verify a snapshot without restoring: read, authenticate and hash every object.

A deduplicated artifact's chunks are checked pack by pack: every chunk the
snapshot's indexes name in a pack is checked in one streaming read of that
pack (its stored digest, and with the identity its content against its id),
so a pack shared by many artifacts is read once. A bad pack is reported with
every trusted snapshot that needs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from drkit.actions.artifact_read import object_label, read_artifact
from drkit.actions.snapshot_select import select_snapshot
from drkit.errors import DrkitError, IntegrityError
from drkit.logs import Meter, context, meter
from drkit.pipeline import chunked
from drkit.pipeline.age import Identity
from drkit.pipeline.chunk_index import VERSION_1, ChunkRef, IndexReader
from drkit.pipeline.streams import HashingReader, TeeReader, drain
from drkit.repository.chunks import Chunks
from drkit.repository.layout import Repository, object_key
from drkit.repository.manifest import ArtifactRecord, Manifest

_PACK_READERS = 3  # packs read at once


@dataclass
class VerifyResult:
    host: str
    snapshot: str
    checked: int = 0
    bytes: int = 0  # stored bytes read and checked (a chunked artifact: its index + chunks)
    problems: list[str] = field(default_factory=list)
    decrypted: bool = True
    bad_packs: list[str] = field(default_factory=list)  # pack names (problems name them)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _PackWork:
    """What one snapshot needs of one pack: its chunks by offset."""

    chunks: Chunks
    name: str
    refs: dict[int, tuple[ChunkRef, bytes | None]] = field(default_factory=dict)  # id key


def _check_stored(repo: Repository, manifest: Manifest, record: ArtifactRecord, label: str) -> None:
    """Without the identity: the stored digest, and for an artifact chunked one object
    per chunk that every chunk it names exists (its content is only checked by
    decrypting it)."""
    key = object_key(manifest.host, manifest.snapshot, record.key)
    with repo.store.get(key) as stored:
        if chunked.is_chunked(record.format):
            index = IndexReader(stored, label)
            chunks = Chunks(repo.store, manifest.host, index.rset)
            missing = [ref.id for ref in index if not chunks.has(ref.id)]
            size, digest = index.stored_size, index.stored_sha256
        else:
            h = HashingReader(stored)
            drain(h)
            missing, size, digest = [], h.size, h.hexdigest()
    if size != record.stored_size or digest != record.stored_sha256:
        raise DrkitError(f"{label}: stored digest does not match the manifest")
    if missing:
        raise DrkitError(f"{chunks.label(missing[0])}: chunk is missing ({len(missing)} in all)")


def _read_packed_index(
    repo: Repository,
    manifest: Manifest,
    record: ArtifactRecord,
    label: str,
    id_key: bytes | None,
    packs: dict[str, _PackWork],
) -> bool:
    """Read a chunked artifact's index whole, checked against the manifest, and add the
    chunks it names to ``packs``; False (nothing added) for an index of chunks stored
    one object each."""
    key = object_key(manifest.host, manifest.snapshot, record.key)
    with repo.store.get(key) as stored:
        index = IndexReader(stored, label)
        if index.version == VERSION_1:
            return False
        chunks = Chunks(repo.store, manifest.host, index.rset)
        found = list(_packed(index))
    if (
        index.stored_size != record.stored_size
        or index.stored_sha256 != record.stored_sha256
        or index.plain_size != record.plain_size
        or index.tree_digest != record.plain_sha256
    ):
        raise IntegrityError(f"{label}: stored digest does not match the manifest")
    for ref in found:
        assert ref.at is not None
        work = packs.setdefault(ref.at.pack, _PackWork(chunks, ref.at.pack))
        work.refs.setdefault(ref.at.offset, (ref, id_key))
    return True


def _packed(index: IndexReader) -> Iterator[ChunkRef]:
    for ref in index:
        if ref.at is None:
            raise IntegrityError(f"{index.label}: unreadable chunk index (a chunk without pack)")
        yield ref


def _check_pack(
    work: _PackWork, identities: list[Identity] | None, m: Meter
) -> tuple[int, list[str]]:
    """Read ``work``'s pack once, front to back, checking each chunk it needs; returns
    bytes read and the problems (each naming the pack and the bytes). ``m`` counts them
    as they are read, for progress."""
    label = work.chunks.pack_label(work.name)
    problems: list[str] = []
    read = 0
    try:
        with work.chunks.open_pack(work.name) as stream:
            for offset in sorted(work.refs):
                ref, id_key = work.refs[offset]
                assert ref.at is not None
                gap = offset - read
                if gap < 0:
                    raise IntegrityError(f"{label}: its index names overlapping chunks")
                read += _skip(stream, gap)
                blob = stream.read(ref.at.length)
                read += len(blob)
                m.add_read(len(blob))
                where = chunked.chunk_where(label, ref.at)
                if len(blob) != ref.at.length:
                    problems.append(f"{where}: the pack ends before this chunk")
                    break
                try:
                    if identities is None:
                        if _sha256(blob) != ref.at.digest:
                            raise IntegrityError(
                                f"{where}: stored bytes do not match the index's digest"
                            )
                    else:
                        chunked.open_chunk(blob, ref, identities, id_key, where)
                except DrkitError as exc:
                    problems.append(str(exc))
    except DrkitError as exc:
        problems.append(str(exc))
    return read, problems


def _skip(stream: BinaryIO, n: int) -> int:
    done = 0
    while done < n:
        got = stream.read(min(n - done, 1 << 20))
        if not got:
            break
        done += len(got)
    return done


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def verify_snapshot(
    repo: Repository, manifest: Manifest, identities: list[Identity] | None
) -> VerifyResult:
    """Check every artifact (and the facts). With identities, decrypt and check the
    plain digest too; without, check the stored digests only. Every failing
    object is reported, not just the first."""
    with context(host=manifest.host), meter("verify", f"snapshot {manifest.snapshot}") as m:
        return _verify_snapshot(repo, manifest, identities, m)


def _verify_snapshot(
    repo: Repository, manifest: Manifest, identities: list[Identity] | None, m: Meter
) -> VerifyResult:
    result = VerifyResult(manifest.host, manifest.snapshot, decrypted=identities is not None)
    records: list[ArtifactRecord] = list(manifest.artifacts)
    if manifest.facts:
        records.append(manifest.facts)
    packs: dict[str, _PackWork] = {}
    packed: list[tuple[ArtifactRecord, list[str]]] = []  # artifacts whose packs are pending
    for record in records:
        label = object_label(repo, manifest, record)
        chunk_sizes: list[int] = []  # appended from fetching threads (list.append is atomic)
        try:
            if chunked.is_chunked(record.format):
                id_key = None
                if identities is not None and record.format == chunked.FORMAT:
                    sealed = manifest.extra.get(chunked.ID_KEY_EXTRA)
                    id_key = chunked.open_id_key(sealed, identities, label)
                mine: dict[str, _PackWork] = {}
                if _read_packed_index(repo, manifest, record, label, id_key, mine):
                    for name, work in mine.items():
                        packs.setdefault(name, _PackWork(work.chunks, name)).refs.update(work.refs)
                    packed.append((record, list(mine)))
                    continue
            if identities is not None:
                read_artifact(repo, manifest, record, identities, _counted(m), chunk_sizes.append)
            else:
                _check_stored(repo, manifest, record, label)
                m.add_read(record.stored_size)
        except DrkitError as exc:
            result.problems.append(str(exc))
            continue
        result.checked += 1
        result.bytes += record.stored_size + sum(chunk_sizes)
    with ThreadPoolExecutor(max_workers=_PACK_READERS, thread_name_prefix="drkit-verify") as pool:
        found = pool.map(lambda w: _check_pack(w, identities, m), packs.values())
        checked = dict(zip(packs, found, strict=True))
    for name, (read, problems) in checked.items():
        result.bytes += read
        if problems:
            result.bad_packs.append(name)
            result.problems.extend(problems)
    for record, names in packed:
        if not any(checked[n][1] for n in names):
            result.checked += 1
            result.bytes += record.stored_size
    return result


def _counted(m: Meter) -> Callable[[BinaryIO], None]:
    """``drain``, counting the checked plain bytes into ``m`` as they pass."""

    def consume(stream: BinaryIO) -> None:
        drain(TeeReader(stream, m.counting))

    return consume


def needing(repo: Repository, host: str, packs: set[str]) -> dict[str, list[str]]:
    """Which trusted snapshots of ``host`` name each of ``packs`` (for a report: a bad
    pack is as bad as the snapshots that need it). Unreadable indexes are skipped
    (verify reports them on their own)."""
    out: dict[str, list[str]] = {p: [] for p in packs}
    for manifest in repo.read_host(host).trusted:
        named: set[str] = set()
        for record in manifest.artifacts:
            if not chunked.is_chunked(record.format):
                continue
            key = object_key(host, manifest.snapshot, record.key)
            try:
                with repo.store.get(key) as stored:
                    named.update(r.at.pack for r in IndexReader(stored, key) if r.at is not None)
            except DrkitError:
                continue
        for pack in named & packs:
            out[pack].append(manifest.snapshot)
    return out


def verify_host(
    repo: Repository,
    host: str,
    identities: list[Identity] | None,
    *,
    snapshot: str | None = None,
    every: bool = False,
) -> list[VerifyResult]:
    """Verify ``host``'s newest trusted snapshot (or ``snapshot``, or ``every`` trusted
    one), and report every committed snapshot that is not trusted as a failure naming
    it and why: a planted or altered snapshot is never skipped silently. A bad pack is
    reported with every trusted snapshot that needs it.

    Raises ObjectNotFound when there is nothing trusted to verify and nothing
    untrusted to report; UntrustedError when ``snapshot`` itself is not trusted.
    """
    view = repo.read_host(host)
    untrusted = [
        VerifyResult(host, r.snapshot, problems=[r.reason], decrypted=False)
        for r in view.untrusted
        if snapshot is None or r.snapshot == snapshot
    ]
    if every:
        manifests = view.trusted
    elif snapshot is not None or view.trusted or not untrusted:
        manifests = [select_snapshot(repo, host, snapshot)]
    else:
        manifests = []
    results = [verify_snapshot(repo, m, identities) for m in manifests]
    bad = {p for r in results for p in r.bad_packs}
    if bad:
        users = needing(repo, host, bad)
        for r in results:
            for pack in r.bad_packs:
                who = ", ".join(users[pack]) or "none"
                r.problems.append(f"pack {pack} is needed by snapshot(s) {who}")
    return results + untrusted
