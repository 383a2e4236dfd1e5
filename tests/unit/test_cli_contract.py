"""The command line's promises: exit codes in every --help, --json on every command."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from drkit.cli.main import cli
from tests.helpers import drkit

EXIT_LINES = [
    "0  success",
    "1  failure",
    "2  usage or policy error",
    "3  partial",
    "4  a drill ran and failed its checks",
    "5  another run holds a host's lock",
]


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from leaf_commands(cmd, (*path, name))
        else:
            yield (*path, name)


# Every command module registers its commands when imported (as drkit.cli.main does):
# one added later is covered without being listed here.
for _module in pkgutil.iter_modules(importlib.import_module("drkit.cli").__path__):
    if _module.name.startswith("commands_"):
        importlib.import_module(f"drkit.cli.{_module.name}")
COMMANDS = list(leaf_commands(cli))


def test_the_commands_the_issue_names_exist() -> None:
    names = {" ".join(c) for c in COMMANDS}
    expected = {"init", "backup", "snapshots", "verify", "restore", "status"}
    assert expected | {"catalog sync", "policy validate"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_documents_exit_codes_and_json(path: tuple[str, ...]) -> None:
    res = CliRunner().invoke(cli, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Exit codes:" in res.output
    for line in EXIT_LINES:
        assert line in res.output, (path, line)
    assert "--json" in res.output


def test_top_level_help_of_the_installed_command() -> None:
    res = drkit("--help", check=True)
    assert "Exit codes:" in res.stdout
    for line in EXIT_LINES:
        assert line in res.stdout
