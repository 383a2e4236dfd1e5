"""init, policy validate, snapshots, status and catalog commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from drkit.cli.context import EXIT_CODES, Ctx, handle_errors, policy_options
from drkit.cli.main import cli, json_option
from drkit.errors import PolicyError, UsageError
from drkit.paths import config_dir, default_identity_file
from drkit.policy.loader import load_policy

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
            sample.write_text(SAMPLE_POLICY.format(host=host, repo=repo_url, recipient=recipient))
    data = {
        "identity_file": str(identity),
        "identity_created": created_identity,
        "recipient": recipient,
        "repository": repository.url,
        "bucket_created": bucket_created,
        "sample_policy": str(sample) if sample else None,
    }

    def text() -> None:
        verb = "created" if created_identity else "kept existing"
        click.echo(f"identity: {identity} ({verb}; keep it offline, it restores everything)")
        click.echo(f"recipient (public, put it in policies): {recipient}")
        click.echo(f"repository: {repository.url}{' (bucket created)' if bucket_created else ''}")
        if sample:
            click.echo(f"sample policy: {sample}")

    ctx.emit(data, text)


def _init_policy_repository(policy: Policy) -> tuple[Repository, bool]:
    """Open ``policy``'s repository, create its bucket if missing (S3: with Object Lock
    when ``immutable_days`` is set), refuse a bucket that cannot hold the retention the
    policy asks for, and write the format marker. Returns (repository, bucket created)."""
    from drkit.actions.common import open_repository, require_object_lock

    repository = open_repository(policy.repository)
    ensure = getattr(repository.store, "ensure_bucket", None)
    created = bool(ensure()) if callable(ensure) else False
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
    """Check policy files (default: all in the policy directory); report every error."""
    from drkit.policy.loader import load_policies

    paths = [Path(f) for f in files] or ctx.all_policy_files()
    try:
        policies = load_policies(paths)
    except PolicyError as exc:
        if ctx.as_json:
            click.echo(__import__("json").dumps({"ok": False, "problems": exc.problems}, indent=2))
            sys.exit(exc.exit_code)
        raise
    ctx.emit(
        {"ok": True, "hosts": [p.host for p in policies]},
        lambda: click.echo(f"{len(policies)} policies ok: {', '.join(p.host for p in policies)}"),
    )


@cli.command(epilog=EXIT_CODES)
@policy_options
@json_option
@pass_ctx
@handle_errors
def snapshots(ctx: Ctx, policy_files: tuple[str, ...], hosts: tuple[str, ...]) -> None:
    """List committed snapshots per host, from the repository."""
    from drkit.actions.common import open_repository

    rows: list[dict[str, Any]] = []
    for policy in ctx.policies(policy_files, hosts):
        repo = open_repository(policy.repository)
        for m in repo.manifests(policy.host):
            rows.append(
                {
                    "host": m.host,
                    "snapshot": m.snapshot,
                    "finished": m.finished,
                    "sources": [s.name for s in m.sources],
                    "stored_bytes": m.stored_bytes,
                    "status": m.status,
                    "provider_snapshots": _provider_snapshots(m.extra),
                }
            )

    def text() -> None:
        for r in rows:
            sources = ",".join(r["sources"])
            click.echo(f"{r['host']:<12} {r['snapshot']}  {r['stored_bytes']:>12}  {sources}")
            for name, p in r["provider_snapshots"].items():
                click.echo(f"  {name}: {p['provider']} snapshot {p['id']} ({p['name']})")
        if not rows:
            click.echo("no snapshots")

    ctx.emit({"snapshots": rows}, text)


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
    drilled does not), so it can run as a monitor.
    """
    from drkit.actions.status import host_status

    now = ctx.now()
    catalog = ctx.catalog()
    try:
        rows = [host_status(p, catalog, now) for p in ctx.policies(policy_files, hosts)]
    finally:
        catalog.close()

    def text() -> None:
        for r in rows:
            age = r["age"] or "never"
            state = "BREACH" if r["breach"] else "ok"
            rpo = r["rpo"] or "-"
            click.echo(
                f"{r['host']:<12} last {r['last_snapshot'] or '-':<24} age {age:<8} "
                f"rpo {rpo:<6} {state:<6} {_drill_text(r.get('last_drill'))}"
            )
            if r.get("last_error"):
                click.echo(f"  last run failed: {r['last_error']}")

    ctx.emit({"hosts": rows, "checked": now.isoformat()}, text)
    if any(r["breach"] or r["drill_failed"] for r in rows):
        sys.exit(1)


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

    cat = ctx.catalog()
    out: list[dict[str, Any]] = []
    for p in ctx.policies(policy_files, hosts):
        repo = open_repository(p.repository)
        res = sync(cat, repo, hosts=[p.host])
        out.append(
            {
                "host": p.host,
                "repository": repo.url,
                "added": res.added,
                "removed": res.removed,
                "problems": res.problems,
            }
        )

    def text() -> None:
        for r in out:
            click.echo(
                f"{r['host']}: {r['added']} added, {r['removed']} removed ({r['repository']})"
            )
            for prob in r["problems"]:
                click.echo(f"  {prob}")

    ctx.emit({"synced": out}, text)
