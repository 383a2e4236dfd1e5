"""Run backups and prunes for several hosts: due-ness, host locks, notifications, metrics.

Around the single-host actions (``backup``, ``prune``) each host's run here

1. with ``due``, picks the sources whose schedule came due (drkit.actions.status);
2. takes the host lock (drkit.locks), and re-checks due-ness under it, so a
   run that finished meanwhile is not repeated;
3. pings start / success / fail with the run's log tail (drkit.notify, imported
   only when the policy has a channel: httpx is not free);
4. rewrites the policy's Prometheus textfile.

Hosts run concurrently; one host's failure never stops the others.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drkit.actions.backup import BackupResult, backup
from drkit.actions.common import open_repository
from drkit.actions.status import due_sources, last_drill_passed, newest_holding
from drkit.durations import parse_duration
from drkit.errors import DrkitError, PolicyError, UsageError
from drkit.locks import HostLock, LockHeld, host_lock
from drkit.policy.local_checks import run_problems
from drkit.policy.models import Policy, SnapshotSource, source_name
from drkit.repository.layout import Repository

if TYPE_CHECKING:
    from drkit.actions.prune import PruneResult
    from drkit.catalog.db import Catalog
    from drkit.notify import Notifier

Log = Callable[[str], None]
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
        error = str(exc) if isinstance(exc, DrkitError) else f"host {host}: internal error: {exc!r}"
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


# -- notifications and metrics ---------------------------------------------------


class Reporter:
    """Start / success / fail notifications of one host's run.

    ``log`` is what the run should log through: with notifications it also
    keeps the tail that the success and fail pings carry.
    """

    def __init__(self, policy: Policy, log: Log) -> None:
        self.policy = policy
        self.log = log
        self._notifier: Notifier | None = None
        self._tail: Callable[[], str] = lambda: ""
        self._run_id = ""
        config = policy.notify
        if config is not None and config.has_channels:
            from drkit.notify import LogTail, Notifier, new_run_id

            tail = LogTail(log)
            self.log = tail
            self._tail = tail.text
            self._notifier = Notifier.from_config(config, policy.host, tail)
            self._run_id = new_run_id()

    def start(self, started: dt.datetime) -> None:
        if self._notifier is not None:
            from drkit.notify import RunEvent

            self._notifier.send(RunEvent("start", self.policy.host, self._run_id, started=started))

    def done(self, started: dt.datetime, res: BackupResult) -> None:
        if self._notifier is None:
            return
        from drkit.notify import RunEvent

        m = res.manifest
        event = RunEvent(
            "fail" if res.partial else "success",
            self.policy.host,
            self._run_id,
            snapshot=m.snapshot,
            started=started,
            finished=utcnow(),
            stored_bytes=sum(x.stored_bytes for x in res.manifests),
            sources=res.sources,
            error="; ".join(res.failed) or None,
            log_tail=self._tail(),
        )
        self._notifier.send(event)

    def failed(self, started: dt.datetime, error: str) -> None:
        if self._notifier is None:
            return
        from drkit.notify import RunEvent

        # Not logged here: the CLI prints the error once; the ping body gets it appended.
        event = RunEvent(
            "fail",
            self.policy.host,
            self._run_id,
            started=started,
            finished=utcnow(),
            error=error,
            log_tail=self._tail(),
        )
        self._notifier.send(event)

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.close()


def write_metrics(policy: Policy, repo: Repository, log: Log) -> None:
    """Rewrite the host's series in the policy's Prometheus textfile (if it names one).

    Read from the repository, so the file is right even after runs by other
    machines. Problems only warn: metrics must not fail a backup.
    """
    path = policy.notify.prometheus_textfile if policy.notify else None
    if not path:
        return
    from pathlib import Path

    from drkit.notify.prometheus import metrics_for_host, write_textfile

    names = [source_name(s) for s in policy.source]
    try:
        newest = newest_holding(repo, policy.host, names)
        rpo = parse_duration(policy.rpo).total_seconds() if policy.rpo else None
        rows = metrics_for_host(
            policy.host,
            {m.snapshot: m for m in newest.values()}.values(),
            names,
            rpo_seconds=rpo,
            drill_success=last_drill_passed(repo, policy.host),
        )
        write_textfile(Path(path), rows)
    except (OSError, DrkitError) as exc:
        log(f"warning: host {policy.host}: could not write metrics to {path}: {exc}")


# -- prune -----------------------------------------------------------------------


def prune_one(
    policy: Policy,
    *,
    now: dt.datetime,
    dry_run: bool,
    grace: dt.timedelta,
    catalog: Catalog | None,
    wait: float = 0.0,
    log: Log = lambda _m: None,
) -> PruneResult:
    """Prune one host by its retention, under the host lock unless ``dry_run``; then sync
    the catalog for that host. Raises LockHeld, RepositoryError (listing)."""
    from drkit.actions.prune import prune
    from drkit.actions.status import drilled_snapshots, newest_drill_used

    repo = open_repository(policy)
    # A provider snapshot's retention is for the provider's copies, not for data.
    sources = {
        source_name(s): (None if isinstance(s, SnapshotSource) else s.retention)
        for s in policy.source
    }

    def run() -> PruneResult:
        return prune(
            repo, policy.host, policy.retention, now=now, dry_run=dry_run,
            drilled=drilled_snapshots(repo, policy.host, catalog),
            drilled_with=newest_drill_used(repo, policy.host), grace=grace,
            sources=sources, log=log,
        )  # fmt: skip

    if dry_run:
        return run()
    with lock_host(policy, repo, "prune", wait, log):
        result = run()
    if catalog is not None:
        from drkit.catalog.sync import sync

        try:
            sync(catalog, repo, hosts=[policy.host])
        except DrkitError as exc:
            log(f"warning: host {policy.host}: pruned, but the catalog was not synced: {exc}")
    return result
