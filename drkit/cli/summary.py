"""The end-of-run summary: a rich table on a terminal, plain lines otherwise (cron mail)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from drkit.actions.fleet import HostResult


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def print_summary(results: list[HostResult]) -> None:
    if sys.stdout.isatty() and len(results) > 1:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="drkit backup")
        for col in ("host", "status", "snapshot", "data", "stored", "time"):
            table.add_column(col)
        for r in results:
            table.add_row(
                r.host,
                "[green]ok[/]" if r.ok else "[red]FAILED[/]",
                r.snapshot or "-",
                _size(r.plain_bytes) if r.ok else "-",
                _size(r.stored_bytes) if r.ok else "-",
                f"{r.seconds:.1f}s" if r.ok else "-",
            )
        Console().print(table)
        return
    for r in results:
        if r.ok:
            click.echo(
                f"{r.host}: snapshot {r.snapshot} ({r.artifacts} artifacts, {r.plain_bytes} bytes "
                f"-> {r.stored_bytes} stored, {r.seconds}s)"
            )
        else:
            click.echo(f"{r.host}: FAILED")
