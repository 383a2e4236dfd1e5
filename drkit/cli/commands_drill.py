"""drkit drill: rebuild hosts in Docker from their latest backup and prove they work."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from drkit.cli.context import (
    EXIT_CODES,
    EXIT_DRILL_SETUP,
    Ctx,
    handle_errors,
    identity_option,
    load_identity,
    log_to_stderr,
)
from drkit.cli.group import cli, json_option
from drkit.cli.progress import show_progress
from drkit.errors import DrkitError, UsageError
from drkit.logs import Log, warn

if TYPE_CHECKING:
    from drkit.drills.report import DrillReport
    from drkit.policy.models import Policy

pass_ctx = click.make_pass_decorator(Ctx)


@cli.command(epilog=EXIT_CODES)
@click.option("--host", "hosts", multiple=True, help="host to drill (repeatable)")
@click.option("--policy", "policy_files", multiple=True, type=click.Path(dir_okay=False))
@click.option("--all", "all_hosts", is_flag=True, help="every host in the policy directory")
@click.option("--snapshot", help="snapshot id (default: the newest)")
@click.option(
    "--image",
    "image",
    metavar="NAME",
    help="drill image docker/hosts/NAME/ (default: the drill file's image, else the host name)",
)
@click.option("--keep", is_flag=True, help="keep the container for inspection")
@click.option(
    "--drills-dir",
    type=click.Path(file_okay=False),
    envvar="DRKIT_DRILLS_DIR",
    help="directory of <host>.toml drill files (or $DRKIT_DRILLS_DIR; default: the first of "
    "./restore_drills, <config dir>/restore_drills and the shipped ones holding any)",
)
@click.option(
    "--docker-dir",
    type=click.Path(file_okay=False, exists=True),
    envvar="DRKIT_DOCKER_DIR",
    help="drill image files laid out like docker/ (or $DRKIT_DOCKER_DIR; default: the "
    "shipped ones)",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    help="write JSON, Markdown and the fleet page (index.html, as drkit report --html) here",
)
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False), help="write JUnit XML here")
@identity_option
@json_option
@pass_ctx
@handle_errors
def drill(
    ctx: Ctx,
    hosts: tuple[str, ...],
    policy_files: tuple[str, ...],
    all_hosts: bool,
    snapshot: str | None,
    image: str | None,
    keep: bool,
    drills_dir: str | None,
    docker_dir: str | None,
    report_dir: str | None,
    junit_file: str | None,
    identity_file: str | None,
) -> None:
    """Restore each host's snapshot into a fresh container, run the fact checks and the
    checks in restore_drills/<host>.toml, and report a verdict with RTO and RPO.

    Hosts are drilled one after the other; one host failing (no snapshot, a
    broken artifact, a failed check) never hides or stops the others, and every
    report (--report, --junit, --json) holds every host. Exits 4 when any drill
    failed. Each host's Prometheus textfile (notify.prometheus_textfile), if
    its policy names one, is rewritten after its drill. The container cannot
    reach beyond this machine (DRKIT_DRILL_NETWORK, docker/README.md) and is
    logged into as the policy's SSH user. It runs the image docker/hosts/<image>/
    that --image names, else the drill file's `image`, else the one named like
    the host, and is named drkit-drill-<host>-<snapshot>. A drill that could not be
    set up (no Docker engine, an image build or the container's start failed) has
    the verdict ERROR, is not recorded, and exits 7 unless another drill failed.
    """
    from drkit.actions.drill import SETUP_ERROR, drill_hosts, load_specs
    from drkit.drills.images import DOCKER_DIR_ENV
    from drkit.drills.spec import drills_dir as choose_drills_dir

    if docker_dir:  # read by drkit.drills.images.docker_dir()
        os.environ[DOCKER_DIR_ENV] = str(Path(docker_dir).resolve())
    _check_selection(hosts, policy_files, all_hosts, snapshot, image)
    policies = ctx.policies(policy_files, hosts)
    directory = choose_drills_dir(drills_dir)
    specs = load_specs(policies, directory)  # every drill file's problems at once
    identities = load_identity(identity_file)
    log = log_to_stderr()
    log(f"drill files: {directory}")
    with show_progress():
        reports = drill_hosts(
            policies,
            identities,
            specs,
            snapshot=snapshot,
            image=image,
            keep=keep,
            catalog=ctx.catalog,
            log=log,
        )
    rewrite_metrics(policies, log)
    if report_dir:
        write_reports(ctx, policies, reports, Path(report_dir), log)
    if junit_file:
        from drkit.drills.report import junit_xml

        Path(junit_file).write_bytes(junit_xml(reports))
    ctx.emit({"drills": [json.loads(r.to_json()) for r in reports]}, lambda: print_drills(reports))
    if any(r.verdict == "fail" for r in reports):
        sys.exit(4)
    if any(r.verdict == SETUP_ERROR for r in reports):
        sys.exit(EXIT_DRILL_SETUP)


def _check_selection(
    hosts: tuple[str, ...],
    policy_files: tuple[str, ...],
    all_hosts: bool,
    snapshot: str | None,
    image: str | None,
) -> None:
    """Which hosts, and options that apply to one host only. Raises UsageError."""
    if not (hosts or policy_files or all_hosts):
        raise UsageError("name hosts (--host), policy files (--policy) or --all")
    for flag, value in (("--snapshot", snapshot), ("--image", image)):
        if value and (all_hosts or len(hosts) + len(policy_files) > 1):
            raise UsageError(f"{flag} applies to one host")
    if image is not None:
        from drkit.drills.spec import check_image

        check_image(image, "--image")


def write_reports(
    ctx: Ctx, policies: list[Policy], reports: list[DrillReport], out: Path, log: Log
) -> None:
    """--report DIR: each drill's JSON, the Markdown summary and the fleet page."""
    from drkit.drills.report import markdown

    out.mkdir(parents=True, exist_ok=True)
    for r in reports:
        (out / f"{r.host}-{r.drill_id}.json").write_bytes(r.to_json())
    (out / "drill-summary.md").write_text(markdown(reports))
    write_fleet_page(ctx, policies, reports, out, log)


def print_drills(reports: list[DrillReport]) -> None:
    """The text output: each drill's failed checks, then its verdict line."""
    from drkit.actions.drill import SETUP_ERROR

    for r in reports:
        for c in r.checks:
            if c.status != "pass":
                click.echo(f"  [{c.status}] {r.host} {c.source}: {c.name}: {c.detail}")
        if r.error:
            click.echo(f"  [error] {r.host}: {r.error}")
        if r.verdict == SETUP_ERROR:
            click.echo(f"{r.host}: drill ERROR: not set up, nothing checked or recorded")
            continue
        click.echo(
            f"{r.host}: drill {r.verdict.upper()} (snapshot {r.snapshot or 'none'}; RTO "
            f"{r.rto_seconds:.1f}s, RPO {r.rpo_seconds / 3600:.1f}h; image "
            f"{r.image_name or 'none'} {'built' if r.image_built else 'cached'} "
            f"{r.image_build_seconds:.1f}s; "
            f"{len(r.checks)} checks)"
        )


def write_fleet_page(
    ctx: Ctx,
    policies: list[Policy],
    reports: list[DrillReport],
    out: Path,
    log: Log,
) -> None:
    """The fleet page of the drilled hosts (as ``drkit report --html``) beside the drill
    reports, read back from the repositories the drills just wrote to; this run's drills
    that were not stored there are shown apart. A page that cannot be written only
    warns: it never changes a drill's verdict or exit code."""
    from drkit.actions.report import add_unstored, gather
    from drkit.actions.report_html import write_page

    try:
        catalog = ctx.catalog()
        try:
            fleet = gather(policies, catalog, ctx.now(), log=log)
        finally:
            catalog.close()
        add_unstored(fleet, reports)
        log(f"fleet page: {write_page(fleet, out)}")
    except (DrkitError, OSError) as exc:
        warn(log, f"fleet page not written to {out}: {exc}")


def rewrite_metrics(policies: list[Policy], log: Log) -> None:
    """``drkit.actions.metrics.rewrite_metrics`` (the drill's Prometheus textfiles),
    named here too for the callers that import it from this module."""
    from drkit.actions.metrics import rewrite_metrics as rewrite

    rewrite(policies, log)
