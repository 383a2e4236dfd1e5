"""What prune's pass over chunks reports, and whether Object Lock holds a pack.

The pass itself (following repacks' move records, and repacking) is
``drkit.actions.repack.collect_packs``; this module keeps the pieces it shares.

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
from collections.abc import Callable
from dataclasses import dataclass, field

from drkit.errors import DrkitError
from drkit.repository.layout import Repository


@dataclass
class ChunkCollection:
    removed: int = 0  # chunk objects (snapshots from before packs)
    packs_removed: int = 0
    freed_bytes: int = 0
    young_kept: int = 0
    locked_kept: list[str] = field(default_factory=list)  # pack keys, with why
    errors: list[str] = field(default_factory=list)


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
