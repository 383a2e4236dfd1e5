"""Restore drills: rebuild a host in a fresh container from a snapshot and prove it works.

The drill uses the same restore executor as an incident restore, over SSH to
the container (ports published on 127.0.0.1 only). The container stands for
a fresh machine, so PostgreSQL sources are restored into the container's own
server (local socket, as the postgres user) whatever address the policy
gives for the live host. Then it runs every source's fact checks, the
certificate expiry checks, and the declared checks of
``restore_drills/<host>.toml``; the verdict, RTO (container start -> checks
done; the image build is reported apart) and RPO (snapshot age at drill
start) are stored in the repository and the catalog.
"""

from __future__ import annotations

import datetime as dt
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from drkit.actions.common import data_sources, select_snapshot
from drkit.actions.restore import Executor
from drkit.drills.checks import certificate_checks, declared_checks, verdict
from drkit.drills.report import DrillReport
from drkit.drills.spec import DrillSpec
from drkit.errors import DrkitError
from drkit.pipeline.age import Identity
from drkit.policy.models import Connection, Policy, PostgresSource, source_name
from drkit.remote.base import Runner
from drkit.repository.layout import Repository
from drkit.repository.manifest import Manifest, snapshot_time
from drkit.sources.base import Check, RestoreOptions
from drkit.sources.pgsql import PgConn

if TYPE_CHECKING:
    from drkit.catalog.db import Catalog

Log = Callable[[str], None]


def drill_policy(policy: Policy) -> Policy:
    """The policy as it applies inside a fresh drill container."""
    sources = []
    for src in policy.source:
        if isinstance(src, PostgresSource) and src.container is None:
            src = src.model_copy(
                update={"host": None, "port": 5432, "user": "postgres", "password": None,
                        "sudo_user": "postgres", "bin_dir": None}
            )  # fmt: skip
        sources.append(src)
    return policy.model_copy(update={"source": sources})


def _keypair(directory: Path) -> tuple[Path, str]:
    key = directory / "drill_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "drkit-drill", "-f", str(key)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, (directory / "drill_key.pub").read_text().strip()


def run_drill(
    policy: Policy,
    repo: Repository,
    identities: list[Identity],
    spec: DrillSpec,
    *,
    snapshot: str | None = None,
    keep: bool = False,
    catalog: Callable[[], Catalog] | None = None,
    log: Log = lambda _m: None,
) -> DrillReport:
    """Drill one host; never raises for a failed restore or check (the report says so)."""
    from drkit.drills.container import host_container
    from drkit.drills.images import ensure_base_image, ensure_host_image
    from drkit.remote.ssh import SshRunner

    started = dt.datetime.now(dt.UTC)
    drill_id = started.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    manifest = select_snapshot(repo, policy.host, snapshot, holding=data_sources(policy))
    rpo = (started - snapshot_time(manifest.snapshot)).total_seconds()
    report = DrillReport(
        host=policy.host, drill_id=drill_id, snapshot=manifest.snapshot,
        started=started.isoformat(timespec="seconds"), finished="", verdict="fail",
        rto_seconds=0.0, rpo_seconds=rpo, image_build_seconds=0.0, image="",
    )  # fmt: skip
    t_build = time.monotonic()
    base = ensure_base_image()
    image = ensure_host_image(policy.host, base_tag=base.tag)
    report.image = image.tag
    report.image_build_seconds = round(time.monotonic() - t_build, 1)
    log(f"{policy.host}: image {image.tag} ({'built' if image.built else 'cached'}, "
        f"{report.image_build_seconds}s)")  # fmt: skip
    target = drill_policy(policy)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="drkit-drill-") as tmp:
        key, public = _keypair(Path(tmp))
        try:
            with host_container(
                image.tag, host=policy.host, authorized_keys=public, keep=keep
            ) as box:
                log(f"{policy.host}: {box.label} ready in {box.ready_seconds:.1f}s")
                known = Path(tmp) / "known_hosts"
                known.write_text(box.known_hosts_line())
                conn = Connection(
                    type="ssh", address=box.address, port=box.port(22), user="root",
                    identity_file=str(key), known_hosts=str(known),
                )  # fmt: skip
                runner = SshRunner(policy.host, conn)
                try:
                    report.checks = _restore_and_check(
                        target, repo, manifest, identities, runner, spec, started, box.label, log
                    )
                finally:
                    runner.close()
        except DrkitError as exc:
            report.error = str(exc)
            log(f"{policy.host}: drill failed: {exc}")
    report.rto_seconds = round(time.monotonic() - t0, 1)
    report.finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report.verdict = "fail" if report.error else verdict(report.checks)
    _store(repo, report, catalog, log)
    return report


def _restore_and_check(
    policy: Policy,
    repo: Repository,
    manifest: Manifest,
    identities: list[Identity],
    runner: Runner,
    spec: DrillSpec,
    started: dt.datetime,
    label: str,
    log: Log,
) -> list[Check]:
    opts = RestoreOptions(log=log)
    executor = Executor(policy, repo, manifest, identities, runner, opts, target=label)
    # Snapshot-kind records (provider snapshots) are not data to restore into a container.
    executor.records = [r for r in executor.records if r.kind != "snapshot"]
    result = executor.run(log)
    checks = list(result.checks)
    checks += certificate_checks(executor.facts, started, spec.cert_warn_days)
    pg: dict[str, tuple[PgConn, str]] = {}
    for src in policy.source:
        if isinstance(src, PostgresSource):
            pg[source_name(src)] = (
                PgConn(None, 5432, "postgres", None, None, src.container),
                src.database,
            )
    checks += declared_checks(spec, runner, pg, sql_user="postgres")
    return checks


def _store(repo: Repository, report: DrillReport, catalog: Callable[[], Catalog] | None,
           log: Log) -> None:  # fmt: skip
    key = f"{report.host}/drills/{report.drill_id}.json"
    try:
        repo.store.put_bytes(key, report.to_json())
    except DrkitError as exc:
        log(f"{report.host}: drill report not stored in the repository: {exc}")
        key = ""
    if catalog is None:
        return
    try:
        cat = catalog()
        cat.record_drill(
            repo.url, report.host, report.drill_id, report.snapshot,
            dt.datetime.fromisoformat(report.started), dt.datetime.fromisoformat(report.finished),
            report.verdict,  # type: ignore[arg-type]
            rto_seconds=report.rto_seconds, rpo_seconds=report.rpo_seconds,
            report_key=key or None,
        )  # fmt: skip
        cat.close()
    except DrkitError as exc:
        log(f"{report.host}: drill not recorded in the catalog: {exc}")
