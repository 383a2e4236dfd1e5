"""Unattended operation: prune and schedule commands (docs/operations.md)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from drkit.cli.context import (
    EXIT_CODES,
    Ctx,
    handle_errors,
    log_to_stderr,
    parse_wait,
    policy_options,
    wait_option,
)
from drkit.cli.group import cli, json_option
from drkit.errors import DrkitError, UsageError

if TYPE_CHECKING:
    from drkit.actions.prune import PruneResult
    from drkit.policy.models import Policy

pass_ctx = click.make_pass_decorator(Ctx)


@cli.command(epilog=EXIT_CODES)
@policy_options
@click.option("--all", "all_hosts", is_flag=True, help="every policy in the policy directory")
@click.option("--dry-run", is_flag=True, help="say what would be removed and why; remove nothing")
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="leftovers of failed runs younger than this are kept (a backup may be running)",
)
@wait_option
@json_option
@pass_ctx
@handle_errors
def prune(
    ctx: Ctx,
    policy_files: tuple[str, ...],
    hosts: tuple[str, ...],
    all_hosts: bool,
    dry_run: bool,
    grace: str,
    wait_text: str | None,
) -> None:
    """Remove snapshots the host's retention does not keep, with the reason for each.

    Never removes the newest complete snapshot, the newest one that passed a
    drill, or anything under S3 Object Lock. Also clears leftovers of failed
    runs older than --grace. Holds the host's lock (not with --dry-run).
    """
    from drkit.actions.fleet import exit_code_of
    from drkit.actions.host_prune import prune_one
    from drkit.durations import parse_duration
    from drkit.locks import LockHeld

    if not (policy_files or hosts or all_hosts):
        raise UsageError("name hosts (--host), policy files (--policy) or --all")
    try:
        grace_delta = parse_duration(grace)
    except ValueError as exc:
        raise UsageError(f"--grace: {exc}") from None
    wait = parse_wait(wait_text)
    policies = ctx.policies(policy_files, hosts)
    log = log_to_stderr()
    catalog = ctx.catalog()
    now = ctx.now()
    rows: list[dict[str, Any]] = []
    results: dict[str, PruneResult] = {}
    for policy in policies:
        try:
            res = prune_one(
                policy,
                now=now,
                dry_run=dry_run,
                grace=grace_delta,
                catalog=catalog,
                wait=wait,
                log=log,
            )
        except LockHeld as exc:
            click.echo(f"error: {exc}", err=True)
            rows.append({"host": policy.host, "status": "locked", "error": str(exc)})
            continue
        except DrkitError as exc:
            click.echo(f"error: {exc}", err=True)
            rows.append({"host": policy.host, "status": "failed", "error": str(exc)})
            continue
        for problem in res.errors:
            click.echo(f"error: {problem}", err=True)
        results[policy.host] = res
        rows.append({"status": "success" if res.ok else "failed", **res.as_dict()})
    catalog.close()

    def text() -> None:
        for row in rows:
            if row["host"] in results:
                _print_prune(results[row["host"]])
            else:
                click.echo(f"{row['host']}: {row['status'].upper()}")

    ctx.emit({"results": rows}, text)
    code = exit_code_of([r["status"] for r in rows])
    if code:
        sys.exit(code)


def _print_prune(res: PruneResult) -> None:
    dry = " (dry run: nothing removed)" if res.dry_run else ""
    click.echo(f"{res.host}: retention {res.policy}{dry}")
    for d in res.decisions:
        verb = "keep  " if d.keep else "remove"
        click.echo(f"  {verb} {d.snapshot.id}  {'; '.join(d.reasons)}")
    for sid, why in res.incomplete_kept:
        click.echo(f"  keep   {sid}  {why}")
    for sid in res.incomplete_removed:
        click.echo(f"  remove {sid}  no manifest: left by a failed run")
    for label in res.uploads_aborted:
        click.echo(f"  abort  {label}")
    for sid, why in res.skipped:
        click.echo(f"  skip   {sid}  {why}")
    for why in res.packs_locked:
        click.echo(f"  keep   {why}")
    verb = "would remove" if res.dry_run else "removed"
    # Chunk storage only where the repository has any: a whole-artifact line stays as it was.
    chunks = [f"{res.packs_removed} pack(s)"] if res.packs_removed or res.packs_locked else []
    chunks += [f"{res.chunks_removed} chunk object(s)"] if res.chunks_removed else []
    if res.packs_repacked:
        chunks += [f"{res.packs_repacked} pack(s) repacked into {res.packs_written}"]
    if res.would_repack:
        chunks += [f"would repack {len(res.would_repack)} pack(s)"]
    click.echo(
        f"{res.host}: {verb} {len(res.removed)} snapshot(s), "
        f"{len(res.incomplete_removed)} incomplete (kept {len(res.incomplete_kept)}), "
        f"{len(res.uploads_aborted)} upload(s)"
        + "".join(f", {c}" for c in chunks)
        + (
            f" ({len(res.packs_locked)} unreferenced pack(s) held by Object Lock)"
            if res.packs_locked
            else ""
        )
        + f": {res.freed_bytes} bytes; kept {len(res.kept)}"
    )


@cli.command("schedule", epilog=EXIT_CODES)
@policy_options
@click.option(
    "-n",
    "count",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="next runs shown per schedule",
)
@click.option(
    "--emit",
    type=click.Choice(["cron", "systemd"]),
    help="print a crontab entry, or a systemd service and timer, running `backup --due`",
)
@click.option(
    "--every",
    type=click.IntRange(1, 60),
    default=10,
    show_default=True,
    help="--emit: minutes between two `backup --due` runs",
)
@click.option("--user", help="--emit: run as this user (cron.d user field, systemd User=)")
@click.option(
    "--env-file",
    default="/etc/drkit/env",
    show_default=True,
    help="--emit systemd: EnvironmentFile with the env: secrets your policies name",
)
@json_option
@pass_ctx
@handle_errors
def schedule(
    ctx: Ctx,
    policy_files: tuple[str, ...],
    hosts: tuple[str, ...],
    count: int,
    emit: str | None,
    every: int,
    user: str | None,
    env_file: str,
) -> None:
    """List each host's next scheduled backups (UTC, jitter included), or --emit the
    cron / systemd entry that runs `drkit backup --due`."""
    from drkit import schedule as sched

    if emit:
        group, selection = _selection(ctx, policy_files, hosts)
        command = [*_drkit_argv(), *group, "backup", *selection, "--due", "-q"]
        if emit == "cron":
            line = sched.emit_cron(every_minutes=every, command=command, user=user)
            ctx.emit({"cron": line}, lambda: click.echo(line, nl=False))
            return
        units = sched.emit_systemd(
            every_minutes=every, command=command, user=user, environment_file=env_file
        )

        def text() -> None:
            for name, body in units.items():
                click.echo(f"# /etc/systemd/system/{name}\n{body}")

        ctx.emit({"units": units}, text)
        return
    now = ctx.now()
    rows = [_schedule_row(p, now, count) for p in ctx.policies(policy_files, hosts)]

    def listing() -> None:
        for row in rows:
            jitter = f" (jitter {row['jitter']})" if row["jitter"] else ""
            if row["schedule"]:
                click.echo(f"{row['host']}: {row['schedule']}{jitter}")
                click.echo(f"  next: {', '.join(row['next'])}")
            elif row["sources"]:
                click.echo(f"{row['host']}: no schedule (only sources with their own run)")
            else:
                click.echo(f"{row['host']}: no schedule (never run by backup --due)")
            for src in row["sources"]:
                click.echo(f"  source {src['source']}: {src['schedule']}{jitter}")
                click.echo(f"    next: {', '.join(src['next'])}")

    ctx.emit({"now": now.isoformat(timespec="seconds"), "hosts": rows}, listing)


def _schedule_row(policy: Policy, now: dt.datetime, count: int) -> dict[str, Any]:
    from drkit.actions.status import jitter_seconds
    from drkit.policy.models import source_name
    from drkit.schedule import next_runs

    jitter = jitter_seconds(policy)

    def upcoming(expr: str) -> list[str]:
        times = next_runs(expr, now, count, jitter_seconds=jitter, key=policy.host)
        return [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in times]

    return {
        "host": policy.host,
        "schedule": policy.schedule,
        "jitter": policy.jitter,
        "next": upcoming(policy.schedule) if policy.schedule else [],
        "sources": [
            {"source": source_name(s), "schedule": s.schedule, "next": upcoming(s.schedule)}
            for s in policy.source
            if s.schedule
        ],
    }


def _drkit_argv() -> list[str]:
    """How cron or systemd should start this drkit: an absolute path (systemd needs one)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "drkit" and argv0.exists():
        return [str(argv0.resolve())]
    return [sys.executable, "-m", "drkit"]


def _selection(
    ctx: Ctx, policy_files: tuple[str, ...], hosts: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """The options (before, after ``backup``) that make the emitted run see the same
    policies as this one: the policy dir, policy files and hosts, as absolute paths."""
    group: list[str] = []
    if ctx.policy_dir:
        group += ["--policy-dir", str(ctx.policy_dir.resolve())]
    selection: list[str] = []
    for f in policy_files:
        selection += ["--policy", str(Path(f).resolve())]
    for h in hosts:
        selection += ["--host", h]
    return group, selection
