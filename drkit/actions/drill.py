"""Restore drills: rebuild a host in a fresh container from a snapshot and prove it works.

The drill uses the same restore executor as an incident restore, over SSH to
the container (ports published on 127.0.0.1 only). The container stands for
a fresh machine, so PostgreSQL sources are restored into the container's own
server (local socket, as the postgres user) whatever address the policy
gives for the live host. Then it runs every source's fact checks, the
certificate expiry checks, and the declared checks of
``restore_drills/<host>.toml``; the verdict, RTO (container start -> checks
done; the image build is reported apart) and RPO are stored in the
repository and the catalog.

A drill restores what an incident restore would (``select_sources``): each
source from the newest complete snapshot holding it (as of ``--snapshot``, if
given). Its RPO is the age, at drill start, of the OLDEST snapshot used (the
data an incident now would lose the most of), and its "restore point" check
names that snapshot and where every source came from; the report's
``snapshot`` is the newest one used.

Each host's drill is independent: ``drill_hosts()`` drills hosts one after
the other, and whatever goes wrong with one (no snapshot, no image, a broken
artifact, a failed check, an unexpected exception) becomes that host's
failed report naming the cause; the others still run and are reported.
A drill that could not be set up on this machine (no Docker engine, an image
build or the container's start failed: ``DrillSetupError``) has the verdict
``error``: nothing about the backup was checked, so it is not stored in the
repository or the catalog (status and prune never count it) and the CLI exits
with its own code, not the one of a failed check.

Login: the drill connects as the policy's SSH user (``connection.user``);
when that is not root, the container creates it with passwordless sudo, as
on a VPS whose root login is disabled, so sources run with the same ``sudo``
as on the real host. Local-connection policies drill as root.

Network: the container cannot reach anything beyond this machine and
resolves no names (``drills/container.py``): a restored Caddy must not ask
Let's Encrypt for the real site names, a restored app must not call out.

Image: ``docker/hosts/<image>/``, where the image is ``--image``, else the
drill file's ``image``, else the host's own name (``DrillSpec.image_for``), so
a policy for ``vultr-2`` drills in the vultr image when its drill file says
``image = "vultr"``. The container is ``drkit-drill-<host>-<snapshot>`` (the
newest snapshot used; ``drills/container.py`` on names already taken), and its
hostname is the policy's host. The report names the image, what chose it and
the container.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from drkit.actions.repository_access import open_repository, with_signing_key
from drkit.actions.restore import Executor
from drkit.actions.snapshot_select import Assembly, data_sources, select_sources
from drkit.drills.checks import certificate_checks, declared_checks, verdict
from drkit.drills.report import DrillReport
from drkit.drills.spec import DrillSpec, spec_for
from drkit.errors import DrkitError, PolicyError, RestoreError, UsageError
from drkit.logs import Log, context, meter, quiet, warn
from drkit.pipeline.age import Identity
from drkit.policy.models import Connection, NatsConfig, Policy, PostgresConfig, source_name
from drkit.remote.base import Runner
from drkit.repository.layout import Repository
from drkit.repository.manifest import snapshot_time
from drkit.sources.base import Check, RestoreOptions
from drkit.sources.pgsql import PgConn

if TYPE_CHECKING:
    from drkit.catalog.db import Catalog

CONTAINER_NATS = "nats://127.0.0.1:4222"  # docker/hosts/common/drkit-svc

SETUP_ERROR = "error"  # the verdict of a drill that could not be set up (never stored)


class DrillSetupError(DrkitError):
    """The drill could not be set up on this machine: no Docker engine, an image build
    or the container's start failed. Nothing of the backup was restored or checked."""


def drill_policy(policy: Policy) -> Policy:
    """The policy as it applies inside a fresh drill container.

    Data services are the container's own, without the live host's
    credentials (a drill machine need not hold them): PostgreSQL on its
    local socket as the postgres user, NATS on 127.0.0.1:4222 without auth.
    """
    sources = []
    for src in policy.source:
        if isinstance(src, PostgresConfig) and src.container is None:
            src = src.model_copy(
                update={
                    "host": None,
                    "port": 5432,
                    "user": "postgres",
                    "password": None,
                    "sudo_user": "postgres",
                    "bin_dir": None,
                }
            )
        elif isinstance(src, NatsConfig) and src.mode == "snapshot":
            src = src.model_copy(update={"url": CONTAINER_NATS, "credentials": None})
        sources.append(src)
    return policy.model_copy(update={"source": sources})


