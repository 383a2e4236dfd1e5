"""Remove a host's packs (and older chunk objects) that no kept snapshot references.

Chunks are shared between snapshots (``repository.dedup``), so removing a
snapshot removes its index, not its packs. This pass reads the index of
every chunked artifact of the snapshots that stay (plain text: no identity
needed) and removes the packs and chunk objects none of them names. A pack
under Object Lock retention is never removed: it is kept and named with
the date its lock ends (the next prune after that removes it). It runs under the host
lock like prune, so no backup of this host is adding references meanwhile;
as a second line of defence, chunks younger than ``grace`` stay (a backup
stores its chunks before its index and manifest).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from drkit.errors import DrkitError, IntegrityError
from drkit.pipeline import chunked
from drkit.pipeline.chunk_index import IndexReader
from drkit.repository.chunks import chunk_key, list_chunks, list_packs, pack_key
from drkit.repository.layout import Repository, object_key
from drkit.repository.manifest import Manifest


@dataclass
class ChunkCollection:
    removed: int = 0  # chunk objects (snapshots from before packs)
    packs_removed: int = 0
    freed_bytes: int = 0
    young_kept: int = 0
    locked_kept: list[str] = field(default_factory=list)  # pack keys, with why
    errors: list[str] = field(default_factory=list)


def collect_chunks(
    repo: Repository,
    host: str,
    kept: Iterable[Manifest],
    *,
    now: dt.datetime,
    grace: dt.timedelta,
    dry_run: bool,
    log: Callable[[str], None],
) -> ChunkCollection:
    """Remove ``host``'s chunks not referenced by ``kept`` (every snapshot that stays).

    The caller passes every committed snapshot that stays; if one of them could
    not be read, it must not call this at all (its references are unknown).
    An index that cannot be read stops the collection before anything is removed.
    """
    out = ChunkCollection()
    referenced: set[str] = set()
    for manifest in kept:
        for record in manifest.artifacts:
            if not chunked.is_chunked(record.format):
                continue
            key = object_key(manifest.host, manifest.snapshot, record.key)
            try:
                with repo.store.get(key) as stored:
                    index = IndexReader(stored, f"{repo.url}/{key}")
                    referenced.update(
                        chunk_key(host, index.rset, ref.id)
                        if ref.at is None
                        else pack_key(host, index.rset, ref.at.pack)
                        for ref in index
                    )
                if index.stored_sha256 != record.stored_sha256:
                    # An altered index may leave out what the snapshot needs: remove nothing.
                    raise IntegrityError(
                        f"{repo.url}/{key}: stored digest does not match the manifest"
                    )
            except DrkitError as exc:
                out.errors.append(f"host {host}: chunks not collected: {exc}")
                return out
    verb = "would remove" if dry_run else "removing"
    for kind, listing in (("chunk", list_chunks), ("pack", list_packs)):
        garbage = []
        for info in listing(repo.store, host):
            if info.key in referenced:
                continue
            if now - info.modified < grace:
                out.young_kept += 1
                continue
            if kind == "pack" and _locked(repo, info.key, now, out, log):
                continue
            garbage.append(info)
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
            else:
                out.removed += 1
            out.freed_bytes += info.size
    return out


def _locked(
    repo: Repository, key: str, now: dt.datetime, out: ChunkCollection, log: Callable[[str], None]
) -> bool:
    """True (and said) when Object Lock still holds ``key``, or its lock cannot be read:
    removing it would fail, or under versioning only hide it behind a delete marker."""
    try:
        until = repo.store.object_retention(key)
    except DrkitError as exc:
        out.errors.append(
            f"{repo.url}/{key}: unreferenced pack kept: its lock is unreadable: {exc}"
        )
        return True
    if until is None or until <= now:
        return False
    when = "legal hold" if until.year == dt.MAXYEAR else f"until {until.isoformat()}"
    why = f"{repo.url}/{key}: unreferenced pack kept: Object Lock retention {when}"
    out.locked_kept.append(why)
    log(why)
    return True
