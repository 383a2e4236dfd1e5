"""Shared CLI plumbing: options defined once, policy lookup, output, error mapping."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from drkit.errors import DrkitError, PolicyError, UsageError
from drkit.logs import Log
from drkit.paths import config_dir, default_catalog_url, default_identity_file
from drkit.policy.loader import load_policies, load_policy
from drkit.policy.models import Policy

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_CODES = """\b
Exit codes:
  0  success
  1  failure (a backup, prune, verify or restore failed;
     status: an RPO breach or a failed last drill)
  2  usage or policy error
  3  partial (some hosts or sources failed; status, snapshots,
     catalog sync: a host could not be read, its row says why)
  4  a drill ran and failed its checks
  5  another run holds a host's lock; nothing was done
  6  restore --plan: a step is refused (see "refused" in --json)
  7  a drill could not be set up (no Docker engine, an image build
     failed); nothing was checked
  130, 143  stopped by Ctrl-C (SIGINT), by SIGTERM: the run cleaned
     up (lock released, upload aborted); what it had not committed is
     discarded"""

# Exit status of a run stopped by SIGTERM (128 + 15, as a shell reports it).
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd stopping a unit, a timeout's kill): raised in the main thread
    like Ctrl-C's KeyboardInterrupt, so every ``finally`` and ``except BaseException``
    on the way out runs (lock released, multipart upload aborted, snapshot discarded)."""


# Some hosts or sources failed; a fleet report (status, snapshots, catalog sync) could
# not read a host (its row says why) and reported the others.
EXIT_PARTIAL = 3

# restore --plan: the plan has a REFUSED step, so a restore would do nothing.
EXIT_PLAN_REFUSED = 6

# drill: a drill could not be set up (and none failed its checks, which is 4).
EXIT_DRILL_SETUP = 7

# For tests of schedules only: an ISO 8601 time that replaces the clock.
NOW_ENV = "DRKIT_NOW"


@dataclass
class Ctx:
    policy_dir: Path | None
    catalog_url: str
    as_json: bool

    def policy_dirs(self) -> list[Path]:
        if self.policy_dir:
            return [self.policy_dir]
        return [Path("policies"), config_dir() / "policies"]

    def all_policy_files(self) -> list[Path]:
        for d in self.policy_dirs():
            files = sorted(d.glob("*.toml"))
            if files:
                return files
        return []

    def found_policy_files(self) -> list[Path]:
        """``all_policy_files``; raises UsageError naming where it looked when there is none."""
        candidates = self.all_policy_files()
        if not candidates:
            searched = ", ".join(str(d) for d in self.policy_dirs())
            raise UsageError(f"no policy files found (looked in {searched}); see `drkit init`")
        return candidates

    def policies(self, files: tuple[str, ...] = (), hosts: tuple[str, ...] = ()) -> list[Policy]:
        """Policies named by file, by host, or all in the policy directory."""
        if files:
            return load_policies(Path(f) for f in files)
        candidates = self.found_policy_files()
        if not hosts:
            return load_policies(candidates)
        chosen: list[Policy] = []
        for host in hosts:
            by_stem = [p for p in candidates if p.stem == host]
            found = [load_policy(p) for p in by_stem] if by_stem else []
            found = [p for p in found if p.host == host] or [
                p for p in load_policies(candidates) if p.host == host
            ]
            if not found:
                raise UsageError(f"no policy for host {host!r} in {candidates[0].parent}")
            chosen.append(found[0])
        return chosen

    def one_policy(self, policy_file: str | None, host: str | None) -> Policy:
        if policy_file:
            return load_policy(Path(policy_file))
        if not host:
            raise UsageError("name a host (--host NAME) or a policy file (--policy FILE)")
        return self.policies(hosts=(host,))[0]

    def now(self) -> dt.datetime:
        """The current time (UTC). ``$DRKIT_NOW`` overrides it, for tests of schedules:
        it is read here and nowhere else, and it also names the snapshots taken."""
        fixed = os.environ.get(NOW_ENV)
        if not fixed:
            return dt.datetime.now(dt.UTC)
        try:
            when = dt.datetime.fromisoformat(fixed)
        except ValueError:
            raise UsageError(f"${NOW_ENV}: not an ISO 8601 time: {fixed!r}") from None
        return when if when.tzinfo else when.replace(tzinfo=dt.UTC)

    def catalog(self) -> Any:
        from drkit.catalog.db import Catalog

        return Catalog(self.catalog_url)

    def emit(self, data: Any, text: Callable[[], None]) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            text()


def each_host(
    policies: list[Policy], read: Callable[[Policy], T]
) -> list[tuple[Policy, T | None, str | None]]:
    """``read`` of each policy's host, going on past a host that cannot be read (its
    secrets, its repository, its signers; said on stderr): (policy, result or None,
    error or None)."""
    out: list[tuple[Policy, T | None, str | None]] = []
    for policy in policies:
        try:
            out.append((policy, read(policy), None))
        except (DrkitError, OSError) as exc:
            click.echo(f"error: host {policy.host}: {exc}", err=True)
            out.append((policy, None, str(exc)))
    return out


def identity_option(f: F) -> F:
    return click.option(
        "--identity",
        "identity_file",
        type=click.Path(dir_okay=False),
        envvar="DRKIT_IDENTITY",
        help=f"age identity file (default {default_identity_file()}, or $DRKIT_IDENTITY)",
    )(f)


def load_identity(path: str | None) -> list[Any]:
    from drkit.pipeline.age import load_identities

    return load_identities(Path(path) if path else default_identity_file())


def policy_options(f: F) -> F:
    f = click.option("--host", "hosts", multiple=True, help="host name (repeatable)")(f)
    f = click.option(
        "--policy",
        "policy_files",
        multiple=True,
        type=click.Path(dir_okay=False),
        help="policy file (repeatable)",
    )(f)
    return f