def login_user(policy: Policy) -> str:
    """Who the drill logs in as: the policy's SSH user, or root for a local policy."""
    return policy.connection.user if policy.connection.type == "ssh" else "root"


def load_specs(policies: list[Policy], directory: Path) -> dict[str, DrillSpec]:
    """Every host's drill file, read before any drill starts.

    Raises ``PolicyError`` listing the problems of every invalid file at once.
    """
    specs: dict[str, DrillSpec] = {}
    problems: list[str] = []
    for policy in policies:
        try:
            specs[policy.host] = spec = spec_for(policy.host, directory)
        except PolicyError as exc:
            problems += exc.problems
            continue
        names = data_sources(policy)
        for name in sorted(set(spec.skip) - names):
            problems.append(
                f"{spec.where}: skip.{name}: not a data source of {policy.origin} "
                f"(it has: {', '.join(sorted(names))})"
            )
        if names and names <= set(spec.skip):
            problems.append(f"{spec.where}: skip: every data source of {policy.origin}")
    if problems:
        raise PolicyError(problems)
    return specs


def drill_hosts(
    policies: list[Policy],
    identities: list[Identity],
    specs: dict[str, DrillSpec],
    *,
    snapshot: str | None = None,
    image: str | None = None,
    keep: bool = False,
    catalog: Callable[[], Catalog] | None = None,
    log: Log = quiet,
) -> list[DrillReport]:
    """Drill each host in turn; one report per host, in order, whatever fails.
    ``image`` overrides each host's drill image (``--image``)."""
    reports = []
    for policy in policies:
        try:
            repo = open_repository(policy)
            repo = with_signing_key(repo, log)
        except DrkitError as exc:
            report = _report(policy.host, dt.datetime.now(dt.UTC))
            report.error = f"repository {policy.repository.url}: {exc}"
            report.finished = report.started
            log(f"error: {policy.host}: drill failed: {report.error}")
            reports.append(report)
            continue
        spec = specs.get(policy.host) or DrillSpec(host=policy.host)
        report = run_drill(
            policy,
            repo,
            identities,
            spec,
            snapshot=snapshot,
            image=image,
            keep=keep,
            catalog=catalog,
            log=log,
        )
        reports.append(report)
    return reports


def _report(host: str, started: dt.datetime) -> DrillReport:
    drill_id = started.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    return DrillReport(
        host=host,
        drill_id=drill_id,
        snapshot="",
        started=started.isoformat(timespec="seconds"),
        finished="",
        verdict="fail",
        rto_seconds=0.0,
        rpo_seconds=0.0,
        image_build_seconds=0.0,
        image="",
    )


def _keypair(directory: Path) -> tuple[Path, str]:
    """An ed25519 key for logging in to the drill container (made in Python: a drill
    machine need not have ssh-keygen; a stock container has none)."""
    import asyncssh

    private = asyncssh.generate_private_key("ssh-ed25519", comment="drkit-drill")
    key = directory / "drill_key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private.export_private_key("openssh"))
    return key, private.export_public_key("openssh").decode().strip()


def run_drill(
    policy: Policy,
    repo: Repository,
    identities: list[Identity],
    spec: DrillSpec,
    *,
    snapshot: str | None = None,
    image: str | None = None,
    keep: bool = False,
    catalog: Callable[[], Catalog] | None = None,
    log: Log = quiet,
) -> DrillReport:
    """Drill one host in ``image`` (default: ``spec.image_for``). Never raises for a
    failed drill: the report's ``error`` names the cause (no image, no snapshot, image
    build, restore, unexpected exception) and its checks say which failed; a drill
    that could not be set up (``DrillSetupError``) has the verdict ``error`` and is
    not stored. Only KeyboardInterrupt and the like propagate."""
    with context(host=policy.host):
        return _run_drill(policy, repo, identities, spec, snapshot, image, keep, catalog, log)


