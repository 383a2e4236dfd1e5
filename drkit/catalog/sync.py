"""Rebuild the catalog's view of one repository from the repository alone.

A fresh laptop in an incident needs only the bucket (and the identity to
restore): ``sync`` reads every committed snapshot's manifest and makes the
catalog agree with it. Manifests carry no secrets, so neither does the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drkit.catalog.db import Catalog
from drkit.repository.layout import Repository, manifest_key


@dataclass(frozen=True)
class SyncResult:
    added: int  # committed snapshots that were not in the catalog
    removed: int  # catalogued snapshots no longer committed in the repository
    hosts: list[str]  # the hosts that were synced
    problems: list[str] = field(default_factory=list)  # untrusted snapshots, one line each


def sync(catalog: Catalog, repo: Repository, hosts: list[str] | None = None) -> SyncResult:
    """Make the catalog's snapshots of ``repo.url`` match the repository's committed ones.

    - Every committed snapshot (one with a manifest) is upserted, artifacts replaced.
    - Snapshot directories without a manifest (failed or in-progress runs) are not catalogued.
    - Catalogued snapshots of this repository that are no longer committed are removed.
      With ``hosts`` given, only those hosts are synced and only their rows removed;
      without it, every host in the repository is synced and rows of hosts that have
      disappeared from it are removed too.
    - Only trusted snapshots are imported (their manifest's signature checks against
      the keys the local policy pins; Repository.read_host). An unreadable or
      untrusted one is reported in ``problems`` and does not stop the sync; a row
      the catalog had for it is removed (the catalog never holds what restore
      would refuse).

    Repository listing errors propagate before anything is removed.
    """
    url = repo.url
    selected = sorted(set(hosts)) if hosts is not None else repo.hosts()
    before = {
        (row.host, row.snapshot_id)
        for row in catalog.snapshots(repository_url=url)
        if hosts is None or row.host in selected
    }
    committed: set[tuple[str, str]] = set()
    problems: list[str] = []
    added = 0
    for host in selected:
        view = repo.read_host(host)
        for rejected in view.untrusted:
            problems.append(f"{rejected.reason}; not imported")
        for manifest in view.trusted:
            committed.add((host, manifest.snapshot))
            origin = f"{url}/{manifest_key(host, manifest.snapshot)}"
            try:
                created = catalog.record_snapshot(url, manifest)
            except ValueError as exc:
                problems.append(f"{origin}: {exc}")
                continue
            added += created
    removed = 0
    for host, snapshot_id in sorted(before - committed):
        removed += catalog.forget_snapshot(url, host, snapshot_id)
    return SyncResult(added=added, removed=removed, hosts=selected, problems=problems)
