"""init, policy validate, snapshots, status and catalog commands."""

from __future__ import annotations

import json
import os
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
from drkit.paths import config_dir, default_identity_file
from drkit.policy.loader import load_policy
from drkit.signing import SigningKey, default_signing_key_file

if TYPE_CHECKING:
    from drkit.policy.models import Policy
    from drkit.repository.layout import Repository

pass_ctx = click.make_pass_decorator(Ctx)

SAMPLE_POLICY = """\
# A drkit policy: one file per host. Reference: docs/policy.md
host = "{host}"
rpo = "26h"
schedule = "17 3 * * *"

[repository]
url = "{repo}"

[encryption]
# Public keys only: the matching identity is needed to restore, never to back up.
recipients = ["{recipient}"]
# Only snapshots signed by these keys are listed, restored, drilled or pruned
# (docs/security.md). `drkit init` prints this machine's.
signers = ["{signer}"]

[retention]
keep_daily = 7
keep_weekly = 4

[[source]]
kind = "postgres"
database = "callmeback"
# password = "env:PGPASSWORD"   # secrets are references, never values

[[source]]
kind = "env"
paths = ["/root/*/.env"]
"""


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
    from drkit.pipeline.age import generate_identity, recipient_of

    if policy_file and repo:
        raise UsageError("--policy and --repo exclude each other")
    cdir = config_dir()
    cdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = default_identity_file()
    created_identity = not identity.exists()
    recipient = generate_identity(identity) if created_identity else recipient_of(identity)
    signing_file = default_signing_key_file()
    created_signing = not signing_file.exists()
    signing = SigningKey.create(signing_file) if created_signing else SigningKey.load(signing_file)
    sample: Path | None = None
    if policy_file:
        repository, bucket_created = _init_policy_repository(load_policy(Path(policy_file)))
    else:
        from drkit.repository.factory import open_store
        from drkit.repository.layout import Repository

        data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share")
        repo_url = repo or (data_home / "drkit" / "repository").as_uri()
        repository, bucket_created = Repository(open_store(repo_url)), False
        repository.init()
        policy_dir = ctx.policy_dir or cdir / "policies"
        policy_dir.mkdir(parents=True, exist_ok=True)
        if not (policy_dir / f"{host}.toml").exists():
            sample = policy_dir / f"{host}.toml"
            sample.write_text(
                SAMPLE_POLICY.format(
                    host=host, repo=repo_url, recipient=recipient, signer=signing.public
                )
            )
    data = {
        "identity_file": str(identity),
        "identity_created": created_identity,
        "recipient": recipient,
        "signing_key_file": str(signing_file),
        "signing_key_created": created_signing,
        "signer": signing.public,
        "repository": repository.url,
        "bucket_created": bucket_created,
        "sample_policy": str(sample) if sample else None,
    }

    def text() -> None:
        verb = "created" if created_identity else "kept existing"
        click.echo(f"identity: {identity} ({verb}; keep it offline, it restores everything)")
        click.echo(f"recipient (public, put it in policies): {recipient}")
        verb = "created" if created_signing else "kept existing"
        click.echo(f"signing key: {signing_file} ({verb}; signs this machine's backups)")
        click.echo(f"signer (public, pin it in [encryption] signers): {signing.public}")
        click.echo(f"repository: {repository.url}{' (bucket created)' if bucket_created else ''}")
        if sample:
            click.echo(f"sample policy: {sample}")

    ctx.emit(data, text)


def _init_policy_repository(policy: Policy) -> tuple[Repository, bool]:
    """Open ``policy``'s repository, create its bucket if missing (S3: with Object Lock
    when ``immutable_days`` is set), refuse a bucket that cannot hold the retention the
    policy asks for, and write the format marker. Returns (repository, bucket created)."""
    from drkit.actions.common import open_repository, require_object_lock

    repository = open_repository(policy)
    created = repository.store.ensure_bucket()
    require_object_lock(repository, policy.repository, policy.host)
    repository.init()
    return repository, created


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
    from drkit.actions.common import open_repository
    from drkit.actions.prune import incomplete_snapshots

    now = ctx.now()
    rows: list[dict[str, Any]] = []
    untrusted: list[dict[str, Any]] = []
    incomplete: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []

    def read(policy: Policy) -> None:
        repo = open_repository(policy)
        view = repo.read_host(policy.host)
        left = incomplete_snapshots(repo, policy.host, now)
        rows.extend(_snapshot_row(m) for m in view.trusted)
        untrusted.extend(
            {"host": r.host, "snapshot": r.snapshot, "reason": r.reason} for r in view.untrusted
        )
        incomplete.extend({"host": policy.host, **i.as_dict()} for i in left)

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


def _snapshot_row(m: Any) -> dict[str, Any]:
    return {
        "host": m.host,
        "snapshot": m.snapshot,
        "finished": m.finished,
        "sources": [s.name for s in m.sources],
        "warnings": {s.name: s.warnings for s in m.sources if s.warnings},
        "stored_bytes": m.stored_bytes,
        "status": m.status,
        "provider_snapshots": _provider_snapshots(m.extra),
    }


# What a listing shows of a provider snapshot: the manifest records no secret, but
# a whitelist keeps anything a later manifest field might add out of the output.
_PROVIDER_SNAPSHOT_FIELDS = ("provider", "id", "name", "size_gb", "created", "status")


def _provider_snapshots(extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per source, the provider snapshot a snapshot's manifest records (empty if none)."""
    listed = extra.get("provider_snapshots") or {}
    return {
        str(source): {k: info.get(k) for k in _PROVIDER_SNAPSHOT_FIELDS}
        for source, info in listed.items()
        if isinstance(info, dict)
    }


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
    return {"host": policy.host, "error": error, "rpo": policy.rpo, "breach": False,
            "drill_failed": False}  # fmt: skip


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
    from drkit.actions.common import open_repository
    from drkit.catalog.sync import sync

    policies = ctx.policies(policy_files, hosts)
    cat = ctx.catalog()

    def one(p: Policy) -> dict[str, Any]:
        repo = open_repository(p)
        res = sync(cat, repo, hosts=[p.host])
        return {
            "host": p.host,
            "repository": repo.url,
            "added": res.added,
            "removed": res.removed,
            "problems": res.problems,
        }

    try:
        read = each_host(policies, one)
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
