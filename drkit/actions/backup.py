"""Back up one host: every source through the pipeline, facts, then the manifest.

The manifest is written last and is the commit. If a data source fails, the
run removes what it wrote for this snapshot, records the failure and
re-raises: a failed dump never looks like a good backup.

Provider snapshots (``snapshot`` sources) are not streamed: each is started
through the provider's API before the data sources and collected after them,
so a slow one never holds the data up. Its outcome goes into the encrypted
facts; a successful one is also listed in the manifest (no artifacts). A
failed or timed-out one leaves the data snapshot committed and makes the run
*partial*; it is not listed in the manifest, so ``backup --due`` retries it.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from drkit import __version__
from drkit.actions.common import open_runner, policy_digest, require_object_lock

if TYPE_CHECKING:
    from drkit.actions.provider_snapshot import SnapshotJob
    from drkit.catalog.db import Catalog
    from drkit.catalog.models import RunStatus
from drkit.errors import DrkitError, UsageError
from drkit.pipeline.age import read_recipients
from drkit.pipeline.codec import FORMAT, Digests, encode
from drkit.pipeline.streams import TeeReader
from drkit.policy.models import Policy, SnapshotSource, SourceBase, source_name
from drkit.remote.base import Runner
from drkit.repository.layout import FACTS, Repository, object_key, snapshot_prefix
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord, new_snapshot_id
from drkit.sources.registry import build_source

Log = Callable[[str], None]


class LockCheck(Protocol):
    """What ``backup`` asks of a held host lock (drkit.locks.HostLock)."""

    def check(self) -> None:
        """Raise if another run took the lock over."""


@dataclass(frozen=True)
class BackupResult:
    host: str
    manifest: Manifest
    seconds: float
    failed: tuple[str, ...] = ()  # errors of sources that failed without stopping the commit

    @property
    def partial(self) -> bool:
        return bool(self.failed)


def backup(
    policy: Policy,
    repo: Repository,
    *,
    catalog: Callable[[], Catalog] | None = None,
    runner: Runner | None = None,
    log: Log = lambda _msg: None,
    sources: Collection[str] | None = None,
    started: dt.datetime | None = None,
    lock: LockCheck | None = None,
) -> BackupResult:
    """Back up ``policy``'s sources (``sources``: only these names) into ``repo``.

    ``started``: the run's start time, which names the snapshot (default now).
    ``lock``: checked just before the commit, so a run that lost its host
    lock refuses to commit. Raises RepositoryError before writing anything if
    the policy sets ``immutable_days`` and the bucket has no Object Lock;
    DrkitError when a data source fails (or every source failed); returns a
    partial result when only provider snapshots failed.
    """
    host = policy.host
    configs = [c for c in policy.source if sources is None or source_name(c) in sources]
    if not configs:
        raise UsageError(f"host {host}: no source selected")
    require_object_lock(repo, policy.repository, host)  # fail closed before any write
    machines = [c for c in configs if isinstance(c, SnapshotSource)]
    data = [c for c in configs if not isinstance(c, SnapshotSource)]
    recipients = read_recipients(policy.encryption.recipients, policy.encryption.recipients_file)
    if data and runner is None:
        runner = open_runner(host, policy.connection)
    repo.init()
    started = started or dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    snapshot = new_snapshot_id(started)

    def store(relative: str, plain: BinaryIO) -> ArtifactRecord:
        key = object_key(host, snapshot, relative)
        digests: Digests = encode(plain, recipients, lambda s: repo.store.put(key, s))
        return ArtifactRecord(
            source=relative.split("/", 1)[0],
            name=relative.split("/", 1)[-1],
            key=relative,
            format=FORMAT,
            plain_size=digests.plain_size,
            plain_sha256=digests.plain_sha256,
            stored_size=digests.stored_size,
            stored_sha256=digests.stored_sha256,
        )

    jobs = _start_machines(policy, machines, started, log)
    failed: list[str] = []
    try:
        records: list[SourceRecord] = []
        facts: dict[str, Any] = {}
        for config in data:
            assert runner is not None
            records.append(_back_up_source(host, config, runner, store, facts, log))
        records += _collect_machines(jobs, facts, failed)
        if not records:
            raise DrkitError(f"host {host}: nothing to commit: {'; '.join(failed)}")
        facts_json = json.dumps(facts, sort_keys=True).encode()
        facts_record = store(FACTS, io.BytesIO(facts_json))
        manifest = Manifest(
            host=host,
            snapshot=snapshot,
            started=started.isoformat(timespec="seconds"),
            finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            drkit_version=__version__,
            policy_sha256=policy_digest(policy),
            recipients=list(policy.encryption.recipients),
            sources=records,
            facts=facts_record,
            # Names only (the errors are in the encrypted facts): listings show the gap.
            extra={"failed_sources": _failed_names(jobs)} if failed else {},
        )
        if lock is not None:
            lock.check()  # a run that lost its lock must not commit
        repo.write_manifest(manifest)  # the commit
    except BaseException as exc:
        for job in jobs:
            job.cancel()
        _discard(repo, host, snapshot, log)
        if catalog:
            error = str(exc) or type(exc).__name__
            _record(catalog, repo, host, started, None, "failed", error, log)
        raise
    status: RunStatus = "partial" if failed else "success"
    if catalog:
        _record(catalog, repo, host, started, manifest, status, "; ".join(failed) or None, log)
    _prune_machines(policy, [j.config for j in jobs if j.result().ok], started, log)
    seconds = time.monotonic() - t0
    state = f"committed with {len(failed)} failed source(s)" if failed else "committed"
    log(f"{host}: snapshot {snapshot} {state} ({manifest.stored_bytes} bytes, {seconds:.1f}s)")
    return BackupResult(host, manifest, seconds, tuple(failed))


def _back_up_source(
    host: str,
    config: SourceBase,
    runner: Runner,
    store: Callable[[str, BinaryIO], ArtifactRecord],
    facts: dict[str, Any],
    log: Log,
) -> SourceRecord:
    """Stream one data source's artifacts; its facts go into ``facts``."""
    source = build_source(config, runner)
    s0 = time.monotonic()
    log(f"{host}: {source.name} ({source.kind}) ...")
    records: list[ArtifactRecord] = []
    try:
        for artifact in source.artifacts():
            with artifact.open() as stream:
                plain = TeeReader(stream, artifact.observe) if artifact.observe else stream
                records.append(store(f"{source.name}/{artifact.name}", plain))  # type: ignore[arg-type]
            log(
                f"{host}: {source.name}/{artifact.name}: {records[-1].plain_size} bytes "
                f"-> {records[-1].stored_size} stored"
            )
    except DrkitError as exc:
        wrapped = _with_context(exc, host, source.name)
        if wrapped is exc:
            raise
        raise wrapped from exc
    finally:
        source.finish()
    facts[source.name] = {"kind": source.kind, **source.facts}
    return SourceRecord(source.name, source.kind, records, time.monotonic() - s0)


