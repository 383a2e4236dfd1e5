"""init, policy validate, snapshots, status and catalog commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from drkit.cli.context import (
    EXIT_CODES,
    EXIT_PARTIAL,
    Ctx,
    each_host,
    handle_errors,
    policy_options,
)
from drkit.cli.group import cli, json_option
from drkit.errors import PolicyError, UsageError

if TYPE_CHECKING:
    from drkit.policy.models import Policy

pass_ctx = click.make_pass_decorator(Ctx)


@cli.command(epilog=EXIT_CODES)
@click.option("--repo", help="repository URL (default: a local directory in the data dir)")
@click.option("--host", default="example", help="host name for the sample policy")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False),
    help="initialise this policy's repository instead (creates a missing S3 bucket, with "
    "Object Lock if the policy sets immutable_days; refuses a bucket without it)",
)
@json_option
@pass_ctx
@handle_errors
def init(ctx: Ctx, repo: str | None, host: str, policy_file: str | None) -> None:
    """Create the config dir, an age identity (0600) and a sample policy.

    With --policy, prepare that policy's repository instead of writing a sample.
    """
    from drkit.actions.init import init_machine

    if policy_file and repo:
        raise UsageError("--policy and --repo exclude each other")
    done = init_machine(
        repo=repo,
        host=host,
        policy_file=Path(policy_file) if policy_file else None,
        policy_dir=ctx.policy_dir,
    )
    sample, repository_url = done.sample_policy, done.repository.url
    data = {
        "identity_file": str(done.identity),
        "identity_created": done.identity_created,
        "recipient": done.recipient,
        "signing_key_file": str(done.signing_key_file),
        "signing_key_created": done.signing_key_created,
        "signer": done.signer,
        "repository": repository_url,
        "bucket_created": done.bucket_created,
        "sample_policy": str(sample) if sample else None,
        "dedup": done.policy_dedup,
    }

    def text() -> None:
        verb = "created" if done.identity_created else "kept existing"
        click.echo(f"identity: {done.identity} ({verb}; keep it offline, it restores everything)")
        click.echo(f"recipient (public, put it in policies): {done.recipient}")
        verb = "created" if done.signing_key_created else "kept existing"
        click.echo(f"signing key: {done.signing_key_file} ({verb}; signs this machine's backups)")
        click.echo(f"signer (public, pin it in [encryption] signers): {done.signer}")
        created = " (bucket created)" if done.bucket_created else ""
        click.echo(f"repository: {repository_url}{created}")
        if policy_file:  # how this policy stores (the sample says it in its text)
            how = "deduplicated chunks in packs" if done.policy_dedup else "whole artifacts"
            click.echo(f"stores: {how} ([repository] dedup = {str(done.policy_dedup).lower()})")
        if sample:
            click.echo(f"sample policy: {sample}")

    ctx.emit(data, text)


@cli.group()
def policy() -> None:
    """Policy files."""


@policy.command("validate", epilog=EXIT_CODES)
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@json_option
@pass_ctx
@handle_errors
def policy_validate(ctx: Ctx, files: tuple[str, ...]) -> None:
    """Check policy files (default: all in the policy directory); report every error.

    Besides the schema: what a backup would refuse that this machine can tell without
    contacting the host (repository URL, recipients/signers files, SSH identity_file
    and known_hosts, secret references; an unset env: variable is a warning).
    """
    from drkit.policy.loader import load_each
    from drkit.policy.local_checks import local_problems

    paths = [Path(f) for f in files] or ctx.found_policy_files()
    loaded, problems = load_each(paths)
    warnings: list[str] = []
    for path, policy in loaded:
        found = local_problems(policy)
        problems += [f"{path}: {p}" for p in found.errors]
        warnings += [f"{path}: {w}" for w in found.warnings]
    hosts = [p.host for _path, p in loaded]
    if ctx.as_json:
        click.echo(
            json.dumps(
                {"ok": not problems, "hosts": hosts, "problems": problems, "warnings": warnings},
                indent=2,
            )
        )
    else:
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
        for p in problems:
            click.echo(f"error: {p}", err=True)
        if not problems:
            click.echo(f"{len(hosts)} policies ok: {', '.join(hosts)}")
    if problems:
        sys.exit(PolicyError(problems).exit_code)


@cli.command(epilog=EXIT_CODES)
@policy_options
@json_option
@pass_ctx
@handle_errors
def snapshots(ctx: Ctx, policy_files: tuple[str, ...], hosts: tuple[str, ...]) -> None:
    """List committed snapshots per host, from the repository; snapshots that are not
    signed by a key the policy trusts are shown as UNTRUSTED, with the reason; snapshot
    directories without a manifest (an interrupted backup) as INCOMPLETE, with their age
    and when `drkit prune` removes them. A host that cannot be read is reported in its
    row and the others are listed (exit 3)."""
    from drkit.actions.snapshot_list import list_host

    now = ctx.now()
    rows: list[dict[str, Any]] = []
    untrusted: list[dict[str, Any]] = []
    incomplete: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []

    def read(policy: Policy) -> None:
        listed = list_host(policy, now)
        rows.extend(listed.rows)
        untrusted.extend(listed.untrusted)
        incomplete.extend(listed.incomplete)

    for policy, _none, error in each_host(ctx.policies(policy_files, hosts), read):
        if error is not None:
            errors.append({"host": policy.host, "error": error})

    def text() -> None:
        if rows:
            click.echo(f"{'HOST':<12} {'SNAPSHOT':<24}  {'STORED BYTES':>12}  SOURCES")
        for r in rows:
            sources = ",".join(r["sources"])
            click.echo(f"{r['host']:<12} {r['snapshot']:<24}  {r['stored_bytes']:>12}  {sources}")
            if r["warnings"]:
                each = ", ".join(f"{n} {c}" for n, c in r["warnings"].items())
                click.echo(f"  warnings at backup: {each} (what they say: restore --plan)")
            for name, p in r["provider_snapshots"].items():
                click.echo(f"  {name}: {p['provider']} snapshot {p['id']} ({p['name']})")
        if not rows:
            click.echo("no snapshots")
        for u in untrusted:
            click.echo(f"{u['host']:<12} {u['snapshot']}  UNTRUSTED: {u['reason']}")
        for i in incomplete:
            click.echo(
                f"{i['host']:<12} {i['snapshot']}  INCOMPLETE: no manifest (an interrupted or "
                f"running backup), {i['age']} old; prune removes it after {i['prunable_after']}"
            )
        for e in errors:
            click.echo(f"{e['host']:<12} ERROR: {e['error']}")

    data = {"snapshots": rows, "untrusted": untrusted, "incomplete": incomplete}
    ctx.emit({**data, "errors": errors}, text)
    if errors:
        sys.exit(EXIT_PARTIAL)


@cli.command(epilog=EXIT_CODES)
@policy_options
@json_option
@pass_ctx
@handle_errors
def status(ctx: Ctx, policy_files: tuple[str, ...], hosts: tuple[str, ...]) -> None:
    """Freshness of each host's newest backup against its RPO, and its last restore drill
    (time, verdict).

    Exits 1 when any host breaches its RPO or its last drill failed (a host never
    drilled does not), so it can run as a monitor; else 3 when a host could not be
    read (its secrets, its repository: the row says why; the other hosts are reported).
    """
    from drkit.actions.status import host_status

    now = ctx.now()
    policies = ctx.policies(policy_files, hosts)
    catalog = ctx.catalog()
    try:
        read = each_host(policies, lambda p: host_status(p, catalog, now))
    finally:
        catalog.close()
    rows = [row if row is not None else _unread_row(p, error) for p, row, error in read]

    def text() -> None:
        for r in rows:
            if r.get("error"):
                click.echo(f"{r['host']:<12} ERROR: {r['error']}")
                continue
            age = r["age"] or "never"
            state = "BREACH" if r["breach"] else "ok"
            rpo = r["rpo"] or "-"
            click.echo(
                f"{r['host']:<12} last {r['last_snapshot'] or '-':<24} age {age:<8} "
                f"rpo {rpo:<6} {state:<6} {_drill_text(r.get('last_drill'))}"
            )
            if r.get("last_error"):
                click.echo(f"  last run failed: {r['last_error']}")
            if r.get("untrusted"):
                click.echo(
                    f"  {len(r['untrusted'])} untrusted snapshot(s) not counted "
                    "(`drkit snapshots` shows why)"
                )

    ctx.emit({"hosts": rows, "checked": now.isoformat()}, text)
    if any(r["breach"] or r["drill_failed"] for r in rows):
        sys.exit(1)
    if any(r.get("error") for r in rows):
        sys.exit(EXIT_PARTIAL)


def _unread_row(policy: Policy, error: str | None) -> dict[str, Any]:
    """A status row for a host whose repository could not be read: neither fresh nor a
    breach, just unknown (exit 3 unless another host breached)."""
    return {
        "host": policy.host,
        "error": error,
        "rpo": policy.rpo,
        "breach": False,
        "drill_failed": False,
    }


def _drill_text(drill: dict[str, Any] | None) -> str:
    if drill is None:
        return "drill never"
    started = drill["started"][:16].replace("T", " ")
    return f"drill {drill['verdict'].upper()} {started} ({drill['age']} ago)"


@cli.group()
def catalog() -> None:
    """The local index of runs and snapshots (a cache of the repositories)."""


@catalog.command("sync", epilog=EXIT_CODES)
@policy_options
@json_option
@pass_ctx
@handle_errors
def catalog_sync(ctx: Ctx, policy_files: tuple[str, ...], hosts: tuple[str, ...]) -> None:
    """Rebuild the catalog from the repositories alone."""
    from drkit.actions.catalog_sync import sync_host

    policies = ctx.policies(policy_files, hosts)
    cat = ctx.catalog()

    try:
        read = each_host(policies, lambda p: sync_host(cat, p))
    finally:
        cat.close()
    out: list[dict[str, Any]] = [
        row if row is not None else {"host": p.host, "error": err} for p, row, err in read
    ]

    def text() -> None:
        for r in out:
            if r.get("error"):
                click.echo(f"{r['host']}: ERROR: {r['error']}")
                continue
            click.echo(
                f"{r['host']}: {r['added']} added, {r['removed']} removed ({r['repository']})"
            )
            for prob in r["problems"]:
                click.echo(f"  {prob}")

    ctx.emit({"synced": out}, text)
    if any(r.get("error") for r in out):
        sys.exit(EXIT_PARTIAL)
