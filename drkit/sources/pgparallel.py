"""Parallel restore of a custom-format dump into a new database (``ParallelRestore``).

Split from ``postgres``: the source decides when this path applies; this module
streams the schema and data into a staging database while the dump's head (its
TOC) is spooled on the target, runs post-data with ``pg_restore -j`` from the
spool, and renames the staging database only once every step succeeded and the
digests were verified.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from drkit.errors import RestoreError, SourceError
from drkit.pipeline.streams import CHUNK
from drkit.remote.base import Runner, exit_text, tail_text
from drkit.sources.base import Feed, RestoreOptions, RestoreReport, pipe_into
from drkit.sources.pgsql import (
    SPOOL_WRITE,
    PgConn,
    SpoolDir,
    dump_artifact,
    parse_spool_setup,
    quote_ident,
    spool_budget,
    spool_remove_argv,
    spool_reserve,
    spool_setup_argv,
    staging_name,
)

if TYPE_CHECKING:
    from drkit.sources.postgres import PostgresSource


# The spool keeps the dump's first bytes: header and TOC (written before any data by
# pg_dump), all that post-data needs. 256 MiB holds the TOC of a schema with
# hundreds of thousands of objects; a bigger TOC is detected and handled.
TOC_SPOOL_MAX = 256 << 20


class ParallelRestore:
    """Restore a custom-format dump into a database that does not exist yet, in parallel.

    One pg_restore loads schema and data from the decoded stream (decoding
    overlaps the load), while the stream's head (header and TOC) is spooled to
    a private (0700) directory on the target; post-data (indexes, constraints,
    triggers: where pg_restore -j gains most) then runs with ``pg_restore -j N``
    from that spool, which needs no data blocks. The load goes into a staging
    database, renamed to the real name only after every step succeeded and the
    dump's digests were verified, so the database never appears half restored;
    a failure drops the staging database. The spool is removed in every case.
    """

    def __init__(
        self,
        source: PostgresSource,
        conn: PgConn,
        database: str,
        facts: dict[str, Any],
        opts: RestoreOptions,
        report: RestoreReport,
    ) -> None:
        self.source, self.conn, self.database = source, conn, database
        self.facts, self.opts, self.report = facts, opts, report
        self.what = f"{source.label}: restoring database {database}"

    def run(self, feed: Feed) -> bool:
        """Restore and return True; or return False, with a note in the report saying
        why, when the caller should stream into one pg_restore instead. Raises
        RestoreError/SourceError/IntegrityError when the restore itself failed."""
        if self.source.restore_jobs(self.opts) == 1:
            return False
        spool = self._open_spool()
        if spool is None:
            return False
        try:
            chosen = self.choose(spool)
            if isinstance(chosen, str):
                self._note(chosen)
                return False
            jobs, budget = chosen
            self._restore(feed, spool, jobs, budget)
            return True
        finally:
            self._remove(spool)

    def choose(self, spool: SpoolDir) -> tuple[int, int] | str:
        """(pg_restore jobs, spool byte limit) for a parallel restore on this target, or
        why it streams into one pg_restore instead (shared with the precheck decision)."""
        jobs = self.source.restore_jobs(self.opts) or min(4, spool.cpus)
        if jobs < 2:
            return f"the target has {spool.cpus} CPU: streamed into one pg_restore"
        need = min(int(self.facts.get("database_size") or TOC_SPOOL_MAX), TOC_SPOOL_MAX)
        budget = spool_budget(spool, need)
        if budget is None:
            return (
                f"only {_mib(spool.free_bytes)} free in {spool.path} on the target, the "
                f"spool needs {_mib(need)} plus a reserve of "
                f"{_mib(spool_reserve(spool.total_bytes))}: streamed into one pg_restore "
                "instead of a parallel restore"
            )
        return jobs, min(budget, TOC_SPOOL_MAX)

    def _restore(self, feed: Feed, spool: SpoolDir, jobs: int, limit: int) -> None:
        src, conn = self.source, self.conn
        staging = staging_name(self.database)
        # Ours by name: left over from a run that was killed half-way.
        self._drop(staging, strict=True)
        owner = src._create_database(conn, staging, self.facts)
        artifact = dump_artifact("custom")
        try:
            cut: list[bool] = []
            feed(artifact, lambda stream: cut.append(self._load(stream, spool, staging, limit)))
            if cut[0] and not self._toc_complete(spool):
                # The TOC is longer than the spool: post-data from a second, serial pass.
                self._note(f"the dump's TOC exceeds {_mib(limit)}: post-data without -j")
                argv = self._pg_restore(staging, "--section=post-data")
                feed(artifact, lambda stream: self._pipe(argv, stream, "(post-data)"))
                how = "one pg_restore"
            else:
                argv = self._pg_restore(staging, "-j", str(jobs), "--section=post-data")
                src.runner.check(
                    [*argv, spool.dump],
                    what=f"{self.what} (post-data, pg_restore -j {jobs} from {spool.dump})",
                    env=conn.env(),
                    user=src.run_as,
                )
                how = f"pg_restore -j {jobs} for indexes and constraints"
            src._sql(
                conn,
                "postgres",
                f"ALTER DATABASE {quote_ident(staging)} RENAME TO {quote_ident(self.database)};",
            )
        except BaseException:
            self._drop(staging, strict=False)
            raise
        self.report.actions.append(
            f"created database {self.database}" + (f" owned by {owner}" if owner else "")
        )
        self.report.actions.append(
            f"restored database {self.database} ({how}; TOC spooled in {spool.path} on the "
            f"target; loaded as {staging}, renamed when complete)"
        )

    def _pg_restore(self, database: str, *args: str) -> list[str]:
        return self.conn.argv(
            "pg_restore", "--exit-on-error", "--no-comments", *args, database=database
        )

    def _pipe(self, argv: list[str], stream: BinaryIO, step: str) -> None:
        src = self.source
        what = f"{self.what} {step}"
        pipe_into(src.runner, argv, stream, what=what, env=self.conn.env(), user=src.run_as)

    def _load(self, stream: BinaryIO, spool: SpoolDir, staging: str, limit: int) -> bool:
        """Schema and data from ``stream``; its first ``limit`` bytes to the spool.
        Returns whether the spool was cut short."""
        conn, src = self.conn, self.source
        load = self._pg_restore(staging, "--section=pre-data", "--section=data")
        sinks = [
            Sink(
                conn.shell(SPOOL_WRITE, spool.dump), f"{self.what}: spooling to {spool.dump}", limit
            ),
            Sink(load, f"{self.what} (schema and data)"),
        ]
        tee_into(src.runner, sinks, stream, env=conn.env(), user=src.run_as)
        return sinks[0].cut

    def _toc_complete(self, spool: SpoolDir) -> bool:
        """Whether pg_restore can read the whole TOC from the (cut) spool."""
        argv = self.conn.argv("pg_restore", "-l")
        return self.source.runner.run([*argv, spool.dump], user=self.source.run_as).returncode == 0

    def _open_spool(self) -> SpoolDir | None:
        src = self.source
        res = src.runner.run(spool_setup_argv(self.conn), user=src.run_as)
        if res.returncode != 0:
            self._note(
                f"cannot make a spool directory on the target ({exit_text(res.returncode)}"
                f"{tail_text(res.stderr)}): streamed into one pg_restore"
            )
            return None
        try:
            return parse_spool_setup(res.stdout.decode("utf-8", "replace"))
        except (ValueError, IndexError) as exc:
            raise RestoreError(f"{self.what}: cannot prepare a spool directory: {exc}") from None

    def _remove(self, spool: SpoolDir) -> None:
        src = self.source
        res = src.runner.run(spool_remove_argv(self.conn, spool), user=src.run_as)
        if res.returncode != 0:
            self._note(
                f"could not remove the spool {spool.path} on the target: "
                f"{exit_text(res.returncode)}{tail_text(res.stderr)}; remove it by hand"
            )

    def _drop(self, staging: str, *, strict: bool) -> None:
        """Drop the staging database; ``strict``: raise if that fails, else only note it."""
        src = self.source
        sql = f"DROP DATABASE IF EXISTS {quote_ident(staging)}"
        # WITH (FORCE) (PostgreSQL 13+): pg_restore workers of a failed run may still be
        # connected to the database only we use.
        for stmt in (sql + " WITH (FORCE);", sql + ";"):
            res = src.runner.run(
                self.conn.psql("postgres"),
                input=stmt.encode(),
                env=self.conn.env(),
                user=src.run_as,
            )
            if res.returncode == 0:
                return
        message = f"could not drop the staging database {staging}{tail_text(res.stderr)}"
        if strict:
            raise RestoreError(f"{self.what}: {message}")
        self._note(message + "; drop it by hand")
        self.opts.log(f"{self.what}: {message}")

    def _note(self, text: str) -> None:
        self.report.actions.append(f"note: {text}")


@dataclass
class Sink:
    """One command fed by ``tee_into``; it gets the first ``limit`` bytes only, if given."""

    argv: list[str]
    what: str
    limit: int | None = None
    cut: bool = False  # set when the stream went on past ``limit``


def tee_into(
    runner: Runner,
    sinks: list[Sink],
    stream: BinaryIO,
    *,
    env: dict[str, str] | None,
    user: str | None,
) -> None:
    """Copy ``stream`` to the stdin of every sink's command, started on ``runner``.

    Raises SourceError naming a sink's ``what`` when its command fails, or what
    reading ``stream`` raised (e.g. an integrity error: the commands are then
    killed before they could take a clean EOF for the end of the data).
    """
    procs = [runner.start(s.argv, stdin=True, env=env, user=user) for s in sinks]
    readers = [threading.Thread(target=p.stdout.read, daemon=True) for p in procs]
    for t in readers:
        t.start()
    size = 0
    open_ = [True] * len(sinks)
    try:
        try:
            while chunk := stream.read(CHUNK):
                start, size = size, size + len(chunk)
                for k, (sink, p) in enumerate(zip(sinks, procs, strict=True)):
                    if not open_[k]:
                        continue
                    assert p.stdin is not None
                    if sink.limit is not None and size > sink.limit:
                        p.stdin.write(chunk[: max(0, sink.limit - start)])
                        p.stdin.close()
                        open_[k], sink.cut = False, True
                    else:
                        p.stdin.write(chunk)
        except BrokenPipeError:
            pass  # a command exited early: its status says why
        for k, p in enumerate(procs):
            if open_[k]:
                assert p.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    p.stdin.close()
    except BaseException:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        raise
    failed = []
    for p, sink in zip(procs, sinks, strict=True):
        rc = p.wait()
        if rc != 0:
            failed.append(
                f"{sink.what}: command `{shlex.join(sink.argv)}` {exit_text(rc)}"
                f"{tail_text(p.stderr_tail())}"
            )
    for t in readers:
        t.join()
    if failed:
        raise SourceError("; ".join(failed))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"
