"""What `drkit snapshots` lists of one host: its trusted snapshots (one row each), the
untrusted ones with the reason, and incomplete ones (no manifest) with when prune
removes them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from drkit.actions.repository_access import open_repository
from drkit.policy.models import Policy
from drkit.repository.manifest import Manifest


@dataclass
class HostListing:
    rows: list[dict[str, Any]] = field(default_factory=list)
    untrusted: list[dict[str, Any]] = field(default_factory=list)
    incomplete: list[dict[str, Any]] = field(default_factory=list)


def list_host(policy: Policy, now: dt.datetime) -> HostListing:
    """``policy``'s host's snapshots as the listing shows them. Raises what opening or
    reading its repository raises (the caller reports the host as unread)."""
    from drkit.actions.prune import incomplete_snapshots

    repo = open_repository(policy)
    view = repo.read_host(policy.host)
    left = incomplete_snapshots(repo, policy.host, now)
    return HostListing(
        rows=[_snapshot_row(m) for m in view.trusted],
        untrusted=[
            {"host": r.host, "snapshot": r.snapshot, "reason": r.reason} for r in view.untrusted
        ],
        incomplete=[{"host": policy.host, **i.as_dict()} for i in left],
    )


def _snapshot_row(m: Manifest) -> dict[str, Any]:
    return {
        "host": m.host,
        "snapshot": m.snapshot,
        "finished": m.finished,
        "sources": [s.name for s in m.sources],
        "warnings": {s.name: s.warnings for s in m.sources if s.warnings},
        "stored_bytes": m.stored_bytes,
        "status": m.status,
        "provider_snapshots": _provider_snapshots(m.extra),
    }


# What a listing shows of a provider snapshot: the manifest records no secret, but
# a whitelist keeps anything a later manifest field might add out of the output.
_PROVIDER_SNAPSHOT_FIELDS = ("provider", "id", "name", "size_gb", "created", "status")


def _provider_snapshots(extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per source, the provider snapshot a snapshot's manifest records (empty if none)."""
    listed = extra.get("provider_snapshots") or {}
    return {
        str(source): {k: info.get(k) for k in _PROVIDER_SNAPSHOT_FIELDS}
        for source, info in listed.items()
        if isinstance(info, dict)
    }
