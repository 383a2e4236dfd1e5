"""Back up one host: every source through the pipeline, facts, then the manifest.

The manifest is written last and is the commit. If anything fails, the run
removes what it wrote for this snapshot, records the failure and re-raises:
a failed dump never looks like a good backup.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from drkit import __version__
from drkit.actions.common import open_runner, policy_digest

if TYPE_CHECKING:
    from drkit.catalog.db import Catalog
from drkit.errors import DrkitError
from drkit.pipeline.age import read_recipients
from drkit.pipeline.codec import FORMAT, Digests, encode
from drkit.pipeline.streams import TeeReader
from drkit.policy.models import Policy
from drkit.remote.base import Runner
from drkit.repository.layout import FACTS, Repository, object_key, snapshot_prefix
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord, new_snapshot_id
from drkit.sources.registry import build_source

Log = Callable[[str], None]


@dataclass(frozen=True)
class BackupResult:
    host: str
    manifest: Manifest
    seconds: float


def backup(
    policy: Policy,
    repo: Repository,
    *,
    catalog: Callable[[], Catalog] | None = None,
    runner: Runner | None = None,
    log: Log = lambda _msg: None,
) -> BackupResult:
    """Back up every source of ``policy`` into ``repo``. Raises DrkitError on any failure."""
    recipients = read_recipients(policy.encryption.recipients, policy.encryption.recipients_file)
    runner = runner or open_runner(policy.host, policy.connection)
    repo.init()
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    snapshot = new_snapshot_id(started)
    host = policy.host

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

    try:
        sources: list[SourceRecord] = []
        facts: dict[str, Any] = {}
        for config in policy.source:
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
                wrapped = _with_context(exc, f"host {host}: source {source.name}")
                if wrapped is exc:
                    raise
                raise wrapped from exc
            finally:
                source.finish()
            facts[source.name] = {"kind": source.kind, **source.facts}
            sources.append(SourceRecord(source.name, source.kind, records, time.monotonic() - s0))
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
            sources=sources,
            facts=facts_record,
        )
        repo.write_manifest(manifest)  # the commit
    except BaseException as exc:
        _discard(repo, host, snapshot, log)
        if catalog:
            _record(catalog, repo, host, started, None, str(exc) or type(exc).__name__, log)
        raise
    if catalog:
        _record(catalog, repo, host, started, manifest, None, log)
    seconds = time.monotonic() - t0
    log(f"{host}: snapshot {snapshot} committed ({manifest.stored_bytes} bytes, {seconds:.1f}s)")
    return BackupResult(host, manifest, seconds)


def _record(
    catalog: Callable[[], Catalog],
    repo: Repository,
    host: str,
    started: dt.datetime,
    manifest: Manifest | None,
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
        if manifest is None:
            cat.finish_run(run_id, "failed", None, error)
        else:
            cat.record_snapshot(repo.url, manifest)
            cat.finish_run(run_id, "success", manifest.snapshot, None)
        cat.close()
    except DrkitError as exc:
        what = f"snapshot {manifest.snapshot} committed, but" if manifest else "the run failed and"
        log(f"{host}: {what} the catalog was not updated: {exc}")


def _with_context(exc: DrkitError, context: str) -> DrkitError:
    """Name host and source once; low-level errors that already do are kept as they are."""
    if str(exc).startswith(context.split(":")[0] + ":") or hasattr(exc, "problems"):
        return exc
    return type(exc)(f"{context}: {exc}")


def _discard(repo: Repository, host: str, snapshot: str, log: Log) -> None:
    """Best effort: remove objects of an uncommitted snapshot (prune catches leftovers)."""
    try:
        for info in list(repo.store.list(snapshot_prefix(host, snapshot))):
            repo.store.delete(info.key)
    except Exception as exc:
        log(f"{host}: could not remove partial snapshot {snapshot}: {exc}")
