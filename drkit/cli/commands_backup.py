"""backup, verify and restore commands."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import TYPE_CHECKING

import click

from drkit.cli.context import (
    EXIT_CODES,
    Ctx,
    handle_errors,
    identity_option,
    load_identity,
    log_to_stderr,
    parse_wait,
    policy_options,
    verbosity,
    wait_option,
)
from drkit.cli.group import cli, json_option
from drkit.cli.progress import show_progress
from drkit.cli.restore_output import emit_plan, emit_result, exit_for, warn_nothing_to_resume
from drkit.cli.summary import print_run, print_warnings, result_dict
from drkit.errors import RestoreError, UsageError

if TYPE_CHECKING:
    from drkit.actions.fleet import HostResult
    from drkit.actions.restore import Step

pass_ctx = click.make_pass_decorator(Ctx)


@cli.command(epilog=EXIT_CODES)
@policy_options
@click.option("--all", "all_hosts", is_flag=True, help="every policy in the policy directory")
@click.option(
    "--due",
    is_flag=True,
    help="only hosts and sources whose schedule came due since their last success "
    "(every policy unless --host/--policy; for cron: drkit backup --due -q)",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1, 64),
    default=4,
    envvar="DRKIT_JOBS",
    show_default=True,
    help="hosts backed up at the same time",
)
@click.option(
    "--only",
    multiple=True,
    metavar="SOURCE",
    help="only this source (repeatable; one host): the snapshot holds just these, and a "
    "restore takes the others from older snapshots",
)
@wait_option
@json_option
@pass_ctx
@handle_errors
def backup(
    ctx: Ctx,
    policy_files: tuple[str, ...],
    hosts: tuple[str, ...],
    all_hosts: bool,
    due: bool,
    jobs: int,
    only: tuple[str, ...],
    wait_text: str | None,
) -> None:
    """Back up hosts: every source of each policy, committed by a manifest.

    Hosts run concurrently (--jobs); one host's failure never stops the others.
    One run per host at a time: a host whose lock another run holds is skipped
    (exit 5 if nothing else failed) unless --wait. -q (cron): print nothing unless
    something failed or warned.
    """
    from drkit.actions.fleet import backup_fleet, exit_code

    if not (policy_files or hosts or all_hosts or due):
        raise UsageError("name hosts (--host), policy files (--policy), --all or --due")
    wait = parse_wait(wait_text)
    policies = ctx.policies(policy_files, hosts)
    if only:
        from drkit.policy.models import source_name

        if len(policies) != 1:
            raise UsageError("--only names sources of one host: give one --host or --policy")
        known = {source_name(c) for c in policies[0].source}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise UsageError(
                f"host {policies[0].host}: --only: no source {', '.join(unknown)} in the policy "
                f"(sources: {', '.join(sorted(known))})"
            )
    quiet = verbosity() < 0
    log = log_to_stderr()

    def done(r: HostResult) -> None:
        if r.error:
            click.echo(f"error: {r.error}", err=True)
        elif r.status == "not-due":
            log(f"{r.host}: not due")

    with show_progress():
        results = backup_fleet(
            policies,
            jobs=jobs,
            catalog=ctx.catalog,
            log=log,
            on_done=done,
            clock=ctx.now,
            due=due,
            wait=wait,
            only=set(only) or None,
        )
    code = exit_code(results)
    if ctx.as_json or not (quiet and code == 0):
        ctx.emit({"results": [result_dict(r) for r in results]}, lambda: print_run(results))
    else:  # -q for cron: a warning is still worth a mail
        print_warnings(results)
    if code:
        sys.exit(code)


@cli.command(epilog=EXIT_CODES)
@click.option("--host", required=False, help="host name")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), help="policy file")
@click.option("--snapshot", help="snapshot id (default: the newest)")
@click.option("--all-snapshots", is_flag=True, help="verify every committed snapshot")
@click.option("--no-decrypt", is_flag=True, help="check stored digests only (no identity)")
@identity_option
@json_option
@pass_ctx
@handle_errors
def verify(
    ctx: Ctx,
    host: str | None,
    policy_file: str | None,
    snapshot: str | None,
    all_snapshots: bool,
    no_decrypt: bool,
    identity_file: str | None,
) -> None:
    """Read, authenticate and hash every object of a snapshot, without restoring."""
    from drkit.actions.repository_access import open_repository
    from drkit.actions.verify import verify_host

    policy = ctx.one_policy(policy_file, host)
    repo = open_repository(policy)
    identities = None if no_decrypt else load_identity(identity_file)
    with show_progress():
        results = verify_host(repo, policy.host, identities, snapshot=snapshot, every=all_snapshots)
    data = [
        {
            "host": r.host,
            "snapshot": r.snapshot,
            "ok": r.ok,
            "objects": r.checked,
            "bytes": r.bytes,
            "decrypted": r.decrypted,
            "problems": r.problems,
        }
        for r in results
    ]

    def text() -> None:
        for r in results:
            state = "ok" if r.ok else "FAILED"
            click.echo(f"{r.host} {r.snapshot}: {state} ({r.checked} objects, {r.bytes} bytes)")
            for p in r.problems:
                click.echo(f"  {p}")

    ctx.emit({"results": data}, text)
    if not all(r.ok for r in results):
        sys.exit(1)


@cli.command(epilog=EXIT_CODES)
@click.option("--host", help="host whose snapshot to restore")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), help="policy file")
@click.option(
    "--snapshot",
    help="restore as of this snapshot: its sources, and what it lacks from older ones "
    "(default: each source's newest)",
)
@click.option("--at", "at_text", help="each source as of this time: '2 days ago', 36h, ISO time")
@click.option("--only", multiple=True, help="restore only this source (repeatable)")
@click.option(
    "--target", help="ssh://user@host[:port] to restore onto (default: this machine, --local)"
)
@click.option("--local", "local_target", is_flag=True, help="restore onto this machine")
@click.option(
    "--target-identity", type=click.Path(dir_okay=False), help="--target: SSH key to log in with"
)
@click.option(
    "--target-known-hosts",
    type=click.Path(dir_okay=False),
    help="--target: known_hosts file (default: the policy's)",
)
@click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="--target: trust an unknown host key once and record it (a changed key is refused)",
)
@click.option("--database", help="postgres: restore into this database name")
@click.option("--rename-db", "rename_db", metavar="SUFFIX", help="postgres: database name + SUFFIX")
@click.option("--pg-host", help="postgres: target server host (default: the policy's)")
@click.option("--pg-port", type=int, help="postgres: target server port")
@click.option("--pg-user", help="postgres: target server user")
@click.option(
    "--pg-password-env", metavar="VAR", help="postgres: read the target password from $VAR"
)
@click.option(
    "--pg-jobs",
    type=click.IntRange(min=1),
    help="postgres: parallel pg_restore jobs into a fresh database (1 = one stream)",
)
@click.option("--dest", help="files/env: restore under this directory instead of /")
@click.option(
    "--force-files",
    is_flag=True,
    help="overwrite differing files (files, env, caddy, certbot, pm2); unmodified package "
    "defaults are replaced without it",
)
@click.option(
    "--force-db",
    is_flag=True,
    help="replace existing databases and data stores (PostgreSQL, NATS, docker volumes)",
)
@click.option("--force", is_flag=True, help="both --force-files and --force-db")
@click.option(
    "--no-reload",
    is_flag=True,
    help="do not reload or start the restored services (Caddy, nginx); they are then not "
    "probed and the verdict is at best warn",
)
@click.option(
    "--keep-going",
    is_flag=True,
    help="after a step fails, restore the other sources anyway (exit 3, verdict fail)",
)
@click.option("--plan", "plan_only", is_flag=True, help="print the ordered steps; change nothing")
@click.option("--yes", is_flag=True, help="do not ask before restoring")
@click.option("--resume", is_flag=True, help="continue an interrupted restore after its last step")
@click.option(
    "--from-provider-snapshot",
    "provider_snapshot",
    is_flag=False,
    flag_value="",
    default=None,
    hidden=True,  # became `drkit restore-machine`; kept to say so
)
@identity_option
@json_option
@pass_ctx
@handle_errors
def restore(
    ctx: Ctx,
    host: str | None,
    policy_file: str | None,
    snapshot: str | None,
    at_text: str | None,
    only: tuple[str, ...],
    target: str | None,
    local_target: bool,
    target_identity: str | None,
    target_known_hosts: str | None,
    accept_new_host_key: bool,
    database: str | None,
    rename_db: str | None,
    pg_host: str | None,
    pg_port: int | None,
    pg_user: str | None,
    pg_password_env: str | None,
    pg_jobs: int | None,
    dest: str | None,
    force_files: bool,
    force_db: bool,
    force: bool,
    no_reload: bool,
    keep_going: bool,
    plan_only: bool,
    yes: bool,
    resume: bool,
    provider_snapshot: str | None,
    identity_file: str | None,
) -> None:
    """Restore a host: roles and databases first, then env and files, then services.

    Each source comes from the newest complete snapshot holding it (at or before
    --at, or as of --snapshot): with per-source schedules (backup --due) the
    database and the certificates are often in different snapshots. The plan
    names each step's snapshot; a needed source that no snapshot holds is
    refused (restore the others with --only). Shows the plan and asks unless
    --yes; refuses to overwrite differing files unless --force-files and live
    databases unless --force-db (--force: both); checks the result
    against the facts recorded at backup time (each source's own snapshot).

    A new machine from the provider's snapshot of the host: `drkit restore-machine`.
    """
    from drkit.actions.restore import format_plan
    from drkit.actions.restore_request import RestoreRequest, prepare_restore
    from drkit.sources.base import RestoreOptions

    _refuse_conflicts(
        host,
        provider_snapshot,
        database=database,
        rename_db=rename_db,
        target=target,
        local_target=local_target,
        snapshot=snapshot,
        at_text=at_text,
    )
    policy = ctx.one_policy(policy_file, host)
    at = _parse_at(ctx, at_text)
    identities = load_identity(identity_file)
    password = _password_from(pg_password_env)
    log = log_to_stderr()
    opts = RestoreOptions(
        database=database,
        db_suffix=rename_db or "",
        pg_host=pg_host,
        pg_port=pg_port,
        pg_user=pg_user,
        pg_password=password,
        dest=dest,
        log=log,
        force_files=force or force_files,
        force_db=force or force_db,
        reload=not no_reload,
        pg_jobs=pg_jobs,
    )
    request = RestoreRequest(
        snapshot=snapshot,
        at=at,
        only=only,
        target=target,
        target_identity=target_identity,
        target_known_hosts=target_known_hosts,
        accept_new_host_key=accept_new_host_key,
        resume=resume,
        options=opts,
    )
    prepared = prepare_restore(policy, request, identities)
    executor, target_label = prepared.executor, prepared.target
    warn_nothing_to_resume(executor, target_label)
    steps = executor.plan()
    plan_text = format_plan(executor.assembly, target_label, steps)
    if plan_only:
        emit_plan(ctx, executor, target_label, steps, plan_text)
        return
    _confirm(executor.assembly.host, steps, plan_text, yes=yes)
    with show_progress():
        result = executor.run(log, keep_going=keep_going)
    emit_result(ctx, executor, result, [s.source for s in steps], target_label)
    exit_for(result)


def _refuse_conflicts(
    host: str | None,
    provider_snapshot: str | None,
    *,
    database: str | None,
    rename_db: str | None,
    target: str | None,
    local_target: bool,
    snapshot: str | None,
    at_text: str | None,
) -> None:
    """Options that exclude each other, and the old flag that became its own command."""
    if provider_snapshot is not None:
        ident = f" --snapshot {provider_snapshot}" if provider_snapshot else ""
        raise UsageError(
            "booting a machine from a provider snapshot is its own command now: drkit "
            f"restore-machine --host {host or 'HOST'}{ident} [--region R] [--size S] [--yes]"
        )
    if database and rename_db:
        raise UsageError("--database and --rename-db exclude each other")
    if target and local_target:
        raise UsageError("--target and --local exclude each other")
    if snapshot and at_text:
        raise UsageError("--snapshot and --at exclude each other")


def _parse_at(ctx: Ctx, at_text: str | None) -> dt.datetime | None:
    from drkit.durations import parse_when

    if not at_text:
        return None
    try:
        return parse_when(at_text, ctx.now())
    except ValueError as exc:
        raise UsageError(f"--at: {exc}") from None


def _password_from(var: str | None) -> str | None:
    """--pg-password-env: the password in ``$var``; refused when it is not set."""
    if not var:
        return None
    password = os.environ.get(var)
    if password is None:
        raise UsageError(f"--pg-password-env: ${var} is not set")
    return password


def _confirm(host: str, steps: list[Step], plan_text: str, *, yes: bool) -> None:
    """Refuse a plan with a blocked step; without --yes, show the plan and ask."""
    blocked = [s for s in steps if s.plan.blocked]
    if blocked:
        click.echo(plan_text, err=True)
        raise RestoreError(
            f"host {host}: step {blocked[0].number} ({blocked[0].source}) is "
            f"refused: {blocked[0].plan.blocked}; nothing was restored"
        )
    if not yes:
        click.echo(plan_text, err=True)
        if not sys.stdin.isatty():
            raise UsageError("restore needs --yes when not run from a terminal")
        if not click.confirm("Restore now?", err=True):
            raise UsageError("restore cancelled")
