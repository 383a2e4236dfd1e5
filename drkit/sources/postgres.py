"""``postgres``: pg_dump of one database plus the cluster's roles (globals).

Backup, in one consistent view: a psql session opens a REPEATABLE READ
transaction and exports its snapshot; pg_dump reads with ``--snapshot`` and
the same session counts every table's rows, so the facts describe exactly
the dumped data. pg_dump writes uncompressed (``-Z0``): the pipeline's zstd
is ~3.7x faster than pg_dump's own compression.

Restore: globals first, parsed and rebuilt by ``pgroles`` (role statements
only; roles that already exist on the target are left as they are, protected
ones even with --force-db). A custom dump into a database that does not exist yet is loaded
by ``pgparallel.ParallelRestore`` (schema and data streamed, indexes and constraints with
``pg_restore -j`` from the TOC spooled on the target, all in a staging
database renamed when complete). Otherwise (an existing empty database,
``--force-db``, a plain dump, one CPU, no room to spool): ``CREATE DATABASE ...
TEMPLATE template0`` if needed and pg_restore (or psql, restricted by
``psqlinput``: no meta-commands) in one transaction, stopping on the first
error. Database names reach libpq as names only (``pgsql.conninfo_dbname``).

Check: row counts as at backup time, the roles present, and the roles that could
log in then still can (LOGIN, and a password where they had one: ``logins``;
the queries and the verdict are ``pglogins``).

The pieces with a seam of their own are their own modules (``pgparallel``,
``pgroles``, ``pglogins``, ``pgsql``, ``psqlinput``); what stays here (~550
lines) is the source class, whose dump, plan, restore and check share one
connection, target database and role handling (``SupabaseSource`` extends it).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from drkit import redact, secrets
from drkit.errors import RestoreError, SourceError, UsageError
from drkit.pipeline.streams import read_limited
from drkit.policy.models import PostgresConfig
from drkit.remote.base import Process, exit_text, tail_text
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
from drkit.sources.pglogins import (
    LOGINS_SQL,
    TARGET_LOGINS_SQL,
    login_check,
    unrecorded_passwords,
)
from drkit.sources.pgparallel import ParallelRestore
from drkit.sources.pgroles import (
    OWN_ROLES_SQL,
    RoleCollector,
    RolePlan,
    is_protected,
    plan_roles,
    protected_roles,
)
from drkit.sources.pgsql import (
    PgConn,
    dump_artifact,
    quote_ident,
    quote_literal,
)
from drkit.sources.pgtokens import GlobalsRefused
from drkit.sources.psqlinput import (
    MINIMUM_PSQL,
    RestrictedInput,
    new_key,
    psql_has_restrict,
    restrict_line,
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

# One generated COUNT per ordinary table and populated materialized view, run by \\gexec
# inside the exported snapshot.
_COUNTS_SQL = """SELECT format(
  'SELECT json_build_object(''table'', %L, ''rows'', count(*)) FROM %I.%I',
  n.nspname || '.' || c.relname, n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE (c.relkind = 'r' OR (c.relkind = 'm' AND c.relispopulated))
  AND n.nspname NOT IN ('pg_catalog','information_schema')
  AND n.nspname !~ '^pg_toast' AND NOT c.relispartition
ORDER BY n.nspname, c.relname \\gexec
"""


# Whether the connecting role can read pg_authid (psql's variable ``drkit_authid``): the
# queries below read it only behind ``\\if``, as PostgreSQL checks the privileges on every
# table a query names, whatever branch of it runs.
class PostgresSource(Source):
    kind = "postgres"
    config: PostgresConfig

    def __init__(self, name: str, config: PostgresConfig, runner: Any) -> None:
        super().__init__(name, config, runner)
        self._session: Process | None = None
        self._has_restrict: bool | None = None

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
        proc.stdin.write(_META_SQL.encode() + _COUNTS_SQL.encode() + self.session_sql().encode())
        proc.stdin.flush()
        return line

    def session_sql(self) -> str:
        """More SQL for the snapshot transaction, after the row counts: each line it
        prints as ``{"fact": name, "value": ...}`` becomes ``facts[name]``. Here, with
        the globals: ``logins`` (``pglogins.LOGINS_SQL``), what the check after a restore probes."""
        return LOGINS_SQL if self.config.globals else ""

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
        self.facts["tables"] = {r["table"]: r["rows"] for r in rows[1:] if "table" in r}
        self.facts.update({r["fact"]: r["value"] for r in rows[1:] if "fact" in r})
        self.facts["format"] = self.config.format

    def finish(self) -> None:
        proc, self._session = self._session, None
        if proc is not None:
            proc.kill()
            proc.wait()

    # ---- restore ------------------------------------------------------
    def target_database(self, opts: RestoreOptions) -> str:
        return opts.database or self.config.database + opts.db_suffix

    def format_mismatch(self, facts: dict[str, Any]) -> str | None:
        """Why the snapshot's dump cannot be loaded the way the local policy says, if so:
        the loader (pg_restore or psql) follows the policy's ``format``, never the facts."""
        taken = facts.get("format", "custom")
        if taken == self.config.format:
            return None
        return (
            f"the snapshot holds a {taken} dump ({dump_artifact(taken)}) and the policy says "
            f'format = "{self.config.format}": restore it with a policy whose format matches '
            "the backup"
        )

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        conn = self.target_conn(opts)
        database = self.target_database(opts)
        where = f"{conn.host or 'local socket'}:{conn.port}"
        actions: list[str] = []
        if facts.get("globals"):
            existing = self._roles(conn)
            protected = protected_roles(existing, self._own_roles(conn))
            backed = set(facts.get("roles", []))
            never = {r for r in backed if is_protected(r, protected)}
            new, kept = sorted(backed - existing - never), sorted(backed & existing - never)
            if new:
                actions.append(f"roles on {where}: create {', '.join(new)}")
            if kept:
                verb = "reset attributes of" if opts.force_db else "keep existing"
                actions.append(f"roles on {where}: {verb} {', '.join(kept)}")
            if never:
                actions.append(f"roles on {where}: never altered {', '.join(sorted(never))}")
            lost = unrecorded_passwords(facts, new)
            if lost:
                actions.append(
                    f"roles on {where}: the backup could not read password hashes (its role "
                    f"is not allowed to read pg_authid): login role(s) {', '.join(lost)} will "
                    "need a new password (ALTER ROLE ... PASSWORD) after the restore"
                )
        mismatch = self.format_mismatch(facts)
        if mismatch:
            return StepPlan(actions, mismatch)
        if self.config.format == "plain" and not self._restricts(conn):
            return StepPlan(actions, self._no_restrict(database, where))
        tables = len(facts.get("tables", {}))
        existing_tables = self._table_count(conn, database)
        if existing_tables is None:
            actions.append(f"database {database} on {where}: create, load {tables} table(s)")
        elif existing_tables and not opts.force_db:
            return StepPlan(
                actions,
                f"database {database} on {where} exists with {existing_tables} object(s); "
                "use --force-db to replace it or --rename-db to restore beside it",
            )
        elif existing_tables:
            actions.append(f"database {database} on {where}: REPLACE its contents (--force-db)")
        else:
            actions.append(f"database {database} on {where}: load {tables} table(s) (empty)")
        return StepPlan(actions)

    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        """Row counts per table equal to backup time; roles present; the roles that
        could log in at backup time still can (``logins``)."""
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
            present = self._roles(conn)
            missing = sorted(set(roles) - present)
            checks.append(
                Check(
                    self.name,
                    "roles present",
                    "fail" if missing else "pass",
                    f"missing: {', '.join(missing)}" if missing else f"{len(roles)} role(s)",
                )
            )
            logins = self._login_check(conn, facts, present)
            if logins is not None:
                checks.append(logins)
        return checks

    def _login_check(self, conn: PgConn, facts: dict[str, Any], present: set[str]) -> Check | None:
        """``pglogins.login_check`` on this target (drkit knows no password, so no role
        actually logs in)."""
        if not isinstance(facts.get("logins"), dict):
            return None  # a snapshot from before logins were recorded
        protected = protected_roles(present, self._own_roles(conn))
        return login_check(
            self.name,
            facts,
            present,
            protected,
            lambda: json.loads(self._sql(conn, "postgres", TARGET_LOGINS_SQL).strip()),
        )

    unchecked_tables: frozenset[str] = frozenset()

    def target_conn(self, opts: RestoreOptions) -> PgConn:
        c = self.config
        password = opts.pg_password
        redact.remember(password)  # given on the command line's behalf: scrubbed the same
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
        mismatch = self.format_mismatch(facts)
        if mismatch:
            raise RestoreError(f"{self.label}: {mismatch}")
        fmt = self.config.format
        if fmt == "plain":
            self.require_restrict(conn, database)
        if facts.get("globals"):
            feed(GLOBALS, lambda stream: self._restore_globals(conn, stream, opts, report))
        existing_tables = self._table_count(conn, database)
        if existing_tables and not opts.force_db:
            raise RestoreError(
                f"{self.label}: database {database} already exists on the target with "
                f"{existing_tables} table(s); use --force-db to replace its contents or "
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
        clean = bool(existing_tables) and opts.force_db
        if fmt == "custom":
            args = ["--exit-on-error", "--single-transaction", "--no-comments"]
            if clean:
                args += ["--clean", "--if-exists"]
            argv = conn.argv("pg_restore", *args, database=database)
        else:
            argv = conn.psql(database, "--single-transaction")
        what = f"{self.label}: restoring database {database}"

        def load(stream: BinaryIO) -> None:
            if fmt != "custom":  # psql's input: meta-commands restricted (read() is all used)
                stream = cast(BinaryIO, RestrictedInput(stream, restrict_line(new_key())))
            pipe_into(self.runner, argv, stream, what=what, env=conn.env(), user=self.run_as)

        feed(dump_artifact(fmt), load)
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
        if self.config.format != "custom" or self.restore_jobs(opts) == 1:
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

    def _own_roles(self, conn: PgConn) -> set[str]:
        """The target's bootstrap superuser and the role drkit connects as."""
        return set(self._sql(conn, "postgres", OWN_ROLES_SQL).splitlines())

    def _restricts(self, conn: PgConn) -> bool:
        """Whether the target's psql has ``\\restrict`` (asked once per source)."""
        if self._has_restrict is None:
            self._has_restrict = psql_has_restrict(self.runner, conn, self.run_as)
        return self._has_restrict

    def require_restrict(self, conn: PgConn, database: str) -> None:
        """Raise RestoreError, before anything is applied, if psql cannot be restricted."""
        if not self._restricts(conn):
            where = f"{conn.host or 'local socket'}:{conn.port}"
            raise RestoreError(f"{self.label}: {self._no_restrict(database, where)}")

    def _no_restrict(self, database: str, where: str) -> str:
        return (
            f"psql on the target has no \\restrict, so the plain SQL dump of database "
            f"{database} on {where} could run psql meta-commands (a shell among them); "
            f"refused: install a PostgreSQL client {MINIMUM_PSQL} or later on the target "
            "(or point bin_dir at one)"
        )

    def _restore_globals(
        self, conn: PgConn, stream: BinaryIO, opts: RestoreOptions, report: RestoreReport
    ) -> None:
        raw = read_limited(stream, _MAX_GLOBALS)
        if len(raw) > _MAX_GLOBALS:
            raise RestoreError(f"{self.label}: {GLOBALS} is larger than 64 MiB; refusing")
        plan = self.role_plan(GLOBALS, raw, conn, replace=opts.force_db)
        self.runner.check(
            conn.psql("postgres"),
            input=plan.sql.encode("utf-8", "surrogateescape"),
            what=f"{self.label}: restoring roles",
            env=conn.env(),
            user=self.run_as,
        )
        if plan.created:
            report.actions.append(f"created role(s) {', '.join(sorted(plan.created))}")
        if plan.kept:
            report.actions.append(f"kept existing role(s) {', '.join(sorted(plan.kept))}")
        if plan.protected:
            report.actions.append(role_note(plan.protected))

    def role_plan(self, artifact: str, raw: bytes, conn: PgConn, *, replace: bool) -> RolePlan:
        """The role statements of ``raw`` (a roles artifact) for this target. Raises
        RestoreError naming the artifact's line that is not a role statement."""
        try:
            return plan_roles(
                raw.decode("utf-8", "surrogateescape"),
                self._roles(conn),
                self._own_roles(conn),
                replace=replace,
            )
        except GlobalsRefused as exc:
            raise RestoreError(
                f"{self.label}: {artifact} {exc}: only role statements are restored from it "
                "(CREATE/ALTER ROLE, ALTER USER, GRANT role TO, COMMENT ON ROLE); "
                "nothing was applied"
            ) from None


def role_note(protected: set[str]) -> str:
    return (
        f"note: left protected role(s) {', '.join(sorted(protected))} as they are on the "
        "target (what the backup says about them was skipped)"
    )