def _run_drill(
    policy: Policy,
    repo: Repository,
    identities: list[Identity],
    spec: DrillSpec,
    snapshot: str | None,
    image: str | None,
    keep: bool,
    catalog: Callable[[], Catalog] | None,
    log: Log,
) -> DrillReport:
    started = dt.datetime.now(dt.UTC)
    report = _report(policy.host, started)
    t0: float | None = None
    try:
        report.image_name, report.image_from = spec.image_for(policy.host, image)
        needed = data_sources(policy) - set(spec.skip)
        assembly = select_sources(repo, policy.host, needed, snapshot)
        report.snapshot = assembly.newest.snapshot
        report.snapshots = [m.snapshot for m in assembly.manifests]
        oldest = assembly.oldest.snapshot
        report.rpo_seconds = (started - snapshot_time(oldest)).total_seconds()
        with meter("drill", "image"):
            tag = _image(policy.host, report, log)
        t0 = time.monotonic()
        report.checks = [restore_point(assembly, report.rpo_seconds)]
        report.checks += [
            Check("drill", f"not drilled: {name}", "warn", f"{why} ({spec.where})")
            for name, why in sorted(spec.skip.items())
        ]
        report.checks += _in_container(
            policy, repo, assembly, identities, spec, tag, started, report, keep, log
        )
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the container went on the way out
        exc.add_note(
            f"host {policy.host}: the drill was stopped, its container removed and nothing "
            f"recorded; run `drkit drill --host {policy.host}` again"
        )
        raise
    except DrillSetupError as exc:
        report.error = f"drill could not be set up: {exc}"
        report.verdict = SETUP_ERROR
    except DrkitError as exc:
        report.error = str(exc)
    except Exception as exc:  # one host's bug must not abort the other drills
        report.error = f"unexpected {type(exc).__name__}: {exc}"
    if t0 is not None:
        report.rto_seconds = round(time.monotonic() - t0, 1)
    report.finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if report.verdict == SETUP_ERROR:
        log(f"{policy.host}: {report.error}; nothing was checked or recorded")
        return report
    if report.error:
        log(f"error: {policy.host}: drill failed: {report.error}")
    report.verdict = "fail" if report.error else verdict(report.checks)
    if report.snapshot:
        _store(repo, report, catalog, log)
    return report


def restore_point(assembly: Assembly, rpo_seconds: float) -> Check:
    """A report line saying which snapshot each source came from, and that the RPO is
    the age of the oldest of them (always "pass": the data is what it is)."""
    oldest = assembly.oldest.snapshot
    from_oldest = sorted(n for n in assembly.picks if assembly.snapshot_of(n) == oldest)
    each = "; ".join(f"{n} from {assembly.snapshot_of(n)}" for n in sorted(assembly.picks))
    return Check(
        "drill",
        "restore point",
        "pass",
        f"RPO {rpo_seconds / 3600:.1f} h = age of the oldest source snapshot used, {oldest} "
        f"({', '.join(from_oldest)}); each source from its newest snapshot: {each}",
    )


def _image(host: str, report: DrillReport, log: Log) -> str:
    """Build (or find) ``report.image_name``; its time goes to the report, not the RTO.
    Raises ``DrillSetupError`` when there is no engine or a build fails."""
    from drkit.drills.engine import DockerError
    from drkit.drills.images import ensure_base_image, ensure_host_image

    t_build = time.monotonic()
    try:
        base = ensure_base_image()
        image = ensure_host_image(report.image_name, base_tag=base.tag)
    except (DockerError, UsageError) as exc:  # UsageError: DRKIT_BUILD_CA names no file
        raise DrillSetupError(str(exc)) from exc
    report.image = image.tag
    report.base_image, report.base_from = base.tag, base.source
    report.image_built = base.built or image.built
    report.image_build_seconds = round(time.monotonic() - t_build, 1)
    state = "built" if report.image_built else "cached"
    log(
        f"{host}: image {image.tag} (chosen by {report.image_from}; "
        f"{state}, {report.image_build_seconds}s)"
    )
    log(f"{host}: base {base.tag}: {base.source}")
    return image.tag


