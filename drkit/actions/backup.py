"""Back up one host: every source through the pipeline, facts, then the manifest.

The manifest is written last and is the commit. If a data source fails, the
run removes what it wrote for this snapshot, records the failure and
re-raises: a failed dump never looks like a good backup.

Provider snapshots (``snapshot`` sources) are not streamed: each is started
through the provider's API before the data sources and runs beside them. The
data snapshot is committed as soon as the data sources are done, whether or
not the provider snapshots are (a Vultr snapshot can take 30 minutes: the
data must not wait for it, nor be lost with the run if it is killed
meanwhile). The provider snapshots are then awaited (each bounded by its
``wait_timeout``) and committed in a snapshot of their own, holding one
source without artifacts per provider snapshot, its outcome in the
encrypted facts and its provider id, name, size and creation time in the
manifest (``extra.provider_snapshots``). A failed or timed-out one makes the
run *partial*; it is in no manifest's sources, so ``backup --due`` retries it.
A run with only provider snapshots commits one snapshot, as any other.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from drkit.actions.backup_coverage import UncoveredData, uncovered_data
from drkit.actions.repository_access import require_object_lock
from drkit.actions.snapshot_writer import LockCheck, SnapshotWriter
from drkit.errors import DrkitError, UsageError
from drkit.logs import Log, Meter, context, meter, quiet, warn
from drkit.pipeline.streams import TeeReader
from drkit.policy.models import MachineImageConfig, Policy, SourceConfigBase, source_name
from drkit.remote.base import Runner
from drkit.remote.factory import open_runner
from drkit.repository.layout import Repository, snapshot_prefix
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord, new_snapshot_id
from drkit.sources.registry import build_source

if TYPE_CHECKING:
    from drkit.actions.provider_snapshot import SnapshotJob, SnapshotOutcome
    from drkit.catalog.db import Catalog, RunStatus


# Manifest ``extra`` member: how many data-bearing things discovery found uncovered.
COVERAGE_EXTRA = "discover_uncovered"


@dataclass(frozen=True)
class BackupResult:
    """One run: ``manifest`` is the first snapshot it committed (the data's, if any);
    ``provider_manifest`` the provider snapshots' when they were committed after it."""

    host: str
    manifest: Manifest
    seconds: float
    failed: tuple[str, ...] = ()  # errors of sources that failed without stopping the commit
    failed_sources: tuple[str, ...] = ()  # their names, in policy order
    provider_manifest: Manifest | None = None
    # What a source wants seen although it succeeded (facts' "warnings"): files that
    # vanished while read, NATS memory streams left out...
    warnings: tuple[str, ...] = ()
    # What discovery found holding data no source covers (None: not checked this run).
    coverage: UncoveredData | None = None

    @property
    def partial(self) -> bool:
        return bool(self.failed)

    @property
    def manifests(self) -> tuple[Manifest, ...]:
        """Every snapshot the run committed, in commit order."""
        later = () if self.provider_manifest is None else (self.provider_manifest,)
        return (self.manifest, *later)

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the sources committed, over every snapshot of the run."""
        return tuple(s.name for m in self.manifests for s in m.sources)


def backup(
    policy: Policy,
    repo: Repository,
    *,
    catalog: Callable[[], Catalog] | None = None,
    runner: Runner | None = None,
    log: Log = quiet,
    sources: Collection[str] | None = None,
    started: dt.datetime | None = None,
    lock: LockCheck | None = None,
) -> BackupResult:
    """Back up ``policy``'s sources (``sources``: only these names) into ``repo``.

    ``started``: the run's start time, which names the snapshot (default now).
    ``lock``: checked just before each commit, so a run that lost its host
    lock refuses to commit. Raises RepositoryError before writing anything if
    the policy sets ``immutable_days`` and the bucket has no Object Lock;
    DrkitError when a data source fails (or every source failed); returns a
    partial result when only provider snapshots failed (or only their commit,
    after the data's).
    """
    host = policy.host
    configs = [c for c in policy.source if sources is None or source_name(c) in sources]
    if not configs:
        raise UsageError(f"host {host}: no source selected")
    require_object_lock(repo, policy.repository, host)  # fail closed before any write
    repo.trust.signer_for(host)  # refused here: a snapshot restore would not trust
    machines = [c for c in configs if isinstance(c, MachineImageConfig)]
    data = [c for c in configs if not isinstance(c, MachineImageConfig)]
    if data and runner is None:
        runner = open_runner(host, policy.connection)
    repo.init()
    started = started or dt.datetime.now(dt.UTC)
    writer = SnapshotWriter(policy, repo, started, lock=lock, log=log)

    jobs = _start_machines(policy, machines, started, log)
    run = _Run()
    try:
        if data:
            assert runner is not None
            _commit_data(run, writer, host, data, runner, started, log)
            if any(not job.done() for job in jobs):
                names = ", ".join(source_name(j.config) for j in jobs if not j.done())
                log(f"{host}: data committed; waiting for provider snapshot(s) {names}")
        if jobs:
            _commit_machines(run, writer, host, jobs, started)
    except BaseException as exc:
        _abandon(run, exc, repo, host, jobs, log)
        if not run.committed or not isinstance(exc, DrkitError):
            if catalog:
                error = str(exc) or type(exc).__name__
                _record(catalog, repo, host, started, run.committed, "failed", error, log)
            raise
        # The data is committed; only committing the provider snapshots failed.
        run.failed.append(str(exc))
    return _finish(policy, repo, configs, run, jobs, catalog, started, writer.t0, log)


@dataclass
class _Run:
    """What a run has done so far, for ``backup``'s steps."""

    committed: list[Manifest] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # errors of sources that failed
    writing: str | None = None  # the snapshot being written, removed if the run fails
    facts: dict[str, Any] = field(default_factory=dict)
    coverage: UncoveredData | None = None


def _commit_data(
    run: _Run,
    writer: SnapshotWriter,
    host: str,
    data: Sequence[SourceConfigBase],
    runner: Runner,
    started: dt.datetime,
    log: Log,
) -> None:
    """Stream every data source into one new snapshot and commit it.

    First, once per run, what the host holds that no source of the policy covers
    (#18): before the sources, so the host is seen as it normally runs (a compose or
    stop-copy source stops containers during its copy). Advisory: bounded by its
    time limit, it never fails the backup; its count goes into the manifest, where
    the metrics read it back."""
    run.writing = new_snapshot_id(started)
    if writer.policy.discover:
        run.coverage = uncovered_data(writer.policy, runner)
        for line in run.coverage.lines():
            warn(log, line)
    records = [
        _back_up_source(host, config, runner, writer.storer(run.writing), run.facts, log)
        for config in data
    ]
    extra = dict(writer.sealed_extra)
    if run.coverage and run.coverage.count is not None:  # a count, never what it names
        extra[COVERAGE_EXTRA] = run.coverage.count
    run.committed.append(writer.commit(run.writing, records, run.facts, extra))
    run.writing = None


def _commit_machines(
    run: _Run, writer: SnapshotWriter, host: str, jobs: list[SnapshotJob], started: dt.datetime
) -> None:
    """Wait for the provider snapshots; commit those that succeeded in a snapshot of their
    own. Raises DrkitError when they all failed and no data was committed either."""
    outcomes = [job.result() for job in jobs]  # each bounded by its wait_timeout
    for o in outcomes:
        if not o.ok:
            run.failed.append(o.error or f"host {host}: source {o.source}: failed")
    if any(o.ok for o in outcomes):
        # Same start time as the data: the provider's disk image is from then.
        run.writing = new_snapshot_id(started)
        run.committed.append(writer.commit(run.writing, *_machine_records(outcomes)))
        run.writing = None
    elif not run.committed:
        raise DrkitError(f"host {host}: nothing to commit: {'; '.join(run.failed)}")


def _abandon(
    run: _Run,
    exc: BaseException,
    repo: Repository,
    host: str,
    jobs: list[SnapshotJob],
    log: Log,
) -> None:
    """On a failure: cancel the provider snapshots, remove the snapshot being written."""
    for job in jobs:
        job.cancel()
    if run.writing is not None:
        _discard(repo, host, run.writing, log)
        # The run fails on it: say what the user has and does next. (After the data
        # was committed, a failed provider-snapshot commit is reported as it is.)
        if isinstance(exc, DrkitError) and not run.committed and "not committed" not in str(exc):
            exc.reword(
                f"{exc}; snapshot not committed (the earlier snapshots are unchanged): "
                "run the backup again once the cause is fixed"
            )


def _finish(
    policy: Policy,
    repo: Repository,
    configs: Sequence[SourceConfigBase],
    run: _Run,
    jobs: list[SnapshotJob],
    catalog: Callable[[], Catalog] | None,
    started: dt.datetime,
    t0: float,
    log: Log,
) -> BackupResult:
    """After a commit: index the run, prune old provider snapshots, build the result."""
    host = policy.host
    committed, failed = run.committed, run.failed
    done = {s.name for m in committed for s in m.sources}
    failed_names = tuple(source_name(c) for c in configs if source_name(c) not in done)
    status: RunStatus = "partial" if failed else "success"
    if catalog:
        _record(catalog, repo, host, started, committed, status, "; ".join(failed) or None, log)
    _prune_machines(policy, [j.config for j in jobs if source_name(j.config) in done], started, log)
    seconds = time.monotonic() - t0
    if failed:
        warn(log, f"{host}: run partial: failed source(s) {', '.join(failed_names)}")
    warnings = tuple(
        f"source {name}: {text}"
        for name, f in run.facts.items()
        if isinstance(f, dict)
        for text in f.get("warnings", [])
    ) + tuple(  # the summary names the host already
        line.removeprefix(f"host {host}: ")
        for line in (run.coverage.lines() if run.coverage else ())
    )
    return BackupResult(
        host,
        committed[0],
        seconds,
        tuple(failed),
        failed_names,
        committed[1] if len(committed) > 1 else None,
        warnings,
        run.coverage,
    )


def _back_up_source(
    host: str,
    config: SourceConfigBase,
    runner: Runner,
    store: Callable[[str, BinaryIO], ArtifactRecord],
    facts: dict[str, Any],
    log: Log,
) -> SourceRecord:
    """Stream one data source's artifacts; its facts go into ``facts``."""
    source = build_source(config, runner)
    s0 = time.monotonic()
    records: list[ArtifactRecord] = []
    with context(source=source.name):
        log(f"{host}: {source.name} ({source.kind}) ...")
        try:
            with meter("backup", source.name) as m:
                for artifact in source.artifacts():
                    with artifact.open() as stream:
                        plain = TeeReader(stream, _tap(m, artifact.observe))
                        records.append(store(f"{source.name}/{artifact.name}", plain))  # type: ignore[arg-type]
                    log(
                        f"{host}: {source.name}/{artifact.name}: {records[-1].plain_size} "
                        f"bytes -> {records[-1].stored_size} stored"
                    )
        except DrkitError as exc:
            _with_context(exc, host, source.name)
            raise
        finally:
            source.finish()
        facts[source.name] = {"kind": source.kind, **source.facts}
        warned = source.facts.get("warnings") or []
        for text in warned:  # also in the summary; here with the time, host and source
            warn(log, f"{host}: source {source.name}: {text}")
    return SourceRecord(
        source.name, source.kind, records, time.monotonic() - s0, warnings=len(warned)
    )


def _tap(m: Meter, observe: Callable[[bytes], None] | None) -> Callable[[bytes], None]:
    """The artifact's own observer (a tar scanner), counting the bytes read for progress
    on the way: the one pass the backup makes."""
    if observe is None:
        return m.counting

    def both(data: bytes) -> None:
        m.read += len(data)
        observe(data)

    return both


def _start_machines(
    policy: Policy, configs: list[MachineImageConfig], started: dt.datetime, log: Log
) -> list[SnapshotJob]:
    if not configs:
        return []
    # Imported only here: provider clients are optional and not small.
    from drkit.actions.provider_snapshot import start_snapshot

    for config in configs:
        log(f"{policy.host}: {source_name(config)} ({config.provider} snapshot) started")
    return [start_snapshot(policy, c, started, log=log) for c in configs]


def _machine_records(
    outcomes: list[SnapshotOutcome],
) -> tuple[list[SourceRecord], dict[str, Any], dict[str, Any]]:
    """The provider snapshots' snapshot: a source without artifacts per success, every
    outcome in the (encrypted) facts, and what identifies each provider snapshot in the
    manifest: provider, id, name, size, creation time (no resource id, no secret)."""
    records: list[SourceRecord] = []
    facts: dict[str, Any] = {}
    listed: dict[str, Any] = {}
    for outcome in outcomes:
        facts[outcome.source] = outcome.facts()
        if outcome.snapshot is not None:
            records.append(SourceRecord(outcome.source, "snapshot", [], outcome.seconds))
            listed[outcome.source] = {"provider": outcome.provider, **outcome.snapshot.facts()}
    extra: dict[str, Any] = {"provider_snapshots": listed}
    failed = [o.source for o in outcomes if not o.ok]
    if failed:
        # Names only (the errors are in the encrypted facts): listings show the gap.
        extra["failed_sources"] = failed
    return records, facts, extra


def _prune_machines(
    policy: Policy, configs: list[MachineImageConfig], now: dt.datetime, log: Log
) -> None:
    """Apply each source's own retention to drkit's provider snapshots; problems only warn
    (the new snapshot exists; an old one left over costs money, not data)."""
    from drkit.actions.provider_snapshot import prune_provider_snapshots

    for config in configs:
        if config.retention is None:
            continue  # no rule: keep every snapshot, so nothing to list
        try:
            report = prune_provider_snapshots(policy, config, now=now, log=log)
        except DrkitError as exc:
            warn(log, str(exc))
            continue
        for decision, why in report.failed:
            warn(log, f"could not delete provider snapshot {decision.snapshot.id}: {why}")


def _record(
    catalog: Callable[[], Catalog],
    repo: Repository,
    host: str,
    started: dt.datetime,
    manifests: list[Manifest],
    status: RunStatus,
    error: str | None,
    log: Log,
) -> None:
    """Index the run once the data path is done.

    The catalog is opened only now (``catalog`` is a factory), after the streams
    are released, which kept the backup's peak memory lower while it loaded
    SQLAlchemy (docs/design-notes.md). The catalog is a cache (`catalog sync` rebuilds
    it), so failing to index never turns a committed snapshot into a failure.
    """
    try:
        cat = catalog()
        run_id = cat.start_run(host, repo.url, started=started)
        for manifest in manifests:
            cat.record_snapshot(repo.url, manifest)
        # The run points at its first snapshot (the data's, when there is one).
        first = manifests[0].snapshot if manifests else None
        cat.finish_run(run_id, status, first, error)
        cat.close()
    except DrkitError as exc:
        ids = ", ".join(m.snapshot for m in manifests)
        what = f"snapshot {ids} committed, but" if manifests else "the run failed and"
        warn(log, f"{host}: {what} the catalog was not updated: {exc}")


def _with_context(exc: DrkitError, host: str, source: str) -> None:
    """Name host and source once: an error naming both is kept as it is; one naming only
    the host (a runner's: connection lost, sudo needs a password) is reworded to name
    the source too (the same error: its class and attributes stay).

    Either way the error's ``source`` is set to ``source``, for callers that list
    failed sources (drkit.actions.fleet) without parsing the message.
    """
    exc.source = source
    context = f"host {host}: source {source}"
    text = str(exc)
    if not hasattr(exc, "problems") and not text.startswith((context + ":", context + " (")):
        exc.reword(f"{context}: {text.removeprefix(f'host {host}: ')}")


def _discard(repo: Repository, host: str, snapshot: str, log: Log) -> None:
    """Best effort: remove objects of an uncommitted snapshot (prune catches leftovers)."""
    try:
        for info in list(repo.store.list(snapshot_prefix(host, snapshot))):
            repo.store.delete(info.key)
    except Exception as exc:
        warn(log, f"{host}: could not remove partial snapshot {snapshot}: {exc}")
