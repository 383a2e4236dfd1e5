"""Remove a host's chunks that no kept snapshot references (after prune).

Chunks are shared between snapshots (``repository.dedup``), so removing a
snapshot removes its index, not its chunks. This pass reads the index of
every chunked artifact of the snapshots that stay (plain JSON: no identity
needed) and removes the chunks none of them names. It runs under the host
lock like prune, so no backup of this host is adding references meanwhile;
as a second line of defence, chunks younger than ``grace`` stay (a backup
stores its chunks before its index and manifest).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from drkit.errors import DrkitError
from drkit.pipeline import chunked
from drkit.pipeline.chunk_index import IndexReader
from drkit.repository.chunks import chunk_key, list_chunks
from drkit.repository.layout import Repository, object_key
from drkit.repository.manifest import Manifest


@dataclass
class ChunkCollection:
    removed: int = 0
    freed_bytes: int = 0
    young_kept: int = 0
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
                    referenced.update(chunk_key(host, index.rset, ref.id) for ref in index)
            except DrkitError as exc:
                out.errors.append(f"host {host}: chunks not collected: {exc}")
                return out
    verb = "would remove" if dry_run else "removing"
    garbage = []
    for info in list_chunks(repo.store, host):
        if info.key in referenced:
            continue
        if now - info.modified < grace:
            out.young_kept += 1
            continue
        garbage.append(info)
    if garbage:
        total = sum(i.size for i in garbage)
        log(f"{host}: {verb} {len(garbage)} unreferenced chunk(s), {total} bytes")
    for info in garbage:
        if not dry_run:
            try:
                repo.store.delete(info.key)
            except DrkitError as exc:
                out.errors.append(f"host {host}: could not remove chunk {info.key}: {exc}")
                continue
        out.removed += 1
        out.freed_bytes += info.size
    return out
