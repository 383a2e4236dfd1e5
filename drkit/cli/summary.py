"""The end-of-run summary: a rich table on a terminal, plain lines otherwise (cron mail).

A host where a source failed is never shown as "ok": it is PARTIAL (the other
sources were committed) or FAILED, with the failed sources named.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from drkit.actions.fleet import HostResult


def state_of(result: HostResult) -> str:
    """``ok``, ``PARTIAL`` (committed without some sources) or ``FAILED``."""
    if result.status == "success":
        return "ok"
    return "PARTIAL" if result.status == "partial" else "FAILED"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


_STYLE = {"ok": "[green]ok[/]", "PARTIAL": "[yellow]PARTIAL[/]", "FAILED": "[red]FAILED[/]"}


def print_summary(results: list[HostResult]) -> None:
    """One row (terminal, several hosts) or line per host that ran."""
    if sys.stdout.isatty() and len(results) > 1:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="drkit backup")
        for col in ("host", "status", "failed sources", "snapshot", "data", "stored", "time"):
            table.add_column(col)
        for r in results:
            table.add_row(
                r.host,
                _STYLE[state_of(r)],
                ", ".join(r.failed_sources) or ("?" if r.status != "success" else "-"),
                r.snapshot or "-",
                _size(r.plain_bytes) if r.ok else "-",
                _size(r.stored_bytes) if r.ok else "-",
                f"{r.seconds:.1f}s" if r.ok else "-",
            )
        Console().print(table)
    else:
        for r in results:
            click.echo(summary_line(r))
    print_warnings(results)


def print_warnings(results: list[HostResult]) -> None:
    """What a source wants seen although the backup succeeded (also under -q)."""
    for r in results:
        for text in r.warnings:
            click.echo(f"{r.host}: warning: {text}")


def summary_line(r: HostResult) -> str:
    """The plain-text line for one host."""
    failed = ", ".join(r.failed_sources)
    if r.status == "success":
        return (
            f"{r.host}: snapshot {r.snapshot} ({r.artifacts} artifacts, {r.plain_bytes} bytes "
            f"-> {r.stored_bytes} stored, {r.seconds}s)"
        )
    if r.status == "partial":
        committed = ", ".join(r.sources) or "-"
        return (
            f"{r.host}: PARTIAL: snapshot {r.snapshot} committed with {committed}; "
            f"failed source(s): {failed or 'unknown'}"
        )
    return f"{r.host}: FAILED" + (f" (failed source(s): {failed})" if failed else "")


def result_dict(r: HostResult) -> dict[str, Any]:
    """A host's result for --json: a partial or failed one names its failed sources."""
    out = r.as_dict()
    if r.status in ("partial", "failed"):
        out["failed_sources"] = list(r.failed_sources)
    return out


def print_run(results: list[HostResult]) -> None:
    """`drkit backup`'s text output: the summary of the hosts that ran, then the others."""
    from drkit.actions.fleet import RAN

    ran = [r for r in results if r.status in RAN]
    if ran:
        print_summary(ran)
    for r in results:
        if r.status == "locked":
            click.echo(f"{r.host}: SKIPPED (another run holds its lock)")
    if not ran and not any(r.status == "locked" for r in results):
        click.echo("nothing due")
