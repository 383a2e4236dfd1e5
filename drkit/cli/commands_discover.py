"""drkit discover: what a host runs, and which of it the policy backs up."""

from __future__ import annotations

import click

from drkit.cli.context import EXIT_CODES, Ctx, handle_errors
from drkit.cli.group import cli, json_option

pass_ctx = click.make_pass_decorator(Ctx)

COLUMNS = f"{'KIND':<16} {'NAME':<40} {'WHERE':<22} COVERED BY"


@cli.command(epilog=EXIT_CODES)
@click.option("--host", help="the host (its policy from the policy directory)")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), help="policy file")
@click.option(
    "--suggest",
    is_flag=True,
    help="print policy TOML ([[source]] tables) for what no source covers, to append to "
    "the policy file (with --json: as the 'suggest' key)",
)
@json_option
@pass_ctx
@handle_errors
def discover(ctx: Ctx, host: str | None, policy_file: str | None, suggest: bool) -> None:
    """List what a host runs (compose projects and their files, volumes and bind mounts,
    containers, PostgreSQL/MySQL/Redis databases, PM2 apps, sites, certificate stores,
    NATS servers, .env files) and, for each, which of the policy's sources covers it.
    Read-only, over the policy's connection (docs/discover.md). Exit 0 whatever is
    uncovered; 1 when the host cannot be read."""
    from drkit.actions.discover import discover as run_discovery

    policy = ctx.one_policy(policy_file, host)
    found = run_discovery(policy)
    data = found.as_dict()
    if suggest:
        data["suggest"] = found.suggestion_toml()

    def text() -> None:
        if suggest:
            click.echo(found.suggestion_toml(), nl=False)
            click.echo(
                f"{policy.host}: {len(found.uncovered)} uncovered, {len(found.suggested)} "
                "source(s) suggested",
                err=True,
            )
            return
        facts = found.facts
        click.echo(
            f"host {policy.host} (login {facts.user or '?'}, docker {facts.docker or 'none'})"
        )
        for p in facts.projects:
            click.echo(
                f"compose project {p.name} in {p.working_dir}: "
                f"services {', '.join(p.services)}; files {', '.join(p.files)}"
            )
        click.echo(COLUMNS)
        for f in found.findings:
            covered = ", ".join(f.covered_by) or ("NOT COVERED" if f.data else "-")
            click.echo(f"{f.kind:<16} {_cut(f.name, 40):<40} {_cut(f.where, 22):<22} {covered}")
        for error in facts.errors:
            click.echo(f"warning: {error}", err=True)
        gaps = found.uncovered
        if gaps:
            click.echo(
                f"{len(gaps)} not covered by any source of the policy "
                f"(drkit discover --host {policy.host} --suggest)"
            )
        else:
            click.echo("every source of data found is covered")

    ctx.emit(data, text)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]
