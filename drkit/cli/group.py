"""The root command group: options shared by every command, and ``json_option``.

The command modules (``commands_*``) register their commands on ``cli`` when
imported; ``drkit.cli.main`` imports them and runs it. Kept apart from ``main``
so that registering a command does not import the module that imports it.
"""

from __future__ import annotations

from typing import Any

import click

from drkit import __version__
from drkit.cli.context import EXIT_CODES, VERBOSITY, Ctx, make_ctx, print_json_errors


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:  # ctx.meta is shared by the root group's context and the command's
        ctx.meta[VERBOSITY] = 1 if param.name == "verbose" else -1


def _add_verbosity(command: click.Command) -> None:
    """``-v/--verbose`` and ``-q/--quiet`` on ``command`` (the last one given wins, on
    the root group or the command); ``handle_errors`` sets the log level from them."""
    taken = {opt for p in command.params for opt in getattr(p, "opts", ())}
    for flags, help_text in (
        (("-v", "--verbose"), "say more: debug detail on stderr"),
        (("-q", "--quiet"), "warnings and errors only (for cron)"),
    ):
        if not taken & set(flags):
            command.params.append(
                click.Option(
                    list(flags),
                    is_flag=True,
                    expose_value=False,
                    callback=_set_verbosity,
                    help=help_text,
                )
            )


class _Command(click.Command):
    """Every command takes -v and -q."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_verbosity(self)


class _Cli(click.Group):
    """The root group (and its sub-groups): every command takes -v and -q; a usage
    error of a command line asking for ``--json`` is also printed as JSON on stdout (a
    script reading stdout gets a document, not nothing)."""

    command_class = _Command
    group_class = type  # sub-groups are _Cli too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_verbosity(self)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        wants_json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            if wants_json:
                print_json_errors([exc.format_message()], exc.exit_code)
            raise
        ctx.meta["drkit.wants_json"] = wants_json
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if ctx.meta.get("drkit.wants_json"):
                print_json_errors([exc.format_message()], exc.exit_code)
            raise


@click.group(cls=_Cli, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="drkit")
@click.option(
    "--policy-dir",
    envvar="DRKIT_POLICY_DIR",
    type=click.Path(file_okay=False),
    help="directory of policy files (default ./policies, then the config dir's policies/)",
)
@click.option(
    "--catalog", envvar="DRKIT_CATALOG_URL", help="SQLite URL of the catalog (sqlite:///PATH)"
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def cli(ctx: click.Context, policy_dir: str | None, catalog: str | None, as_json: bool) -> None:
    """drkit: encrypted, verified backups and restores for small server fleets."""
    ctx.obj = make_ctx(policy_dir, catalog, as_json)


def json_option(f: Any) -> Any:
    def set_json(ctx: click.Context, _param: Any, value: bool) -> None:
        if value:
            ctx.find_object(Ctx).as_json = True  # type: ignore[union-attr]

    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        help="machine-readable output",
    )(f)
