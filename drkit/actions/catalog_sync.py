"""`drkit catalog sync` for one host: rebuild its catalog rows from its repository alone
(drkit.catalog.sync does the rebuilding)."""

from __future__ import annotations

from typing import Any

from drkit.actions.repository_access import open_repository
from drkit.catalog.db import Catalog
from drkit.catalog.sync import sync
from drkit.policy.models import Policy


def sync_host(catalog: Catalog, policy: Policy) -> dict[str, Any]:
    """Sync ``policy``'s host into ``catalog``; the row `catalog sync` prints and emits."""
    repo = open_repository(policy)
    res = sync(catalog, repo, hosts=[policy.host])
    return {
        "host": policy.host,
        "repository": repo.url,
        "added": res.added,
        "removed": res.removed,
        "problems": res.problems,
    }