def _start_machines(
    policy: Policy, configs: list[SnapshotSource], started: dt.datetime, log: Log
) -> list[SnapshotJob]:
    if not configs:
        return []
    # Imported only here: provider clients are optional and not small.
    from drkit.actions.provider_snapshot import start_snapshot

    for config in configs:
        log(f"{policy.host}: {source_name(config)} ({config.provider} snapshot) started")
    return [start_snapshot(policy, c, started, log=log) for c in configs]


def _collect_machines(
    jobs: list[SnapshotJob], facts: dict[str, Any], failed: list[str]
) -> list[SourceRecord]:
    """Wait for each provider snapshot (its own ``wait_timeout`` bounds the wait)."""
    records: list[SourceRecord] = []
    for job in jobs:
        outcome = job.result()
        facts[outcome.source] = outcome.facts()
        if outcome.ok:
            records.append(SourceRecord(outcome.source, "snapshot", [], outcome.seconds))
        else:
            failed.append(outcome.error or f"host {outcome.host}: source {outcome.source}: failed")
    return records


def _failed_names(jobs: list[SnapshotJob]) -> list[str]:
    return [source_name(j.config) for j in jobs if not j.result().ok]


def _prune_machines(
    policy: Policy, configs: list[SnapshotSource], now: dt.datetime, log: Log
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
            log(f"warning: {exc}")
            continue
        for decision, why in report.failed:
            log(f"warning: could not delete provider snapshot {decision.snapshot.id}: {why}")


def _record(
    catalog: Callable[[], Catalog],
    repo: Repository,
    host: str,
    started: dt.datetime,
    manifest: Manifest | None,
    status: RunStatus,
    error: str | None,
    log: Log,
) -> None:
    """Index the run once the data path is done.

    The catalog is opened only now (``catalog`` is a factory): SQLAlchemy costs
    ~10 MiB of RSS, and opening it after the streams are released keeps the
    backup's peak memory lower. The catalog is a cache (`catalog sync` rebuilds
    it), so failing to index never turns a committed snapshot into a failure.
    """
    try:
        cat = catalog()
        run_id = cat.start_run(host, repo.url, started=started)
        if manifest is not None:
            cat.record_snapshot(repo.url, manifest)
        cat.finish_run(run_id, status, manifest.snapshot if manifest else None, error)
        cat.close()
    except DrkitError as exc:
        what = f"snapshot {manifest.snapshot} committed, but" if manifest else "the run failed and"
        log(f"{host}: {what} the catalog was not updated: {exc}")


def _with_context(exc: DrkitError, host: str, source: str) -> DrkitError:
    """Name host and source once: an error naming both is kept as it is; one naming only
    the host (a runner's: connection lost, sudo needs a password) gets the source too.

    Either way the returned error's ``source`` is ``source``, for callers that list
    failed sources (drkit.actions.fleet) without parsing the message.
    """
    context = f"host {host}: source {source}"
    text = str(exc)
    if hasattr(exc, "problems") or text.startswith((context + ":", context + " (")):
        exc.source = source
        return exc
    wrapped = type(exc)(f"{context}: {text.removeprefix(f'host {host}: ')}")
    wrapped.source = source
    return wrapped


def _discard(repo: Repository, host: str, snapshot: str, log: Log) -> None:
    """Best effort: remove objects of an uncommitted snapshot (prune catches leftovers)."""
    try:
        for info in list(repo.store.list(snapshot_prefix(host, snapshot))):
            repo.store.delete(info.key)
    except Exception as exc:
        log(f"{host}: could not remove partial snapshot {snapshot}: {exc}")
