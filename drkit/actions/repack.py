"""Collect a host's packs, following repacks, and repack the mostly-garbage ones.

Prune's pass over chunks (docs/dedup.md, "Prune" and "Repack"):

1. Read the host's move records (repository/moves.py). One that is not trusted
   stops the collection: a record prune cannot believe may be one a kept
   snapshot needs, and removing what it says moved would lose data.
2. Read the index of every chunked artifact of the snapshots that stay (checked
   against their manifests) and follow each chunk through the trusted records:
   what is live is where the chunks are now, with the sha256 each index names.
3. Remove the packs (and chunk objects of snapshots from before packs) nothing
   live is in, and the move records nothing follows any more, once older than
   the grace period and not held by Object Lock.
4. With a garbage share (``repack``), copy the live chunks of each pack whose
   share of garbage is at least that into new packs, byte for byte after checking
   each against its digest, then for each new pack: store it, store the signed
   record of what moved (the commit), remove the old packs. A kill at any point
   leaves either an unreferenced new pack (removed by a later prune) or a record
   whose old packs are unreferenced (removed by the next one): nothing is lost.
   Packs under Object Lock retention are never repacked.

The record is signed with this machine's key, which the host's policy must
trust for its snapshots: a run without it does not repack (it still collects).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from drkit.actions.chunk_gc import ChunkCollection, _locked
from drkit.errors import DrkitError, IntegrityError, UsageError
from drkit.logs import Log
from drkit.pipeline import chunked
from drkit.pipeline.chunk_index import IndexReader
from drkit.repository.chunks import chunk_key, list_chunks, list_packs, pack_key, pack_of
from drkit.repository.layout import Repository, object_key
from drkit.repository.manifest import Manifest
from drkit.repository.moves import Move, Moves, write_record
from drkit.repository.store import ObjectInfo

REPACK_ENV = "DRKIT_REPACK"
_RUN_BYTES = 4 << 20  # the most one ranged read of an old pack asks for

Live = dict[tuple[str, str], dict[int, tuple[int, bytes]]]  # (set, pack) -> offset -> (len, sha)


def repack_share(raw: str | None = None) -> float | None:
    """The garbage share over which prune repacks a pack: ``$DRKIT_REPACK`` (a number
    above 0 and at most 1, e.g. 0.5), None when unset. Raises UsageError otherwise."""
    raw = os.environ.get(REPACK_ENV, "") if raw is None else raw
    if not raw.strip():
        return None
    try:
        share = float(raw)
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise UsageError(f"${REPACK_ENV}={raw!r}: not a garbage share above 0 and at most 1")
    return share


@dataclass
class PackCollection(ChunkCollection):
    packs_repacked: int = 0  # old packs whose live chunks moved into new ones
    packs_written: int = 0  # new packs a repack wrote
    moved_bytes: int = 0
    moves_removed: int = 0  # move records nothing follows any more
    repack_locked: int = 0  # packs garbage enough to repack, but held by Object Lock
    would_repack: list[str] = field(default_factory=list)  # dry run: pack keys


def collect_packs(
    repo: Repository,
    host: str,
    kept: Iterable[Manifest],
    *,
    now: dt.datetime,
    grace: dt.timedelta,
    dry_run: bool,
    log: Log,
    repack: float | None = None,
) -> PackCollection:
    """Remove ``host``'s chunks, packs and move records nothing in ``kept`` (every
    snapshot that stays) needs; with ``repack``, repack packs at least that share
    garbage. An index or move record that cannot be read or trusted stops it before
    anything is removed (named in ``errors``)."""
    out = PackCollection()
    try:
        moves = Moves.load(repo, host)
        if moves.rejected:
            raise IntegrityError("; ".join(moves.rejected))
        live, chunk_keys, used = _live(repo, host, kept, moves)
    except DrkitError as exc:
        out.errors.append(f"host {host}: chunks not collected: {exc}")
        return out
    referenced = chunk_keys | {pack_key(host, rset, pack) for rset, pack in live}
    verb = "would remove" if dry_run else "removing"
    listed: dict[str, ObjectInfo] = {}
    for kind, listing in (("chunk", list_chunks), ("pack", list_packs)):
        garbage = []
        for info in listing(repo.store, host):
            if info.key in referenced:
                listed[info.key] = info
            elif _removable(repo, info, kind, now, grace, out, log):
                garbage.append(info)
        _remove(repo, host, kind, garbage, dry_run, out, log, verb)
    stale = [
        info
        for info in repo.store.list(f"{host}/moves/")
        if info.key in moves.records
        and info.key not in used
        and _removable(repo, info, "record", now, grace, out, log)
    ]
    _remove(repo, host, "move record", stale, dry_run, out, log, verb)
    if repack is not None:
        Repacker(repo, host, live, out, log).run(listed, repack, now, grace, dry_run)
    return out


def _live(
    repo: Repository, host: str, kept: Iterable[Manifest], moves: Moves
) -> tuple[Live, set[str], set[str]]:
    """What the indexes of ``kept`` need, followed through ``moves``: packed chunks by
    (set, pack), chunk object keys, and the move records followed."""
    live: Live = {}
    chunk_keys: set[str] = set()
    used: set[str] = set()
    for manifest in kept:
        for record in manifest.artifacts:
            if not chunked.is_chunked(record.format):
                continue
            key = object_key(manifest.host, manifest.snapshot, record.key)
            with repo.store.get(key) as stored:
                index = IndexReader(stored, f"{repo.url}/{key}")
                for ref in index:
                    if ref.at is None:
                        chunk_keys.add(chunk_key(host, index.rset, ref.id))
                        continue
                    at = ref.at
                    for piece in moves.pieces(index.rset, at.pack, at.offset, at.length, used):
                        slot = live.setdefault((index.rset, piece.pack), {})
                        slot[piece.offset] = (piece.length, at.digest)
            if index.stored_sha256 != record.stored_sha256:
                # An altered index may leave out what the snapshot needs: remove nothing.
                raise IntegrityError(f"{repo.url}/{key}: stored digest does not match the manifest")
    return live, chunk_keys, used


def _removable(
    repo: Repository,
    info: ObjectInfo,
    kind: str,
    now: dt.datetime,
    grace: dt.timedelta,
    out: PackCollection,
    log: Log,
) -> bool:
    if now - info.modified < grace:
        out.young_kept += 1
        return False
    return kind == "chunk" or not _locked(repo, info.key, now, out, log)


def _remove(
    repo: Repository,
    host: str,
    kind: str,
    garbage: list[ObjectInfo],
    dry_run: bool,
    out: PackCollection,
    log: Log,
    verb: str,
) -> None:
    if garbage:
        total = sum(i.size for i in garbage)
        log(f"{host}: {verb} {len(garbage)} unreferenced {kind}(s), {total} bytes")
    for info in garbage:
        if not dry_run:
            try:
                repo.store.delete(info.key)
            except DrkitError as exc:
                out.errors.append(f"host {host}: could not remove {kind} {info.key}: {exc}")
                continue
        if kind == "pack":
            out.packs_removed += 1
        elif kind == "chunk":
            out.removed += 1
        else:
            out.moves_removed += 1
        out.freed_bytes += info.size


class Repacker:
    """Moves the live chunks of mostly-garbage packs into new packs, one new pack (and
    its move record) at a time."""

    def __init__(
        self, repo: Repository, host: str, live: Live, out: PackCollection, log: Log
    ) -> None:
        self.repo, self.host, self.live, self.out, self.log = repo, host, live, out, log
        self.sizes: dict[str, int] = {}  # old pack -> its size

    def run(
        self,
        listed: dict[str, ObjectInfo],
        share: float,
        now: dt.datetime,
        grace: dt.timedelta,
        dry_run: bool,
    ) -> None:
        by_set: dict[str, list[str]] = {}
        for (rset, pack), chunks in sorted(self.live.items()):
            info = listed.get(pack_key(self.host, rset, pack))
            if info is None or info.size <= 0 or now - info.modified < grace:
                continue
            garbage = 1 - sum(length for length, _ in chunks.values()) / info.size
            if garbage >= share and not self._held(info.key, now):
                by_set.setdefault(rset, []).append(pack)
                self.sizes[pack] = info.size
        if not by_set:
            return
        if dry_run:
            self.out.would_repack = [
                pack_key(self.host, rset, pack) for rset, packs in by_set.items() for pack in packs
            ]
            self.log(f"{self.host}: would repack {len(self.out.would_repack)} pack(s)")
            return
        try:
            self.repo.trust.signer_for(self.host)
        except DrkitError as exc:
            self.out.errors.append(f"host {self.host}: packs not repacked: {exc}")
            return
        for rset, packs in by_set.items():
            self._repack_set(rset, packs)

    def _held(self, key: str, now: dt.datetime) -> bool:
        """True (and said) when Object Lock holds ``key`` or its lock cannot be read: a
        locked pack is never repacked (it could not be removed before its time)."""
        try:
            until = self.repo.store.object_retention(key)
        except DrkitError as exc:
            self.out.errors.append(f"{self.repo.url}/{key}: not repacked: lock unreadable: {exc}")
            return True
        if until is None or until <= now:
            return False
        self.out.repack_locked += 1
        self.log(f"{self.repo.url}/{key}: not repacked: Object Lock retention until {until}")
        return True

    def _repack_set(self, rset: str, packs: list[str]) -> None:
        from drkit.repository.chunks import pack_target

        target = pack_target()
        spool = chunked.PackSpool.new()
        moves: dict[str, list[Move]] = {}
        try:
            for pack in packs:
                moved = self._copy(rset, pack, spool)
                if moved is not None:
                    moves[pack] = moved
                if spool.size >= target:
                    self._commit(rset, spool, moves)
                    spool.file.close()
                    spool, moves = chunked.PackSpool.new(), {}
            self._commit(rset, spool, moves)
        finally:
            spool.file.close()

    def _copy(self, rset: str, pack: str, spool: chunked.PackSpool) -> list[Move] | None:
        """Append ``pack``'s live chunks to ``spool``, each checked against its digest;
        None (nothing moves) when one does not match or cannot be read."""
        key = pack_key(self.host, rset, pack)
        chunks = self.live[(rset, pack)]
        out: list[Move] = []
        try:
            for start, run in _runs(chunks):
                end = max(o + chunks[o][0] for o in run)
                data = self.repo.store.get_range(key, start, end - start)
                for offset in run:
                    length, digest = chunks[offset]
                    blob = data[offset - start : offset - start + length]
                    if hashlib.sha256(blob).digest() != digest:
                        raise IntegrityError(
                            f"{self.repo.url}/{key} (bytes {offset}-{offset + length - 1}): "
                            "stored bytes do not match the index's digest"
                        )
                    at = spool.add(blob)
                    out.append(Move(offset, length, spool.name, at.offset, ""))
        except DrkitError as exc:
            # Bytes already appended stay in the new pack as garbage; nothing points there.
            self.out.errors.append(f"host {self.host}: pack not repacked: {exc}")
            return None
        return out

    def _commit(self, rset: str, spool: chunked.PackSpool, moves: dict[str, list[Move]]) -> None:
        """Store the new pack, then the record (the commit), then remove the old packs."""
        if not moves:
            return
        new_key = pack_key(self.host, rset, spool.name)
        try:
            spool.file.seek(0)
            self.repo.store.put_file(new_key, spool.file)
            write_record(self.repo, self.host, rset, spool.name, moves)
        except DrkitError as exc:
            self.out.errors.append(f"host {self.host}: repack into {new_key} not committed: {exc}")
            return
        self.out.packs_written += 1
        self.out.moved_bytes += sum(m.length for ms in moves.values() for m in ms)
        self.log(
            f"{self.host}: repacked {len(moves)} pack(s) into {pack_of(new_key)} "
            f"({spool.size} bytes live)"
        )
        for old in moves:
            try:
                self.repo.store.delete(pack_key(self.host, rset, old))
            except DrkitError as exc:  # the record moved it: the next prune removes it
                self.out.errors.append(f"host {self.host}: repacked pack {old} not removed: {exc}")
                continue
            self.out.packs_repacked += 1
            self.out.freed_bytes += self.sizes[old]
        self.out.freed_bytes -= spool.size


def _runs(chunks: dict[int, tuple[int, bytes]]) -> Iterable[tuple[int, list[int]]]:
    """The offsets of ``chunks`` in order, adjacent ones joined into runs of at most
    ``_RUN_BYTES``: (start, offsets) per ranged read."""
    run: list[int] = []
    start = end = 0
    for offset in sorted(chunks):
        length = chunks[offset][0]
        if run and (offset != end or end + length - start > _RUN_BYTES):
            yield start, run
            run = []
        if not run:
            start = offset
        run.append(offset)
        end = offset + length
    if run:
        yield start, run