def _settle() -> None:
    """After Ctrl-C or SIGTERM unwound the command: its pipeline's threads finish."""
    from drkit.pipeline.codec import join_abandoned

    join_abandoned(10.0)


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise Terminated()


# Fewer open files than this (``ulimit -n``) and a run fails somewhere in its middle
# (a pipe, a chunk file, a socket): refused at the start instead, saying what to raise.
MIN_OPEN_FILES = 64
# The soft limit drkit raises itself to, within the hard limit (as many servers do).
WANT_OPEN_FILES = 4096


def ensure_open_files() -> None:
    """Raise this process's soft open-file limit towards ``WANT_OPEN_FILES`` (within the
    hard limit); raise DrkitError, before anything is read or written, when it stays
    below ``MIN_OPEN_FILES``."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    want = WANT_OPEN_FILES if hard == infinite else min(hard, WANT_OPEN_FILES)
    if soft != infinite and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft != infinite and soft < MIN_OPEN_FILES:
        raise DrkitError(
            f"this process may open only {soft} files at once (ulimit -n {soft}, hard limit "
            f"{hard}); drkit needs at least {MIN_OPEN_FILES}; nothing was done: raise the "
            f"limit (`ulimit -n 1024` in the shell or cron job, `LimitNOFILE=1024` in a "
            "systemd unit) and run it again"
        )


def _next_step(exc: BaseException) -> str:
    """What to run after a stop: the note an action added on the way out (a restore:
    ``--resume``), else running the command again."""
    notes = getattr(exc, "__notes__", None) or []
    return str(notes[-1]) if notes else "run it again to finish"


def handle_errors(f: F) -> F:
    """Domain errors become one line on stderr and their documented exit code."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # SIGTERM stops a command as Ctrl-C does (cleanly; exit 143), not by the default
        # action, which would leave the lock, the open upload and the partial snapshot.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        try:
            configure_logging()
            ensure_open_files()
            return f(*args, **kwargs)
        except PolicyError as exc:
            for problem in exc.problems:
                click.echo(f"error: {problem}", err=True)
            _json_usage_error(exc.problems, exc.exit_code)
            sys.exit(exc.exit_code)
        except DrkitError as exc:
            click.echo(f"error: {exc}", err=True)
            _json_usage_error([str(exc)], exc.exit_code)
            sys.exit(exc.exit_code)
        except Terminated as exc:
            _settle()
            click.echo(
                "error: stopped by SIGTERM; the run cleaned up (lock released, uploads "
                f"aborted, nothing it had not committed kept): {_next_step(exc)}",
                err=True,
            )
            sys.exit(EXIT_TERMINATED)
        except KeyboardInterrupt as exc:
            _settle()
            click.echo(f"interrupted: {_next_step(exc)}", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def print_json_errors(errors: list[str], exit_code: int) -> None:
    """A failure as the JSON document ``--json`` promises on stdout."""
    click.echo(json.dumps({"ok": False, "exit_code": exit_code, "errors": errors}, indent=2))


def _json_usage_error(errors: list[str], exit_code: int) -> None:
    """Usage and policy errors (exit 2) come before a command printed anything: with
    ``--json`` they are also printed as JSON on stdout."""
    click_ctx = click.get_current_context(silent=True)
    ctx = click_ctx.find_object(Ctx) if click_ctx is not None else None
    if exit_code == UsageError.exit_code and ctx is not None and ctx.as_json:
        print_json_errors(errors, exit_code)


def make_ctx(policy_dir: str | None, catalog: str | None, as_json: bool) -> Ctx:
    return Ctx(
        policy_dir=Path(policy_dir) if policy_dir else None,
        catalog_url=catalog or os.environ.get("DRKIT_CATALOG_URL") or default_catalog_url(),
        as_json=as_json,
    )


def wait_option(f: F) -> F:
    return click.option(
        "--wait",
        "wait_text",
        metavar="DURATION",
        help="wait this long for a host's lock held by another run (default: exit 5 at once)",
    )(f)


def parse_wait(text: str | None) -> float:
    """``--wait`` in seconds. Raises UsageError."""
    if not text:
        return 0.0
    from drkit.durations import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise UsageError(f"--wait: {exc}") from None


# ``ctx.meta`` key: -1 for -q, 1 for -v (the last one given, root group or command).
VERBOSITY = "drkit.verbosity"


def verbosity() -> int:
    """-1 under ``-q``, 1 under ``-v``, else 0."""
    click_ctx = click.get_current_context(silent=True)
    return int(click_ctx.meta.get(VERBOSITY, 0)) if click_ctx is not None else 0


def log_level(as_json: bool) -> int:
    """-q: warnings and errors only; -v: debug; else info, or warnings with --json (a
    script reading stdout wants the document; ``--json -v`` shows progress too)."""
    import logging

    level = verbosity()
    if level < 0:
        return logging.WARNING
    if level > 0:
        return logging.DEBUG
    return logging.WARNING if as_json else logging.INFO


def configure_logging() -> int:
    """Point the ``drkit`` logger at stderr at the level the options ask for; returns it."""
    from drkit.logs import setup
    from drkit.redact import scrub

    click_ctx = click.get_current_context(silent=True)
    ctx = click_ctx.find_object(Ctx) if click_ctx is not None else None
    level = log_level(ctx.as_json if ctx is not None else False)
    setup(level, scrub=scrub)
    return level


def log_to_stderr() -> Log:
    """The ``Log`` the commands pass to actions: records of the ``drkit`` logger, which
    ``configure_logging`` sent to stderr (timestamped off a terminal)."""
    from drkit.logs import LogTo

    return LogTo()
