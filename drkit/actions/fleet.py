"""Run backups for several hosts: due-ness, host locks, notifications, metrics.

Around the single-host ``backup`` each host's run here

1. with ``due``, picks the sources whose schedule came due (drkit.actions.status);
2. takes the host lock (drkit.locks), and re-checks due-ness under it, so a
   run that finished meanwhile is not repeated;
3. pings start / success / fail with the run's log tail (drkit.actions.run_notify);
4. rewrites the policy's Prometheus textfile (drkit.actions.metrics).

Hosts run concurrently; one host's failure never stops the others. Pruning a host
is drkit.actions.host_prune.
"""

from __future__ import annotations

import datetime as dt
import errno
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drkit.actions.backup import BackupResult, backup
from drkit.actions.host_lock import lock_host
from drkit.actions.metrics import write_metrics
from drkit.actions.repository_access import open_repository
from drkit.actions.run_notify import Reporter
from drkit.actions.status import due_sources
from drkit.errors import DrkitError, PolicyError, UsageError
from drkit.locks import LockHeld
from drkit.logs import Log, context
from drkit.policy.local_checks import run_problems
from drkit.policy.models import Policy
from drkit.repository.layout import Repository

if TYPE_CHECKING:
    from drkit.catalog.db import Catalog

Clock = Callable[[], dt.datetime]
# Hosts whose run did something, for the summary.
RAN = ("success", "partial", "failed")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class HostResult:
    """One host's run. ``status``: success, partial (committed, but a provider snapshot
    failed), failed, locked (another run holds the host; nothing done) or not-due.

    ``failed_sources``: names of the sources that failed, in run order: for a partial
    run those no committed snapshot holds, for a failed one the source the error
    was raised in (empty when the run failed outside any source).
    """

    host: str
    status: str
    snapshot: str | None = None
    repository: str | None = None
    artifacts: int = 0
    plain_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    sources: tuple[str, ...] = ()
    error: str | None = None
    failed_sources: tuple[str, ...] = ()
    # Every snapshot committed, when provider snapshots were committed after the data's.
    snapshots: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # BackupResult.warnings
    # Failed before anything was read, on a policy or usage error (exit 2 when every
    # host was refused so): a local file the policy names, an untrusted signing key.
    refused: bool = False

    @property
    def ok(self) -> bool:
        """A snapshot was committed."""
        return self.status in ("success", "partial")

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None and v != ()}
        if self.sources:
            out["sources"] = list(self.sources)
        if self.failed_sources:
            out["failed_sources"] = list(self.failed_sources)
        if self.snapshots:
            out["snapshots"] = list(self.snapshots)
        return out


def due_names(policy: Policy, repo: Repository, now: dt.datetime) -> list[str]:
    return [d.source for d in due_sources(policy, repo, now) if d.due]


def backup_one(
    policy: Policy,
    catalog: Callable[[], Catalog] | None,
    log: Log,
    *,
    clock: Clock = utcnow,
    due: bool = False,
    wait: float = 0.0,
    only: Collection[str] | None = None,
) -> HostResult:
    """Back up one host under its lock; every error becomes a result naming the host.

    ``due``: only the sources whose schedule came due (none: status not-due).
    ``wait``: seconds to wait for a held lock before giving up (status locked).
    ``only``: only these sources (with ``due``: those of them that came due).
    """
    with context(host=policy.host):
        return _backup_one(policy, catalog, log, clock=clock, due=due, wait=wait, only=only)