def _in_container(
    policy: Policy,
    repo: Repository,
    assembly: Assembly,
    identities: list[Identity],
    spec: DrillSpec,
    image: str,
    started: dt.datetime,
    report: DrillReport,
    keep: bool,
    log: Log,
) -> list[Check]:
    """Start the container, restore over SSH as the policy's user, run every check."""
    from drkit.drills.container import container_name, host_container, sweep_leftovers
    from drkit.drills.engine import DockerError
    from drkit.drills.nested import describe, engine_sources
    from drkit.remote.ssh import SshRunner

    user = login_user(policy)
    name = container_name(policy.host, report.snapshot)
    swept = sweep_leftovers(policy.host, log)
    # The policy decides whether the container runs its own Docker engine: the sources
    # restored into containers need one, and an image without one is refused up front.
    needs = engine_sources(policy, spec.skip)
    if needs:
        log(f"{policy.host}: the drill container runs its own Docker engine for {describe(needs)}")
    with tempfile.TemporaryDirectory(prefix="drkit-drill-") as tmp, contextlib.ExitStack() as stack:
        key, public = _keypair(Path(tmp))
        container = host_container(
            image,
            host=policy.host,
            authorized_keys=public,
            ssh_user=user,
            keep=keep,
            name=name,
            engine=bool(needs),
        )
        try:
            with meter("drill", "container start"):
                box = stack.enter_context(container)
        except DockerError as exc:  # before anything of the backup reached it
            why = f" (Docker-backed sources: {describe(needs)})" if needs else ""
            raise DrillSetupError(f"container {name}: {exc}{why}") from exc
        report.container = box.name
        where = f" on {box.network} at {box.network_address}" if box.network else ""
        log(
            f"{policy.host}: {box.label} ready in {box.ready_seconds:.1f}s{where}, "
            f"logging in as {user}"
        )
        if keep:
            log(f"{policy.host}: kept: docker exec -it {box.name} bash")
        known = Path(tmp) / "known_hosts"
        known.write_text(box.known_hosts_line())
        conn = Connection(
            type="ssh",
            address=box.address,
            port=box.port(22),
            user=user,
            identity_file=str(key),
            known_hosts=str(known),
        )
        runner = SshRunner(policy.host, conn)
        # Said in the report too (``--json`` logs nothing): what a killed drill had left.
        checks = [Check("drill", "leftovers of killed drills removed", "pass", ", ".join(swept))]
        try:
            return checks[: 1 if swept else 0] + _restore_and_check(
                drill_policy(policy),
                repo,
                assembly,
                identities,
                runner,
                spec,
                started,
                box.label,
                log,
            )
        finally:
            runner.close()


def _restore_and_check(
    policy: Policy,
    repo: Repository,
    assembly: Assembly,
    identities: list[Identity],
    runner: Runner,
    spec: DrillSpec,
    started: dt.datetime,
    label: str,
    log: Log,
) -> list[Check]:
    opts = RestoreOptions(log=log)
    # Only data sources are assembled: provider snapshots are not restored into a container.
    executor = Executor(policy, repo, assembly, identities, runner, opts, target=label)
    refuse_blocked(assembly.host, executor)
    result = executor.run(log)
    checks = list(result.checks)
    checks += certificate_checks(executor.facts, started, spec.cert_warn_days)
    pg: dict[str, tuple[PgConn, str]] = {}
    for src in policy.source:
        if isinstance(src, PostgresConfig):
            pg[source_name(src)] = (
                PgConn(None, 5432, "postgres", None, None, src.container),
                src.database,
            )
    with meter("drill", "checks"):
        checks += declared_checks(spec, runner, pg, sql_user="postgres")
    return checks


def refuse_blocked(host: str, executor: Executor) -> None:
    """Refuse the drill before any step runs when the plan on the drill target is blocked
    (e.g. no pm2 there for a pm2 source), as ``drkit restore`` does: otherwise it fails
    late (``pm2 resurrect``) after the earlier steps ran, with a less clear cause.

    Raises RestoreError naming the host, the first refused step, its source and why.
    """
    blocked = [s for s in executor.plan() if s.plan.blocked]
    if blocked:
        first = blocked[0]
        raise RestoreError(
            f"host {host}: step {first.number} ({first.source}) is refused: "
            f"{first.plan.blocked}; nothing was restored"
        )


def _store(
    repo: Repository, report: DrillReport, catalog: Callable[[], Catalog] | None, log: Log
) -> None:
    try:
        key = repo.write_drill_report(report.host, report.drill_id, json.loads(report.to_json()))
    except DrkitError as exc:
        warn(log, f"{report.host}: drill report not stored in the repository: {exc}")
        key = ""
    if catalog is None:
        return
    try:
        cat = catalog()
        cat.record_drill(
            repo.url,
            report.host,
            report.drill_id,
            report.snapshot,
            dt.datetime.fromisoformat(report.started),
            dt.datetime.fromisoformat(report.finished),
            report.verdict,  # type: ignore[arg-type]
            rto_seconds=report.rto_seconds,
            rpo_seconds=report.rpo_seconds,
            report_key=key or None,
        )
        cat.close()
    except DrkitError as exc:
        warn(log, f"{report.host}: drill not recorded in the catalog: {exc}")
