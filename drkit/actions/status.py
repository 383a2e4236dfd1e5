"""Freshness of a host's backups against its RPO."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from drkit.actions.common import open_repository

if TYPE_CHECKING:
    from drkit.catalog.db import Catalog
from drkit.durations import format_duration, parse_duration
from drkit.policy.models import Policy
from drkit.repository.manifest import snapshot_time


def host_status(
    policy: Policy, catalog: Catalog | None, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Newest committed snapshot (from the repository itself), its age, and RPO breach."""
    now = now or dt.datetime.now(dt.UTC)
    repo = open_repository(policy.repository)
    committed = [r.snapshot for r in repo.snapshots(policy.host) if r.committed]
    last = committed[-1] if committed else None
    age = now - snapshot_time(last) if last else None
    rpo = parse_duration(policy.rpo) if policy.rpo else None
    breach = rpo is not None and (age is None or age > rpo)
    row: dict[str, Any] = {
        "host": policy.host,
        "repository": repo.url,
        "snapshots": len(committed),
        "last_snapshot": last,
        "age": format_duration(age) if age is not None else None,
        "age_seconds": int(age.total_seconds()) if age is not None else None,
        "rpo": policy.rpo,
        "breach": breach,
    }
    if catalog is not None:
        run = catalog.last_run(policy.host)
        if run is not None and run.status == "failed":
            row["last_error"] = run.error
    return row
