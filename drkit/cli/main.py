"""drkit command line: parse, call an action, print (text or --json)."""

from __future__ import annotations

from drkit.cli.group import cli, json_option

__all__ = ["cli", "json_option", "main"]


def main() -> None:
    from drkit.redact import guard_std_streams

    # Last net under the scrubbing done where errors are made: nothing drkit prints
    # (text, --json, warnings, tracebacks) carries a resolved secret value.
    guard_std_streams()
    register_commands()
    cli()


def register_commands() -> None:
    """Import every command module: each registers its commands on ``cli``."""
    from drkit.cli import (  # noqa: F401 - registers commands
        commands_backup,
        commands_discover,
        commands_drill,
        commands_info,
        commands_machine,
        commands_ops,
        commands_report,
    )
