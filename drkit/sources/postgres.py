"""``postgres``: pg_dump of one database plus the cluster's roles (globals).

Backup, in one consistent view: a psql session opens a REPEATABLE READ
transaction and exports its snapshot; pg_dump reads with ``--snapshot`` and
the same session counts every table's rows, so the facts describe exactly
the dumped data. pg_dump writes uncompressed (``-Z0``): the pipeline's zstd
is ~3.7x faster than pg_dump's own compression.

Restore: globals first (roles that already exist on the target are left as
they are). A custom dump into a database that does not exist yet is loaded
by ``ParallelRestore`` (schema and data streamed, indexes and constraints with
``pg_restore -j`` from the TOC spooled on the target, all in a staging
database renamed when complete). Otherwise (an existing empty database,
``--force``, a plain dump, one CPU, no room to spool): ``CREATE DATABASE ...
TEMPLATE template0`` if needed and pg_restore (or psql) in one transaction,
stopping on the first error.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from drkit import secrets
from drkit.errors import RestoreError, SourceError, UsageError
from drkit.pipeline.streams import CHUNK, read_limited
from drkit.policy.models import PostgresSource as PostgresConfig
from drkit.remote.base import Process, Runner, exit_text, tail_text
from drkit.sources.base import (
    Artifact,
    Check,
    Feed,
    RestoreOptions,
    RestoreReport,
    Source,
    StepPlan,
    pipe_into,
)
from drkit.sources.pgsql import (
    SPOOL_WRITE,
    PgConn,
    SpoolDir,
    parse_spool_setup,
    quote_ident,
    quote_literal,
    spool_budget,
    spool_remove_argv,
    spool_reserve,
    spool_setup_argv,
    staging_name,
)

GLOBALS = "globals.sql"
_SNAPSHOT_RE = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-\d+)?$")
_MAX_GLOBALS = 64 << 20

_META_SQL = """SELECT json_build_object(
  'server_version', current_setting('server_version'),
  'database_size', pg_database_size(current_database()),
  'owner', pg_get_userbyid(d.datdba),
  'encoding', pg_encoding_to_char(d.encoding),
  'collate', d.datcollate, 'ctype', d.datctype,
  'objects', (SELECT json_build_object(
      'tables', count(*) FILTER (WHERE c.relkind IN ('r','p')),
      'views', count(*) FILTER (WHERE c.relkind IN ('v','m')),
      'sequences', count(*) FILTER (WHERE c.relkind = 'S'))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname !~ '^pg_toast'),
  'functions', (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog','information_schema')),
  'triggers', (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal))
FROM pg_database d WHERE d.datname = current_database();
"""

# One generated COUNT per ordinary table, run by \\gexec inside the exported snapshot.
_COUNTS_SQL = """SELECT format(
  'SELECT json_build_object(''table'', %L, ''rows'', count(*)) FROM %I.%I',
  n.nspname || '.' || c.relname, n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog','information_schema')
  AND n.nspname !~ '^pg_toast' AND NOT c.relispartition
ORDER BY n.nspname, c.relname \\gexec
"""


def dump_artifact(fmt: str) -> str:
    return "database.pgdump" if fmt == "custom" else "database.sql"


class PostgresSource(Source):
    kind = "postgres"
    config: PostgresConfig

    def __init__(self, name: str, config: PostgresConfig, runner: Any) -> None:
        super().__init__(name, config, runner)
        self._session: Process | None = None

    def conn(self) -> PgConn:
        c = self.config
        password = secrets.resolve(c.password) if c.password else None
        return PgConn(c.host, c.port, c.user, password, c.bin_dir, c.container)

    # ---- backup -------------------------------------------------------
    def artifacts(self) -> Iterator[Artifact]:
        if self.config.flavor != "plain":
            # A plain dump of Supabase fails on restore (its internal schemas): refuse
            # rather than store a backup that would not come back.
            raise UsageError(f"{self.label}: flavor {self.config.flavor!r} is not supported yet")
        conn = self.conn()
        self.facts["globals"] = self.config.globals
        if self.config.globals:
            argv = conn.argv("pg_dumpall", "--globals-only", "--no-comments")
            roles = RoleCollector()
            yield Artifact(GLOBALS, lambda: self.command_stream(argv, env=conn.env()), roles.feed)
            self.facts["roles"] = sorted(roles.names)
        snapshot = self._open_session(conn)
        try:
            fmt = ["-Fc", "-Z0"] if self.config.format == "custom" else ["-Fp"]
            argv = conn.argv(
                "pg_dump", *fmt, f"--snapshot={snapshot}", database=self.config.database
            )
            yield Artifact(
                dump_artifact(self.config.format), lambda: self.command_stream(argv, env=conn.env())
            )
            self._collect_facts()
        finally:
            self.finish()

    def _open_session(self, conn: PgConn) -> str:
        argv = conn.psql(self.config.database)
        proc = self.runner.start(argv, stdin=True, env=conn.env(), user=self.run_as)
        self._session = proc
        assert proc.stdin is not None
        proc.stdin.write(
            b"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSELECT pg_export_snapshot();\n"
        )
        proc.stdin.flush()
        line = proc.stdout.readline().decode().strip()
        if not _SNAPSHOT_RE.match(line):
            self.finish()
            raise SourceError(
                f"{self.label}: cannot open a snapshot on database {self.config.database}: "
                f"`{shlex.join(argv)}` {tail_text(proc.stderr_tail()).lstrip(': ') or line}"
            )
        # The row counts run now, in the exporting transaction (so in the very snapshot
        # pg_dump imports), while the dump streams: run after it, their table scans
        # added ~3 s to a 1 GB backup. The transaction stays open until
        # _collect_facts commits, which keeps the snapshot importable meanwhile.
        proc.stdin.write(_META_SQL.encode() + _COUNTS_SQL.encode())
        proc.stdin.flush()
        return line

    def _collect_facts(self) -> None:
        proc = self._session
        assert proc is not None and proc.stdin is not None
        proc.stdin.write(b"COMMIT;\n")
        proc.stdin.close()
        out = proc.stdout.read().decode()
        rc = proc.wait()
        self._session = None
        if rc != 0:
            raise SourceError(
                f"{self.label}: counting rows failed: psql {exit_text(rc)}"
                f"{tail_text(proc.stderr_tail())}"
            )
        rows = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        meta = rows[0]
        self.facts.update(meta)
        self.facts["database"] = self.config.database
        self.facts["tables"] = {r["table"]: r["rows"] for r in rows[1:]}
        self.facts["format"] = self.config.format

    def finish(self) -> None:
        proc, self._session = self._session, None
        if proc is not None:
            proc.kill()
            proc.wait()

    # ---- restore ------------------------------------------------------
    def target_database(self, opts: RestoreOptions) -> str:
        return opts.database or self.config.database + opts.db_suffix

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        conn = self.target_conn(opts)
        database = self.target_database(opts)
        where = f"{conn.host or 'local socket'}:{conn.port}"
        actions: list[str] = []
        if facts.get("globals"):
            existing = self._roles(conn)
            backed = set(facts.get("roles", []))
            new, kept = sorted(backed - existing), sorted(backed & existing)
            if new:
                actions.append(f"roles on {where}: create {', '.join(new)}")
            if kept:
                verb = "reset attributes of" if opts.force else "keep existing"
                actions.append(f"roles on {where}: {verb} {', '.join(kept)}")
        tables = len(facts.get("tables", {}))
        existing_tables = self._table_count(conn, database)
        if existing_tables is None:
            actions.append(f"database {database} on {where}: create, load {tables} table(s)")
        elif existing_tables and not opts.force:
            return StepPlan(
                actions,
                f"database {database} on {where} exists with {existing_tables} object(s); "
                "use --force to replace it or --rename-db to restore beside it",
            )
        elif existing_tables:
            actions.append(f"database {database} on {where}: REPLACE its contents (--force)")
        else:
            actions.append(f"database {database} on {where}: load {tables} table(s) (empty)")
        return StepPlan(actions)

    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        """Row counts per table equal to backup time; roles present."""
        conn = self.target_conn(opts)
        database = self.target_database(opts)
        checks: list[Check] = []
        expected: dict[str, int] = facts.get("tables", {})
        if expected:
            sql = " UNION ALL ".join(
                f"SELECT {quote_literal(t)} || '|' || count(*) FROM "
                f"{'.'.join(quote_ident(p) for p in t.split('.', 1))}"
                for t in sorted(expected)
                if t not in self.unchecked_tables
            )
            try:
                out = self._sql(conn, database, sql + ";") if sql else ""
            except SourceError as exc:
                return [Check(self.name, "row counts", "fail", str(exc))]
            got = dict(ln.rsplit("|", 1) for ln in out.splitlines() if "|" in ln)
            wrong = [
                f"{t}: {got.get(t, 'missing')} rows, expected {n}"
                for t, n in sorted(expected.items())
                if t not in self.unchecked_tables and str(n) != got.get(t)
            ]
            status = "fail" if wrong else "pass"
            detail = "; ".join(wrong[:5]) or f"{len(got)} table(s) match backup-time row counts"
            checks.append(Check(self.name, f"row counts in {database}", status, detail))
        roles = facts.get("roles", [])
        if roles:
            missing = sorted(set(roles) - self._roles(conn))
            checks.append(
                Check(
                    self.name,
                    "roles present",
                    "fail" if missing else "pass",
                    f"missing: {', '.join(missing)}" if missing else f"{len(roles)} role(s)",
                )
            )
        return checks

    unchecked_tables: frozenset[str] = frozenset()

    def target_conn(self, opts: RestoreOptions) -> PgConn:
        c = self.config
        password = opts.pg_password
        if password is None and c.password:
            password = secrets.resolve(c.password)
        return PgConn(
            host=opts.pg_host if opts.pg_host is not None else c.host,
            port=opts.pg_port or c.port,
            user=opts.pg_user if opts.pg_user is not None else c.user,
            password=password,
            bin_dir=c.bin_dir,
            container=c.container,
        )

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        conn = self.target_conn(opts)
        report = RestoreReport()
        database = self.target_database(opts)
        fmt = facts.get("format", "custom")
        if facts.get("globals"):
            feed(GLOBALS, lambda stream: self._restore_globals(conn, stream, opts, report))
        existing_tables = self._table_count(conn, database)
        if existing_tables and not opts.force:
            raise RestoreError(
                f"{self.label}: database {database} already exists on the target with "
                f"{existing_tables} table(s); use --force to replace its contents or "
                f"--database to restore beside it"
            )
        if fmt == "custom" and existing_tables is None:
            parallel = ParallelRestore(self, conn, database, facts, opts, report)
            if parallel.run(feed):
                return report
        if existing_tables is None:
            owner = self._create_database(conn, database, facts)
            report.actions.append(
                f"created database {database}" + (f" owned by {owner}" if owner else "")
            )
        clean = bool(existing_tables) and opts.force
        if fmt == "custom":
            args = ["--exit-on-error", "--single-transaction", "--no-comments"]
            if clean:
                args += ["--clean", "--if-exists"]
            argv = conn.argv("pg_restore", *args, database=database)
        else:
            argv = conn.psql(database, "--single-transaction")
        what = f"{self.label}: restoring database {database}"
        feed(
            dump_artifact(fmt),
            lambda stream: pipe_into(
                self.runner, argv, stream, what=what, env=conn.env(), user=self.run_as
            ),
        )
        report.actions.append(
            f"restored database {database}" + (" (replacing its contents)" if clean else "")
        )
        return report

    def restore_jobs(self, opts: RestoreOptions) -> int | None:
        """pg_restore -j for a fresh database: the restore option, else the policy's, else
        None (then min(4, the target's CPUs))."""
        for value in (opts.pg_jobs, self.config.restore_jobs):
            if value:
                return int(value)
        return None

    def staged_artifacts(self, facts: dict[str, Any], opts: RestoreOptions) -> frozenset[str]:
        """The custom dump, when ``restore`` will take the ParallelRestore path (a fresh
        database, a spool and two CPUs on the target): it loads into a staging database
        renamed only once the feed verified the dump's digests, so no read ahead of it
        is needed. ``globals.sql`` is never staged (roles apply as they are read).

        Asks ``ParallelRestore.choose``, as ``run`` does; probing the spool creates and
        removes its directory on the target."""
        if facts.get("format", "custom") != "custom" or self.restore_jobs(opts) == 1:
            return frozenset()
        conn, database = self.target_conn(opts), self.target_database(opts)
        if self._table_count(conn, database) is not None:
            return frozenset()  # it exists: one pg_restore into it, as it streams
        probe = ParallelRestore(self, conn, database, facts, opts, RestoreReport())
        spool = probe._open_spool()
        if spool is None:
            return frozenset()
        try:
            if isinstance(probe.choose(spool), str):
                return frozenset()
        finally:
            probe._remove(spool)
        return frozenset({dump_artifact("custom")})

    def _sql(self, conn: PgConn, database: str, sql: str) -> str:
        out = self.runner.check(
            conn.psql(database),
            input=sql.encode(),
            what=f"{self.label}: psql on {database}",
            env=conn.env(),
            user=self.run_as,
        )
        return out.decode()

    def _table_count(self, conn: PgConn, database: str) -> int | None:
        """None if ``database`` does not exist, else its number of user tables."""
        exists = self._sql(
            conn,
            "postgres",
            f"SELECT count(*) FROM pg_database WHERE datname = {quote_literal(database)};",
        ).strip()
        if exists == "0":
            return None
        return int(
            self._sql(
                conn,
                database,
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r','p','v','m','S') AND n.nspname NOT IN "
                "('pg_catalog','information_schema') AND n.nspname !~ '^pg_toast';",
            ).strip()
        )

    def _create_database(self, conn: PgConn, database: str, facts: dict[str, Any]) -> str | None:
        """CREATE DATABASE as at backup time; returns the owner it was given, if any."""
        sql = f"CREATE DATABASE {quote_ident(database)} TEMPLATE template0"
        if facts.get("encoding"):
            sql += f" ENCODING {quote_literal(facts['encoding'])}"
        if facts.get("collate") and facts.get("ctype"):
            sql += f" LC_COLLATE {quote_literal(facts['collate'])}"
            sql += f" LC_CTYPE {quote_literal(facts['ctype'])}"
        owner = facts.get("owner")
        if owner and owner not in self._roles(conn):
            owner = None  # not on the target: the connecting user owns the database
        if owner:
            sql += f" OWNER {quote_ident(owner)}"
        self._sql(conn, "postgres", sql + ";")
        return str(owner) if owner else None

    def _roles(self, conn: PgConn) -> set[str]:
        return set(self._sql(conn, "postgres", "SELECT rolname FROM pg_roles;").splitlines())

    def _restore_globals(
        self, conn: PgConn, stream: BinaryIO, opts: RestoreOptions, report: RestoreReport
    ) -> None:
        raw = read_limited(stream, _MAX_GLOBALS)
        if len(raw) > _MAX_GLOBALS:
            raise RestoreError(f"{self.label}: {GLOBALS} is larger than 64 MiB; refusing")
        existing = self._roles(conn)
        sql, created, kept = filter_globals(raw.decode(), existing, replace=opts.force)
        self.runner.check(
            conn.psql("postgres"),
            input=sql.encode(),
            what=f"{self.label}: restoring roles",
            env=conn.env(),
            user=self.run_as,
        )
        if created:
            report.actions.append(f"created role(s) {', '.join(sorted(created))}")
        if kept:
            report.actions.append(f"kept existing role(s) {', '.join(sorted(kept))}")


class RoleCollector:
    """Collects role names from pg_dumpall output as it streams past (for facts)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        *lines, self._tail = (self._tail + chunk).split(b"\n")
        for raw in lines:
            m = _ROLE_STMT.match(raw.decode("utf-8", "replace"))
            if m and m.group(1) == "CREATE":
                self.names.add(_unquote(m.group(2)))


_ROLE_STMT = re.compile(r'^(CREATE|ALTER) ROLE ("(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)[ ;]')


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def filter_globals(
    sql: str, existing: set[str], *, replace: bool
) -> tuple[str, set[str], set[str]]:
    """Drop CREATE/ALTER ROLE lines for roles the target already has (unless ``replace``:
    then only their CREATE, so the ALTER resets their attributes to the backup's).

    pg_dumpall writes one statement per line for roles, which is what makes
    this line filter sound. Returns (sql, roles created, roles kept).
    """
    out, created, kept = [], set(), set()
    for line in sql.splitlines():
        m = _ROLE_STMT.match(line)
        if m:
            role = _unquote(m.group(2))
            if role in existing:
                if m.group(1) == "CREATE" or not replace:
                    kept.add(role)
                    continue
            elif m.group(1) == "CREATE":
                created.add(role)
        out.append(line)
    return "\n".join(out) + "\n", created, kept


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
            Sink(conn.shell(SPOOL_WRITE, spool.dump), f"{self.what}: spooling to {spool.dump}",
                 limit),
            Sink(load, f"{self.what} (schema and data)"),
        ]  # fmt: skip
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
                self.conn.psql("postgres"), input=stmt.encode(), env=self.conn.env(),
                user=src.run_as,
            )  # fmt: skip
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
            failed.append(f"{sink.what}: command `{shlex.join(sink.argv)}` {exit_text(rc)}"
                          f"{tail_text(p.stderr_tail())}")  # fmt: skip
    for t in readers:
        t.join()
    if failed:
        raise SourceError("; ".join(failed))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"