def _backup_one(
    policy: Policy,
    catalog: Callable[[], Catalog] | None,
    log: Log,
    *,
    clock: Clock,
    due: bool,
    wait: float,
    only: Collection[str] | None,
) -> HostResult:
    host = policy.host
    reporter = Reporter(policy, log)
    log = reporter.log
    repo: Repository | None = None
    started: dt.datetime | None = None
    try:
        problems = run_problems(policy)
        if problems:
            raise PolicyError(problems)
        repo = open_repository(policy, signing=True)
        if due and not [n for n in due_names(policy, repo, clock()) if only is None or n in only]:
            return HostResult(host, "not-due")
        with lock_host(policy, repo, "backup", wait, log) as held:
            started = clock()
            names = due_names(policy, repo, started) if due else None
            if only is not None:
                names = [n for n in (names if names is not None else only) if n in only]
            if names is not None and not names:  # another run did it meanwhile
                return HostResult(host, "not-due")
            reporter.start(started)
            res = backup(
                policy, repo, catalog=catalog, log=log, sources=names, started=started, lock=held
            )
        reporter.done(started, res)
        result = _result(repo, res)
    except LockHeld as exc:
        return HostResult(host, "locked", error=str(exc))
    except Exception as exc:
        # Also before the run started (repository unreachable): the monitor hears of it.
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            error = (
                f"host {host}: too many open files ({exc.strerror}): raise the open-file "
                "limit (ulimit -n, LimitNOFILE=) or run fewer --jobs, then run again"
            )
        else:
            error = (
                str(exc) if isinstance(exc, DrkitError) else f"host {host}: internal error: {exc!r}"
            )
        reporter.failed(started or clock(), error)
        source = exc.source if isinstance(exc, DrkitError) else None
        refused = isinstance(exc, UsageError | PolicyError)
        result = HostResult(
            host, "failed", error=error, failed_sources=(source,) if source else (), refused=refused
        )
    finally:
        reporter.close()
    if repo is not None:
        write_metrics(policy, repo, log)
    return result


def _result(repo: Repository, res: BackupResult) -> HostResult:
    artifacts = [a for m in res.manifests for a in m.artifacts]
    return HostResult(
        res.host,
        "partial" if res.partial else "success",
        snapshot=res.manifest.snapshot,
        repository=repo.url,
        artifacts=len(artifacts),
        plain_bytes=sum(a.plain_size for a in artifacts),
        stored_bytes=sum(m.stored_bytes for m in res.manifests),
        seconds=round(res.seconds, 2),
        sources=res.sources,
        error="; ".join(res.failed) or None,
        failed_sources=res.failed_sources,
        snapshots=tuple(m.snapshot for m in res.manifests) if res.provider_manifest else (),
        warnings=res.warnings,
    )


def backup_fleet(
    policies: list[Policy],
    *,
    jobs: int,
    catalog: Callable[[], Catalog] | None,
    log: Log,
    on_done: Callable[[HostResult], None] = lambda _r: None,
    clock: Clock = utcnow,
    due: bool = False,
    wait: float = 0.0,
    only: Collection[str] | None = None,
) -> list[HostResult]:
    """Run ``backup_one`` for every policy, at most ``jobs`` at a time, in policy order."""
    lock = threading.Lock()

    def run(policy: Policy) -> HostResult:
        result = backup_one(policy, catalog, log, clock=clock, due=due, wait=wait, only=only)
        with lock:
            on_done(result)
        return result

    if jobs <= 1 or len(policies) == 1:
        return [run(p) for p in policies]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="drkit-host") as pool:
        return list(pool.map(run, policies))


def exit_code(results: list[HostResult]) -> int:
    """The documented exit code of a run over ``results`` (see ``exit_code_of``); 2 when
    every host was refused on a policy or usage error (nothing was read)."""
    if results and all(r.refused for r in results):
        return 2
    return exit_code_of([r.status for r in results])


def exit_code_of(statuses: list[str]) -> int:
    """0 all fine (or nothing due); 1 every host failed; 3 some failed or were partial;
    5 another run held a host's lock and nothing else went wrong."""
    failed = statuses.count("failed")
    if failed and failed == len(statuses):
        return 1
    if failed or "partial" in statuses:
        return 3
    if "locked" in statuses:
        return 5
    return 0
