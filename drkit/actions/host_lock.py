"""A host's lock with its policy's TTL: what backup and prune hold while they write."""

from __future__ import annotations

from contextlib import AbstractContextManager

from drkit.durations import parse_duration
from drkit.locks import HostLock, host_lock
from drkit.logs import Log
from drkit.policy.models import Policy
from drkit.repository.layout import Repository


def lock_host(
    policy: Policy, repo: Repository, operation: str, wait: float, log: Log
) -> AbstractContextManager[HostLock]:
    """``host_lock`` for ``policy``'s host with its ``lock_ttl``. Raises LockHeld (exit 5).

    The confirm delay is only waited where the store cannot compare-and-swap
    (an S3 server that ignores conditional writes); it must outlast a
    competitor's gap between reading "no lock" and writing its own:
    milliseconds on a local filesystem, up to a second against remote S3.
    """
    return host_lock(
        repo,
        policy.host,
        ttl=parse_duration(policy.lock_ttl).total_seconds(),
        wait=wait,
        log=log,
        operation=operation,
        confirm_delay=1.0 if repo.url.startswith("s3://") else 0.2,
    )
