"""init, policy validate, snapshots, status and catalog commands."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import click

from drkit.cli.context import EXIT_CODES, Ctx, handle_errors, policy_options
from drkit.cli.main import cli, json_option
from drkit.errors import PolicyError
from drkit.paths import config_dir, default_identity_file

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
@json_option
@pass_ctx
@handle_errors
def init(ctx: Ctx, repo: str | None, host: str) -> None:
    """Create the config dir, an age identity (0600) and a sample policy."""
    from drkit.pipeline.age import generate_identity, recipient_of
    from drkit.repository.factory import open_store
    from drkit.repository.layout import Repository

    cdir = config_dir()
    cdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = default_identity_file()
    created_identity = not identity.exists()
    recipient = generate_identity(identity) if created_identity else recipient_of(identity)
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share")
    repo_url = repo or (data_home / "drkit" / "repository").as_uri()
    repository = Repository(open_store(repo_url))
    repository.init()
    policy_dir = ctx.policy_dir or cdir / "policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    sample = policy_dir / f"{host}.toml"
    wrote_sample = not sample.exists()
    if wrote_sample:
        sample.write_text(SAMPLE_POLICY.format(host=host, repo=repo_url, recipient=recipient))
    data = {
        "identity_file": str(identity),
        "identity_created": created_identity,
        "recipient": recipient,
        "repository": repository.url,
        "sample_policy": str(sample) if wrote_sample else None,
    }

    def text() -> None:
        verb = "created" if created_identity else "kept existing"
        click.echo(f"identity: {identity} ({verb}; keep it offline, it restores everything)")
        click.echo(f"recipient (public, put it in policies): {recipient}")
        click.echo(f"repository: {repository.url}")
        if wrote_sample:
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
                }
            )

    def text() -> None:
        for r in rows:
            sources = ",".join(r["sources"])
            click.echo(f"{r['host']:<12} {r['snapshot']}  {r['stored_bytes']:>12}  {sources}")
        if not rows:
            click.echo("no snapshots")

    ctx.emit({"snapshots": rows}, text)


@cli.command(epilog=EXIT_CODES)
@policy_options
@json_option
@pass_ctx
@handle_errors
def status(ctx: Ctx, policy_files: tuple[str, ...], hosts: tuple[str, ...]) -> None:
    """Freshness of each host's newest backup against its RPO; exits 1 on a breach."""
    from drkit.actions.status import host_status

    rows = [host_status(p, ctx.catalog()) for p in ctx.policies(policy_files, hosts)]

    def text() -> None:
        for r in rows:
            age = r["age"] or "never"
            state = "BREACH" if r["breach"] else "ok"
            rpo = r["rpo"] or "-"
            click.echo(
                f"{r['host']:<12} last {r['last_snapshot'] or '-':<24} age {age:<8} "
                f"rpo {rpo:<6} {state}"
            )
            if r.get("last_error"):
                click.echo(f"  last run failed: {r['last_error']}")

    ctx.emit({"hosts": rows, "checked": dt.datetime.now(dt.UTC).isoformat()}, text)
    if any(r["breach"] for r in rows):
        sys.exit(1)


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
