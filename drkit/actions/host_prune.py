"""Prune one host of a fleet: by its policy's retention, under the host lock, then
re-sync the catalog for that host (drkit.actions.prune does the pruning itself)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from drkit.actions.host_lock import lock_host
from drkit.actions.repository_access import open_repository
from drkit.errors import DrkitError
from drkit.logs import Log, quiet, warn
from drkit.policy.models import MachineImageConfig, Policy, source_name

if TYPE_CHECKING:
    from drkit.actions.prune import PruneResult
    from drkit.catalog.db import Catalog


def prune_one(
    policy: Policy,
    *,
    now: dt.datetime,
    dry_run: bool,
    grace: dt.timedelta,
    catalog: Catalog | None,
    wait: float = 0.0,
    log: Log = quiet,
) -> PruneResult:
    """Prune one host by its retention, under the host lock unless ``dry_run``; then sync
    the catalog for that host. Raises LockHeld, RepositoryError (listing)."""
    from drkit.actions.prune import prune
    from drkit.actions.status import drilled_snapshots, newest_drill_used

    repo = open_repository(policy)
    # A provider snapshot's retention is for the provider's copies, not for data.
    sources = {
        source_name(s): (None if isinstance(s, MachineImageConfig) else s.retention)
        for s in policy.source
    }

    def run() -> PruneResult:
        return prune(
            repo,
            policy.host,
            policy.retention,
            now=now,
            dry_run=dry_run,
            drilled=drilled_snapshots(repo, policy.host, catalog),
            drilled_with=newest_drill_used(repo, policy.host),
            grace=grace,
            sources=sources,
            repack=policy.repository.repack or None,
            log=log,
        )

    if dry_run:
        return run()
    with lock_host(policy, repo, "prune", wait, log):
        result = run()
    if catalog is not None:
        from drkit.catalog.sync import sync

        try:
            sync(catalog, repo, hosts=[policy.host])
        except DrkitError as exc:
            warn(log, f"host {policy.host}: pruned, but the catalog was not synced: {exc}")
    return result
