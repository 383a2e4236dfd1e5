"""drkit report: the fleet's state as one static HTML page."""

from __future__ import annotations

import click

from drkit.cli.context import EXIT_CODES, Ctx, handle_errors, policy_options
from drkit.cli.group import cli, json_option

pass_ctx = click.make_pass_decorator(Ctx)


@cli.command(epilog=EXIT_CODES)
@click.option(
    "--html",
    "html_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="directory to write the page into (index.html; created if missing)",
)
@policy_options
@json_option
@pass_ctx
@handle_errors
def report(ctx: Ctx, html_dir: str, policy_files: tuple[str, ...], hosts: tuple[str, ...]) -> None:
    """Write a static, self-contained HTML page of the fleet (docs/report.md): each
    host's freshness against its RPO (ok, late, breach), last backup per source, last
    drill and its checks, RTO and RPO history, stored bytes over time, what retention
    keeps and why, Object Lock, and the newest drills' failed checks in full.

    Read from the repositories (trusted snapshots and signed drill reports only) and
    the catalog. A host that cannot be read is shown as such and the page is still
    written; the exit code is 0 once it is (use `drkit status` to alert).
    """
    from drkit.actions.report import gather
    from drkit.actions.report_html import write_page

    now = ctx.now()
    policies = ctx.policies(policy_files, hosts)
    catalog = ctx.catalog()
    try:
        fleet = gather(policies, catalog, now, log=lambda m: click.echo(m, err=True))
    finally:
        catalog.close()
    path = write_page(fleet, html_dir)
    states = {h.host: h.freshness if not h.error else "unknown" for h in fleet.hosts}
    size = path.stat().st_size

    def text() -> None:
        click.echo(f"report: {path} ({size} bytes)")
        for h in fleet.hosts:
            if states[h.host] != "ok":
                click.echo(f"  {h.host}: {states[h.host]}: {h.error or h.why}")

    ctx.emit({"page": str(path), "bytes": size, "hosts": states}, text)
