"""restore-machine: boot a new machine from a provider snapshot drkit made."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from drkit.cli.context import EXIT_CODES, Ctx, handle_errors, log_to_stderr
from drkit.cli.group import cli, json_option
from drkit.errors import UsageError

if TYPE_CHECKING:
    from drkit.policy.models import Policy

pass_ctx = click.make_pass_decorator(Ctx)


@cli.command("restore-machine", epilog=EXIT_CODES)
@click.option("--host", help="host whose provider snapshot to boot")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), help="policy file")
@click.option(
    "--snapshot",
    "snapshot_id",
    metavar="ID",
    help="the provider's snapshot id (default: the newest complete one drkit made)",
)
@click.option("--only", multiple=True, help="the snapshot source to use, when there are several")
@click.option("--region", help="region (default: the policy's)")
@click.option("--size", help="machine size (default: the policy's)")
@click.option(
    "--plan", "plan_only", is_flag=True, help="print what would be created; change nothing"
)
@click.option("--yes", is_flag=True, help="create the machine (without it: the plan only)")
@json_option
@pass_ctx
@handle_errors
def restore_machine_command(
    ctx: Ctx,
    host: str | None,
    policy_file: str | None,
    snapshot_id: str | None,
    only: tuple[str, ...],
    region: str | None,
    size: str | None,
    plan_only: bool,
    yes: bool,
) -> None:
    """Create a NEW machine from the provider's snapshot of the host (the original
    machine is not touched). Prints the plan; creates the machine with --yes.

    Data restores (databases, files, services) are `drkit restore`; this is for
    when the machine itself is gone. `restore --from-provider-snapshot` is the same.
    """
    policy = ctx.one_policy(policy_file, host)
    restore_machine(ctx, policy, snapshot_id, only, region, size, yes and not plan_only)


def restore_machine(
    ctx: Ctx,
    policy: Policy,
    snapshot_id: str | None,
    only: tuple[str, ...],
    region: str | None,
    size: str | None,
    yes: bool,
) -> None:
    """Print the plan; with ``yes`` create the machine (restore-machine, and restore
    --from-provider-snapshot).

    ``snapshot_id`` None: the newest complete snapshot drkit made for the source.
    """
    from drkit.actions.provider_snapshot import restore_from_snapshot
    from drkit.policy.models import MachineImageConfig, source_name

    configs = [s for s in policy.source if isinstance(s, MachineImageConfig)]
    if only:
        configs = [s for s in configs if source_name(s) in only]
    if not configs:
        what = f"named {', '.join(only)}" if only else "in its policy"
        raise UsageError(f"host {policy.host}: no snapshot source {what}")
    if len(configs) > 1:
        names = ", ".join(source_name(s) for s in configs)
        raise UsageError(
            f"host {policy.host}: several snapshot sources ({names}); pick one with --only"
        )
    config = configs[0]
    done = restore_from_snapshot(
        policy,
        config,
        snapshot_id,
        region,
        size,
        yes,
        now=ctx.now(),
        log=log_to_stderr(),
    )
    instance = done.instance
    data = {
        "host": policy.host,
        "source": source_name(config),
        "provider": config.provider,
        "snapshot": done.snapshot.facts(),
        "plan": done.plan,
        "instance": instance.__dict__ if instance else None,
    }

    def text() -> None:
        click.echo(done.plan)
        if instance is not None:
            click.echo(
                f"{policy.host}: created {config.provider} machine {instance.id} ({instance.name}) "
                f"at {instance.address or 'no public address'}, {instance.status}"
            )

    ctx.emit(data, text)
