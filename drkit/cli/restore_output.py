"""What `drkit restore` prints: the plan (--plan), a warning, the outcome (text or --json)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from drkit.cli.context import EXIT_PLAN_REFUSED, Ctx

if TYPE_CHECKING:
    from drkit.actions.restore import Executor, RestoreResult, Step


def warn_nothing_to_resume(executor: Executor, target_label: str) -> None:
    """--resume with no interrupted restore recorded: every step is planned; say so."""
    if not executor.progress.nothing_to_resume:
        return
    click.echo(
        f"warning: host {executor.assembly.host}: --resume: nothing to resume onto "
        f"{target_label} (no interrupted restore is recorded: none ran, or the last one "
        "completed); every step is planned",
        err=True,
    )


def exit_for(result: RestoreResult) -> None:
    """Exit 3 when some sources failed (--keep-going: the others restored), 1 when the
    verdict is fail; else return."""
    if result.failed:
        sys.exit(3)
    if result.verdict == "fail":
        sys.exit(1)


def emit_plan(
    ctx: Ctx, executor: Executor, target_label: str, steps: list[Step], plan_text: str
) -> None:
    """``restore --plan``: the steps; exit 6 when one is refused."""
    assembly = executor.assembly
    blocked = [s for s in steps if s.plan.blocked]
    ctx.emit(
        {
            "host": assembly.host,
            "snapshot": assembly.newest.snapshot,
            "snapshots": [m.snapshot for m in assembly.manifests],
            "as_of": assembly.as_of,
            "target": target_label,
            "steps": [s.as_dict() for s in steps],
            "refused": [s.source for s in blocked],
            "nothing_to_resume": executor.progress.nothing_to_resume,
        },
        lambda: click.echo(plan_text),
    )
    if blocked:
        names = ", ".join(f"{s.number} ({s.source})" for s in blocked)
        click.echo(
            f"error: host {assembly.host}: refused: step {names}; as planned, a restore "
            f"would restore nothing",
            err=True,
        )
        sys.exit(EXIT_PLAN_REFUSED)


def emit_result(
    ctx: Ctx, executor: Executor, result: RestoreResult, sources: list[str], target_label: str
) -> None:
    """What a restore did: each source's outcome, the checks, the verdict."""
    outcomes = result.outcomes(sources)
    data = {
        "host": result.host,
        "snapshot": result.snapshot,
        "sources": result.sources,
        "target": target_label,
        "steps": result.steps,
        "skipped": result.skipped,
        "outcomes": outcomes,
        "failed": result.failed,
        "verdict": result.verdict,
        "checks": [c.__dict__ for c in result.checks],
        "seconds": round(result.seconds, 2),
        "nothing_to_resume": executor.progress.nothing_to_resume,
    }

    def text() -> None:
        if result.failed:
            click.echo("  " + ", ".join(f"{n}: {o}" for n, o in outcomes.items()))
        for c in result.checks:
            click.echo(f"  [{c.status}] {c.source}: {c.name}: {c.detail}")
        used = sorted(set(result.sources.values()), reverse=True)
        what = f"snapshot {used[0]}" if len(used) == 1 else f"snapshots {', '.join(used)}"
        click.echo(
            f"{result.host}: restored {what} onto {target_label} in "
            f"{result.seconds:.1f}s ({len(result.steps)} actions); verdict: {result.verdict}"
        )

    ctx.emit(data, text)
