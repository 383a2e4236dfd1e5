"""Backup-time coverage check: what on the host holds data that no source of the policy backs up.

``drkit backup`` calls ``uncovered_data(policy, runner)`` once per run with its own
open runner: the discovery script (drkit/discover/script.py: read-only, one round
trip) runs on the host and its findings are judged against the WHOLE policy (a
``--source`` selection does not make the other sources' data uncovered). It is
advisory: it never raises and never fails a backup. A host that cannot be
read, a script that runs past ``limit`` seconds (a hung ``dockerd`` makes every
``docker`` command wait) or output drkit cannot parse gives a ``note`` instead of
findings; the script is then killed (its process group, as a source's command
would be). A policy with ``discover = false`` is not checked.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from drkit.discover.coverage import Finding, assess
from drkit.discover.facts import parse
from drkit.discover.script import SCRIPT
from drkit.policy.models import Policy
from drkit.remote.base import Process, Runner, exit_text, tail_text

# Discovery takes 4-8 s on the test hosts; a minute leaves room for a slow Docker
# host without holding a backup up for long when the engine hangs.
TIME_LIMIT = 60.0
LISTED = 8  # findings named in the summary line; the rest are counted


class _NotRun(Exception):
    """Why the discovery script gave no output to judge (becomes the note)."""


@dataclass(frozen=True)
class UncoveredData:
    """One host's check. ``findings``: data-bearing things no source covers (empty: all
    covered). ``note``: why nothing was checked (then ``count`` is None). ``errors``:
    sections discovery could not read (the check ran on the rest)."""

    host: str
    findings: tuple[Finding, ...] = ()
    note: str | None = None
    errors: tuple[str, ...] = ()

    @property
    def count(self) -> int | None:
        """How many findings are uncovered; None when discovery did not run."""
        return None if self.note is not None else len(self.findings)

    def lines(self) -> list[str]:
        """What the backup's summary says: nothing when everything found is covered."""
        if self.note is not None:
            return [f"host {self.host}: coverage not checked: {self.note}"]
        out = []
        if self.findings:
            named = ", ".join(_describe(f) for f in self.findings[:LISTED])
            more = len(self.findings) - LISTED
            named += f" and {more} more" if more > 0 else ""
            out.append(
                f"host {self.host}: {len(self.findings)} data-bearing thing(s) no source "
                f"backs up: {named}; `drkit discover --host {self.host} --suggest` prints "
                "sources for them"
            )
        if self.errors:
            out.append(
                f"host {self.host}: coverage checked without: {'; '.join(self.errors)} "
                "(unreadable; see `drkit discover`)"
            )
        return out


def uncovered_data(policy: Policy, runner: Runner, *, limit: float = TIME_LIMIT) -> UncoveredData:
    """Run discovery on ``runner``'s host (``policy``'s) within ``limit`` seconds and
    return what holds data no source of ``policy`` covers. Never raises an error."""
    host = policy.host
    if not policy.discover:
        return UncoveredData(host, note="discover = false in the policy")
    try:
        output = _collect(runner, limit)
        facts = parse(output)
        findings = assess(facts, policy)
    except _NotRun as exc:
        return UncoveredData(host, note=str(exc))
    except Exception as exc:  # advisory: a bug or a surprise here never fails a backup
        return UncoveredData(host, note=f"discovery failed: {exc or type(exc).__name__}")
    uncovered = tuple(f for f in findings if f.uncovered)
    return UncoveredData(host, uncovered, None, tuple(facts.errors))


def _collect(runner: Runner, limit: float) -> str:
    """The script's output, read within ``limit`` seconds; raises ``_NotRun``."""
    what = "the discovery script (drkit/discover/script.py)"
    proc = runner.start(["sh", "-s"], stdin=True)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(proc.stdout.read()), daemon=True)
    reader.start()
    try:
        _feed(proc)
    except BaseException:
        _stop(proc, reader)
        raise
    reader.join(limit)
    if reader.is_alive():
        _stop(proc, reader)
        raise _NotRun(f"{what} ran past its {limit:g} s time limit and was stopped")
    try:
        rc = proc.wait(10)  # stdout is closed: the command has ended or is ending
    except Exception:
        _stop(proc, reader)
        raise _NotRun(f"{what} did not exit after closing its output") from None
    if rc != 0:
        raise _NotRun(f"{what} {exit_text(rc)}{tail_text(proc.stderr_tail())}")
    return read[0].decode("utf-8", "replace") if read else ""


def _feed(proc: Process) -> None:
    """Write the script to the command's stdin (a few kB: fits the pipe, never blocks)."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(SCRIPT.encode())
    except BrokenPipeError:
        pass  # the command died first: its status says why
    finally:
        proc.stdin.close()


def _stop(proc: Process, reader: threading.Thread) -> None:
    proc.kill()
    with contextlib.suppress(Exception):  # the kill is what matters; a dead link is fine
        proc.wait(10)
    reader.join(5)


def _describe(f: Finding) -> str:
    where = f" ({f.where})" if f.where not in ("host", "docker", "") else ""
    return f"{f.kind} {f.name}{where}"
