"""Back up several hosts concurrently; one host's failure never stops the others."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drkit.actions.backup import backup
from drkit.actions.common import open_repository
from drkit.errors import DrkitError
from drkit.policy.models import Policy

if TYPE_CHECKING:
    from drkit.catalog.db import Catalog


@dataclass(frozen=True)
class HostResult:
    host: str
    ok: bool
    snapshot: str | None = None
    repository: str | None = None
    artifacts: int = 0
    plain_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        out["status"] = "success" if self.ok else "failed"
        del out["ok"]
        return out


def backup_one(
    policy: Policy, catalog: Callable[[], Catalog] | None, log: Callable[[str], None]
) -> HostResult:
    """Back up one host; every error becomes a failed result naming the host."""
    try:
        repo = open_repository(policy.repository)
        res = backup(policy, repo, catalog=catalog, log=log)
    except DrkitError as exc:
        return HostResult(policy.host, False, error=str(exc))
    except Exception as exc:
        return HostResult(policy.host, False, error=f"host {policy.host}: internal error: {exc!r}")
    m = res.manifest
    return HostResult(
        policy.host,
        True,
        snapshot=m.snapshot,
        repository=repo.url,
        artifacts=len(m.artifacts),
        plain_bytes=sum(a.plain_size for a in m.artifacts),
        stored_bytes=m.stored_bytes,
        seconds=round(res.seconds, 2),
    )


def backup_fleet(
    policies: list[Policy],
    *,
    jobs: int,
    catalog: Callable[[], Catalog] | None,
    log: Callable[[str], None],
    on_done: Callable[[HostResult], None] = lambda _r: None,
) -> list[HostResult]:
    """Run ``backup_one`` for every policy, at most ``jobs`` at a time, in policy order."""
    lock = threading.Lock()

    def run(policy: Policy) -> HostResult:
        result = backup_one(policy, catalog, log)
        with lock:
            on_done(result)
        return result

    if jobs <= 1 or len(policies) == 1:
        return [run(p) for p in policies]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="drkit-host") as pool:
        return list(pool.map(run, policies))
