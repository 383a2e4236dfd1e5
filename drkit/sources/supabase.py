"""``postgres`` with ``flavor = "supabase"``: restores onto a fresh self-hosted Supabase.

Backup: three artifacts read in one exported snapshot, like ``supabase db
dump`` (docs/sources/supabase.md compares the two point by point):

- ``roles.sql``: ``pg_dumpall --roles-only``, with the password hashes when the
  connecting role can read them (``--no-role-passwords`` otherwise: the facts
  then name the login roles that will need a new password), reserved roles'
  own statements commented out;
- ``schema.sql``: ``pg_dump --schema-only`` of the *whole* database, Supabase's
  schemas included: the user's triggers on ``auth.users``, policies on
  ``storage.objects``, functions and grants live there too;
- ``data.sql``: ``pg_dump --data-only`` of everything but Supabase's internal
  schemas, ``auth`` and ``storage`` included, their migration tables excluded.

The same snapshot's facts (``pgcatalog``) name every object the way pg_dump
does, every object's, column's, the database's and the default privileges, the
materialized views and what they read, the roles' settings, and a digest of the
definition of every routine, view, trigger, policy and table (its columns).

Restore, in one psql transaction: roles (parsed and rebuilt by ``pgroles``,
reserved roles never altered), the schema with every entry for an object the
target already has left out (``supabase_merge``: merged, not re-created) --
unless the user edited it in place on the source (its definition digest differs
from the target's): then the source's function, procedure or view replaces the
target's (``CREATE OR REPLACE``), its trigger or policy is dropped and created
again; a table whose columns differ is kept and reported --, the
data with ``session_replication_role = replica``, the populated materialized
views refreshed in dependency order, then every object's, column's, the
database's and the default privileges set to the source's exactly (a fresh
Supabase's default privileges grant the API roles everything created in
``public``: a re-GRANT alone would widen access). The check afterwards
compares privileges (columns' and the database's too), objects, definitions,
row counts and role settings with the facts, and fails naming any object
whose access is wider than the source's, or whose definition differs. psql's
input starts with drkit's own ``\\restrict`` (``psqlinput``).

The catalog queries, privileges and merge are ``pgcatalog``, ``pgacl`` and
``supabase_merge``; this module (~590 lines) is the source class over
``PostgresSource``, whose plan, load and check share the target's state.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

from drkit.errors import RestoreError
from drkit.pipeline.streams import CHUNK, read_limited
from drkit.remote.base import exit_text, tail_text
from drkit.sources.base import Artifact, Check, Feed, RestoreOptions, RestoreReport, StepPlan
from drkit.sources.pgacl import (
    compare_acls,
    compare_column_acls,
    compare_database_acl,
    default_acl_keys,
    global_default,
    reset_sql,
)
from drkit.sources.pgcatalog import (
    fact_sql,
    facts_sql,
    matview_identity,
    parse_facts,
    refresh_order,
    refresh_sql,
    target_sql,
)
from drkit.sources.pgroles import RESERVED_ROLES, RoleCollector, is_protected, protected_roles
from drkit.sources.pgsql import PgConn, quote_literal
from drkit.sources.postgres import PostgresSource, role_note
from drkit.sources.psqlinput import RestrictedInput, new_key, restrict_line
from drkit.sources.supabase_merge import (
    PRINTED_KINDS,
    SUPABASE_SCHEMAS,
    UNRECORDED,
    Changes,
    LineFilter,
    MergeFilter,
    Target,
    definition_changes,
    merge_lines,
    missing_base,
    object_text,
    quoted,
    settings_differ,
)

# Not in the data dump: Supabase's own state (its services rebuild it), not the user's.
INTERNAL_SCHEMAS = (
    "_analytics",
    "_realtime",
    "_supavisor",
    "auth",
    "extensions",
    "pgbouncer",
    "realtime",
    "storage",
    "supabase_functions",
    "supabase_migrations",
    "cron",
    "dbdev",
    "graphql",
    "graphql_public",
    "net",
    "pgmq",
    "pgsodium",
    "pgsodium_masks",
    "pgtle",
    "repack",
    "tiger",
    "tiger_data",
    "topology",
    "vault",
    "information_schema",
    "pg_*",
    "timescaledb_*",
    "_timescaledb_*",
)
DATA_SCHEMAS = ("auth", "storage")  # internal, but their rows are the users' data
MIGRATION_TABLES = ("auth.schema_migrations", "storage.migrations", "supabase_functions.migrations")
PARTS = ("roles.sql", "schema.sql", "data.sql")
MAX_ROLES = 64 << 20
FORMAT = "supabase-merge"  # facts["format"]: objects, privileges and matviews recorded

_ROLE_LINE = re.compile(r'^(CREATE|ALTER) ROLE "((?:[^"]|"")+)"')

_ROLE_FACTS = fact_sql(
    "all_roles",
    "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'",
    "jsonb_agg(q.rolname ORDER BY q.rolname)",
) + fact_sql(
    "login_roles",
    "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname !~ '^pg_'",
    "jsonb_agg(q.rolname ORDER BY q.rolname)",
)


def filter_roles(line: str) -> str:
    """Comment out statements about reserved (and pg_*) roles."""
    m = _ROLE_LINE.match(line)
    if m:
        role = m.group(2).replace('""', '"')
        if role in RESERVED_ROLES or role.startswith("pg_"):
            return "-- " + line
    return line


class SupabaseSource(PostgresSource):
    """The Supabase flavor of the postgres source (same policy keys)."""

    # Not in the data dump: the target's own migration history stays.
    unchecked_tables = frozenset(MIGRATION_TABLES)

    # ---- backup -------------------------------------------------------
    def session_sql(self) -> str:
        return facts_sql() + _ROLE_FACTS

    def artifacts(self) -> Iterator[Artifact]:
        conn = self.conn()
        env = conn.env()
        readable = (
            self._sql(
                conn,
                self.config.database,
                "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT');",
            ).strip()
            == "t"
        )
        self.facts.update(globals=False, flavor="supabase", passwords=readable)
        snapshot = self._open_session(conn)
        try:
            hashes = [] if readable else ["--no-role-passwords"]
            roles = conn.argv("pg_dumpall", "--roles-only", *hashes, "--quote-all-identifiers")
            schema = conn.argv(
                "pg_dump",
                "--schema-only",
                "--quote-all-identifiers",
                f"--snapshot={snapshot}",
                database=self.config.database,
            )
            data = conn.argv(
                "pg_dump",
                "--data-only",
                "--quote-all-identifiers",
                f"--snapshot={snapshot}",
                *(f"--exclude-schema={s}" for s in INTERNAL_SCHEMAS if s not in DATA_SCHEMAS),
                *(f"--exclude-table={t}" for t in MIGRATION_TABLES),
                database=self.config.database,
            )
            names = RoleCollector()
            yield Artifact(
                PARTS[0],
                lambda: _filtered(self.command_stream(roles, env=env), filter_roles),
                names.feed,
            )
            yield Artifact(PARTS[1], lambda: self.command_stream(schema, env=env))
            yield Artifact(PARTS[2], lambda: self.command_stream(data, env=env))
            self._collect_facts()
            self.facts["roles"] = sorted(names.names)
            self.facts["format"] = FORMAT
        finally:
            self.finish()

    # ---- restore ------------------------------------------------------
    def _target(self, conn: PgConn, database: str) -> Target:
        exists = (
            self._sql(
                conn,
                "postgres",
                f"SELECT count(*) FROM pg_database WHERE datname = {quote_literal(database)};",
            ).strip()
            != "0"
        )
        if not exists:
            return Target(False, self._roles(conn))
        found = parse_facts(self._sql(conn, database, target_sql(*_TARGET_FACTS)))
        return _existing(found, self._roles(conn))

    def _blocked(
        self, facts: dict[str, Any], target: Target, database: str, where: str, opts: RestoreOptions
    ) -> str | None:
        if facts.get("format") != FORMAT:
            return (
                "this Supabase snapshot was taken by an older drkit, whose restores could widen "
                "access (it records no objects or privileges to merge and check against); "
                "take a new backup with this version"
            )
        if not target.exists:
            return (
                f"database {database} does not exist on {where}: a Supabase backup is restored "
                "into the database of a running self-hosted Supabase (its `postgres`), whose "
                "initialisation created Supabase's own roles and schemas"
            )
        missing = missing_base(facts, target)
        if missing:
            return (
                f"{where} database {database} is not a Supabase like the source: it lacks "
                f'{"; ".join(missing)}. A flavor = "supabase" backup restores onto a fresh '
                "self-hosted Supabase (its initialisation creates them); drkit does not "
                "create Supabase's reserved objects itself"
            )
        own = sorted(
            f"{o.split(chr(9))[1]}.{o.split(chr(9))[2]}"
            for o in target.objects
            if o.startswith("TABLE\t") and o.split("\t")[1] not in SUPABASE_SCHEMAS
        )
        if own:
            more = f" (--force-db does not apply: {_NO_FORCE})" if opts.force_db else ""
            return (
                f"database {database} on {where} already has {len(own)} table(s) of its own "
                f"({', '.join(own[:5])}{', ...' if len(own) > 5 else ''}); restore onto a "
                f"fresh Supabase, or drop them first{more}"
            )
        return None

    def _role_lines(self, facts: dict[str, Any], target: Target, conn: PgConn) -> list[str]:
        protected = protected_roles(target.roles, self._own_roles(conn))
        backed = set(facts.get("roles", []))
        never = {r for r in backed if is_protected(r, protected)}
        new = sorted(backed - target.roles - never)
        kept = sorted(backed & target.roles - never)
        lines = []
        if new:
            lines.append(f"roles: create {', '.join(new)}")
        if kept:
            lines.append(f"roles: keep existing {', '.join(kept)}")
        logins = sorted(set(facts.get("login_roles", [])) & set(new))
        if logins and not facts.get("passwords"):
            lines.append(
                "roles: the backup could not read password hashes (its role is not allowed "
                f"to read pg_authid): login role(s) {', '.join(logins)} will need a new "
                "password (ALTER ROLE ... PASSWORD) after the restore"
            )
        elif logins:
            lines.append(f"roles: passwords of {', '.join(logins)} restored from the backup")
        reserved = set(facts.get("all_roles", [])) & RESERVED_ROLES & target.roles
        for diff in settings_differ(facts, target, reserved):
            lines.append(f"reserved role settings differ, left as the target has them: {diff}")
        return lines

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        conn = self.target_conn(opts)
        database = self.target_database(opts)
        where = f"{conn.host or 'local socket'}:{conn.port}"
        target = self._target(conn, database)
        actions = [self._role_lines(facts, target, conn)] if target.exists else [[]]
        lines = actions[0]
        blocked = self._blocked(facts, target, database, where, opts)
        if blocked:
            return StepPlan(lines, blocked)
        if not self._restricts(conn):
            return StepPlan(lines, self._no_restrict(database, where))
        lines += [
            f"Supabase database {database} on {where}: " + m for m in merge_lines(facts, target)
        ]
        views = refresh_order(facts.get("matviews", []))
        lines.append(
            f"load data of {len(facts.get('tables', {}))} table(s) and materialized view(s) "
            "(auth and storage included) in the same transaction"
            + (f"; refresh {', '.join(views)} in dependency order" if views else "")
        )
        unrecorded = _unrecorded(facts)
        lines.append(
            f"privileges: {len(facts.get('acls', {}))} object(s), "
            + (
                ""
                if "column_acls" not in facts
                else f"{len(facts['column_acls'])} column(s) with privileges, "
            )
            + ("" if "database_acl" not in facts else f"database {database}, ")
            + f"{len(facts.get('default_acls', {}))} default-privilege entr(ies) set to the "
            "source's exactly after the load, then checked (wider access fails the restore)"
            + (f"; {unrecorded}: left as the target has them" if unrecorded else "")
        )
        return StepPlan(lines)

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        conn = self.target_conn(opts)
        database = self.target_database(opts)
        where = f"{conn.host or 'local socket'}:{conn.port}"
        target = self._target(conn, database)
        blocked = self._blocked(facts, target, database, where, opts)
        if blocked:
            raise RestoreError(f"{self.label}: {blocked}")
        self.require_restrict(conn, database)
        merge = MergeFilter(target.objects, definition_changes(facts, target).replace)
        protected: list[str] = []
        created: list[str] = []
        known = {m for o in facts.get("objects", []) if (m := matview_identity(o))}
        try:
            tail = refresh_sql(refresh_order(facts.get("matviews", [])), known)
        except ValueError as exc:
            raise RestoreError(f"{self.label}: {exc}; nothing was applied") from None
        tail += reset_sql(
            facts.get("acls", {}),
            facts.get("default_acls", {}),
            [quoted(s) for s in SUPABASE_SCHEMAS],
            facts.get("column_acls"),
            facts.get("database_acl"),
        )

        def roles(stream: BinaryIO) -> bytes:
            # Roles the target already has are left as they are (like globals).
            raw = read_limited(stream, MAX_ROLES)
            if len(raw) > MAX_ROLES:
                raise RestoreError(f"{self.label}: roles.sql is larger than 64 MiB; refusing")
            plan = self.role_plan(PARTS[0], raw, conn, replace=False)
            protected.extend(plan.protected)
            created.extend(plan.created)
            return plan.sql.encode("utf-8", "surrogateescape")

        self._load(conn, database, feed, roles, merge, tail)
        report = RestoreReport()
        if created:
            report.actions.append(f"created role(s) {', '.join(sorted(created))}")
        report.actions.append(
            f"restored schema and data (auth, storage included) into {database}; merged "
            f"{len(merge.merged)} object(s) the target already had"
        )
        if merge.replaced:
            report.actions.append(
                "replaced the target's definition of "
                + ", ".join(object_text(o) for o in merge.replaced)
                + " with the source's (edited on the source)"
            )
        report.actions.append(
            "set every object's, column's, the database's and the default "
            "privileges to the source's"
        )
        if protected:
            report.actions.append(role_note(set(protected)))
        return report

    def _load(
        self, conn: PgConn, database: str, feed: Feed, roles: Any, merge: MergeFilter, tail: str
    ) -> None:
        """One psql transaction: roles, merged schema, data, refreshes and ``tail``."""
        argv = conn.psql(database, "--single-transaction")
        what = f"{self.label}: restoring Supabase database {database}"
        proc = self.runner.start(argv, stdin=True, env=conn.env(), user=self.run_as)
        stdin = proc.stdin
        assert stdin is not None
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()

        def copy(stream: BinaryIO, merging: bool) -> None:
            # pg_dump's own \restrict lines dropped: drkit's is in force (written first).
            source: Any = LineFilter(stream, merge) if merging else stream
            dump = RestrictedInput(source, b"")
            while chunk := dump.read(CHUNK):
                stdin.write(chunk)

        try:
            stdin.write(restrict_line(new_key()))
            feed(PARTS[0], lambda s: stdin.write(roles(s)))
            feed(PARTS[1], lambda s: copy(s, True))
            stdin.write(b"\nSET session_replication_role = replica;\n")
            feed(PARTS[2], lambda s: copy(s, False))
            stdin.write(b"\nSET session_replication_role = DEFAULT;\n" + tail.encode())
            stdin.close()
        except BrokenPipeError:
            pass  # psql stopped on an error: its status and stderr say which
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        rc = proc.wait()
        reader.join()
        if rc != 0:
            raise RestoreError(f"{what}: psql {exit_text(rc)}{tail_text(proc.stderr_tail())}")

    # ---- check --------------------------------------------------------
    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        """Row counts and roles (as postgres), then privileges, default privileges,
        objects and role settings against the facts."""
        skipped = tuple(s + "." for s in INTERNAL_SCHEMAS if s not in DATA_SCHEMAS)
        restored = {t: n for t, n in facts.get("tables", {}).items() if not t.startswith(skipped)}
        checks = super().check({**facts, "tables": restored}, opts)
        if facts.get("format") != FORMAT:
            return checks
        conn, database = self.target_conn(opts), self.target_database(opts)
        names = (*_TARGET_FACTS, "acls", "column_acls", "database_acl", "default_acls")
        found = parse_facts(self._sql(conn, database, target_sql(*names)))
        checks.append(self._privilege_check(facts, found, database))
        missing = sorted(set(facts.get("objects", [])) - set(found["objects"]))
        checks.append(
            Check(
                self.name,
                f"objects in {database}",
                "fail" if missing else "pass",
                f"missing: {'; '.join(m.replace(chr(9), ' ') for m in missing[:8])}"
                if missing
                else f"all {len(facts.get('objects', []))} object(s) of the source are there",
            )
        )
        target = _existing(found, self._roles(conn))
        checks.append(
            _definition_check(
                self.name,
                database,
                definition_changes(facts, target),
                len(facts.get("definitions", {})),
            )
        )
        user = set(facts.get("roles", []))
        reserved = set(facts.get("all_roles", [])) & RESERVED_ROLES & target.roles
        wrong = settings_differ(facts, target, user)
        left = settings_differ(facts, target, reserved)
        status = "fail" if wrong else "warn" if left else "pass"
        detail = (
            "; ".join(
                [f"differs: {w}" for w in wrong]
                + [f"reserved role left as the target has it: {x}" for x in left]
            )
            or f"settings of {len(user)} role(s) equal the source's"
        )
        checks.append(Check(self.name, "role settings", status, detail))
        return checks

    def _privilege_check(
        self, facts: dict[str, Any], found: dict[str, Any], database: str
    ) -> Check:
        want, have = facts.get("acls", {}), found["acls"]
        wider, narrower = compare_acls(want, have, want)
        dwant, dhave = dict(facts.get("default_acls", {})), dict(found["default_acls"])
        keys = default_acl_keys(dwant, dhave, [quoted(s) for s in SUPABASE_SCHEMAS])
        for key in keys:  # a global entry without a row is PostgreSQL's built-in default
            for side in (dwant, dhave):
                if key.split("\t")[1] == "-" and key not in side:
                    side[key] = global_default(key)
        dwider, dnarrower = compare_acls(dwant, dhave, keys)
        # Column and database privileges: compared when the snapshot recorded them.
        columns: set[str] = set()
        if "column_acls" in facts:
            cwant, chave = facts["column_acls"], found["column_acls"]
            columns = set(cwant) | set(chave)
            cwider, cnarrower = compare_column_acls(cwant, chave)
            wider += cwider
            narrower += cnarrower
        if "database_acl" in facts:
            bwider, bnarrower = compare_database_acl(
                facts["database_acl"], found["database_acl"], database
            )
            wider += bwider
            narrower += bnarrower
        wider += [f"default privileges {k.replace(chr(9), ' ')}" for k in dwider]
        narrower += [f"default privileges {k.replace(chr(9), ' ')}" for k in dnarrower]
        unrecorded = _unrecorded(facts)
        note = f"{unrecorded}: not compared" if unrecorded else ""
        if wider or narrower:
            parts = []
            if wider:
                parts.append("access WIDER than the source's: " + "; ".join(wider[:8]))
            if narrower:
                parts.append("narrower than the source's: " + "; ".join(narrower[:8]))
            detail = " | ".join(parts + ([note] if note else []))
            return Check(self.name, f"privileges in {database}", "fail", detail)
        return Check(
            self.name,
            f"privileges in {database}",
            "pass",
            (f"{note}; " if note else "")
            + f"{len(want)} object(s), "
            + (f"{len(columns)} column(s), " if "column_acls" in facts else "")
            + (f"database {database}, " if "database_acl" in facts else "")
            + f"{len(keys)} default-privilege entr(ies) equal the source's",
        )


# What a restore reads of an existing target (``Target``), before the load and after.
_TARGET_FACTS = ("objects", "role_settings", "definitions", "table_columns", "server_version")


def _existing(found: dict[str, Any], roles: set[str]) -> Target:
    """The target that ``found`` (its ``_TARGET_FACTS``) and ``roles`` describe."""
    return Target(
        True,
        roles,
        set(found["objects"]),
        found["role_settings"],
        found["definitions"],
        found["table_columns"],
        found["server_version"],
    )


def _definition_check(source: str, database: str, changes: Changes, count: int) -> Check:
    """After the load every recorded object the target has is defined as on the source:
    fails naming a function, procedure, view, trigger or policy that is not; warns for
    a table whose columns differ, or a materialized view whose query does (kept as the
    target had them, the plan said so), and for a view, policy or trigger that still
    differs between two major versions (printed differently, maybe not defined so)."""
    name = f"definitions in {database}"
    if not changes.recorded:
        return Check(source, name, "pass", UNRECORDED)
    printed = [
        o for o in changes.replace if changes.versions and o.split("\t", 1)[0] in PRINTED_KINDS
    ]
    failed = [o for o in changes.replace if o not in printed]
    kept = [f"{object_text(o)}: {why}" for o, why in changes.kept]
    notes = [f"kept as the target has them: {'; '.join(kept[:8])}"] if kept else []
    if printed:
        notes.append(
            f"{', '.join(object_text(o) for o in printed[:8])}: differ(s) as printed by "
            f"{changes.versions} (the source's definition was applied)"
        )
    if failed:
        detail = "differs from the source's: " + "; ".join(object_text(o) for o in failed[:8])
        return Check(source, name, "fail", " | ".join([detail, *notes]))
    if notes:
        return Check(source, name, "warn", " | ".join(notes))
    return Check(source, name, "pass", f"{count} definition(s) equal the source's")


def _unrecorded(facts: dict[str, Any]) -> str:
    """What a snapshot from before drkit recorded column and database privileges lacks
    ("" when it has both): those privileges are then neither reset nor checked."""
    missing = [
        w for f, w in (("column_acls", "column"), ("database_acl", "database")) if f not in facts
    ]
    if not missing:
        return ""
    return (
        f"{' and '.join(missing)} privileges not recorded (a snapshot taken before drkit "
        "recorded them)"
    )


_NO_FORCE = (
    "Supabase's objects and the user's share its schemas, so drkit merges into a fresh "
    "Supabase and never drops objects in one"
)


class _filtered:
    """Context manager: a CommandStream whose output passes through a LineFilter."""

    def __init__(self, inner: Any, fn: Any) -> None:
        self._inner = inner
        self._fn = fn

    def __enter__(self) -> BinaryIO:
        return LineFilter(self._inner.__enter__(), self._fn)  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        self._inner.__exit__(*exc)
