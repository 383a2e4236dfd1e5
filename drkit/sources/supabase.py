"""``postgres`` with ``flavor = "supabase"``: the Supabase CLI's three-part recipe.

A plain pg_dump of a Supabase database includes Supabase's own schemas and
roles, and restoring it into a fresh Supabase fails on permissions and
"already exists". Like ``supabase db dump``, drkit stores three artifacts,
all read in one exported snapshot:

- ``roles.sql``: ``pg_dumpall --roles-only --no-role-passwords``, reserved
  roles commented out (a fresh Supabase already has them);
- ``schema.sql``: ``pg_dump --schema-only`` without the internal schemas;
- ``data.sql``: ``pg_dump --data-only`` of everything else *including* ``auth``
  and ``storage`` (users and file metadata), minus their migration tables.

Restore runs them in one psql transaction, with
``session_replication_role = replica`` before the data so triggers and
foreign keys don't fire on rows that arrive out of order.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from drkit.errors import RestoreError
from drkit.pipeline.streams import CHUNK, read_limited
from drkit.remote.base import exit_text, tail_text
from drkit.sources.base import Artifact, Feed, RestoreOptions, RestoreReport, StepPlan
from drkit.sources.pgsql import quote_literal
from drkit.sources.postgres import PostgresSource, filter_globals

INTERNAL_SCHEMAS = (
    "_analytics", "_realtime", "_supavisor", "auth", "extensions", "pgbouncer", "realtime",
    "storage", "supabase_functions", "supabase_migrations", "cron", "dbdev", "graphql",
    "graphql_public", "net", "pgmq", "pgsodium", "pgsodium_masks", "pgtle", "repack",
    "tiger", "tiger_data", "topology", "vault", "information_schema", "pg_*",
    "timescaledb_*", "_timescaledb_*",
)  # fmt: skip
DATA_SCHEMAS = ("auth", "storage")  # internal, but their rows are the users' data
MIGRATION_TABLES = ("auth.schema_migrations", "storage.migrations", "supabase_functions.migrations")
RESERVED_ROLES = frozenset((
    "anon", "authenticated", "authenticator", "dashboard_user", "pgbouncer", "postgres",
    "service_role", "supabase_admin", "supabase_auth_admin", "supabase_functions_admin",
    "supabase_read_only_user", "supabase_realtime_admin", "supabase_replication_admin",
    "supabase_storage_admin", "supabase_etl_admin", "supabase_privileged_role",
    "pgsodium_keyholder", "pgsodium_keyiduser", "pgsodium_keymaker", "pgtle_admin",
))  # fmt: skip
PARTS = ("roles.sql", "schema.sql", "data.sql")
MAX_ROLES = 64 << 20

_ROLE_LINE = re.compile(r'^(CREATE|ALTER) ROLE "((?:[^"]|"")+)"')


def filter_roles(line: str) -> str:
    """Comment out statements about reserved (and pg_*) roles."""
    m = _ROLE_LINE.match(line)
    if m:
        role = m.group(2).replace('""', '"')
        if role in RESERVED_ROLES or role.startswith("pg_"):
            return "-- " + line
    return line


def filter_schema(line: str) -> str:
    """Make the schema load into a fresh Supabase: its own objects already exist there."""
    if line.startswith('CREATE SCHEMA "'):
        return line.replace("CREATE SCHEMA ", "CREATE SCHEMA IF NOT EXISTS ", 1)
    if re.match(r'^ALTER .* OWNER TO "supabase_admin";', line):
        return "-- " + line
    if line.startswith('ALTER DEFAULT PRIVILEGES FOR ROLE "supabase_admin"'):
        return "-- " + line
    return line


class LineFilter:
    """A reader that applies ``fn`` to each text line of ``raw`` (streaming, bounded)."""

    def __init__(self, raw: BinaryIO, fn: Callable[[str], str]) -> None:
        self._raw = raw
        self._fn = fn
        self._pending = b""
        self._out = b""
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while chunk := self.read(CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        while len(self._out) < n and not self._eof:
            data = self._raw.read(CHUNK)
            if not data:
                self._eof = True
                lines, self._pending = [self._pending] if self._pending else [], b""
            else:
                *lines, self._pending = (self._pending + data).split(b"\n")
                lines = [ln + b"\n" for ln in lines]
            for ln in lines:
                text = ln.decode("utf-8", "surrogateescape")
                self._out += self._fn(text).encode("utf-8", "surrogateescape")
        out, self._out = self._out[:n], self._out[n:]
        return out


class SupabaseSource(PostgresSource):
    """The Supabase flavor of the postgres source (same policy keys)."""

    # Not in the data dump: the target's own migration history stays.
    unchecked_tables = frozenset(MIGRATION_TABLES)

    def artifacts(self) -> Iterator[Artifact]:
        conn = self.conn()
        env = conn.env()
        self.facts.update(globals=False, flavor="supabase")
        snapshot = self._open_session(conn)
        try:
            roles = conn.argv(
                "pg_dumpall", "--roles-only", "--no-role-passwords", "--quote-all-identifiers"
            )
            schema = conn.argv(
                "pg_dump", "--schema-only", "--quote-all-identifiers", f"--snapshot={snapshot}",
                *(f"--exclude-schema={s}" for s in INTERNAL_SCHEMAS),
                database=self.config.database,
            )  # fmt: skip
            data = conn.argv(
                "pg_dump", "--data-only", "--quote-all-identifiers", f"--snapshot={snapshot}",
                *(f"--exclude-schema={s}" for s in INTERNAL_SCHEMAS if s not in DATA_SCHEMAS),
                *(f"--exclude-table={t}" for t in MIGRATION_TABLES),
                database=self.config.database,
            )  # fmt: skip
            yield Artifact(PARTS[0], lambda: _filtered(self.command_stream(roles, env=env),
                                                        filter_roles))  # fmt: skip
            yield Artifact(PARTS[1], lambda: _filtered(self.command_stream(schema, env=env),
                                                        filter_schema))  # fmt: skip
            yield Artifact(PARTS[2], lambda: self.command_stream(data, env=env))
            self._collect_facts()
            self.facts["format"] = "supabase"
        finally:
            self.finish()

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        conn = self.target_conn(opts)
        database = self.target_database(opts)
        internal = ", ".join(quote_literal(s) for s in INTERNAL_SCHEMAS if "*" not in s)
        existing = self._sql(
            conn,
            database,
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT LIKE 'pg\\_%' "
            f"AND schemaname NOT IN ({internal});",
        ).strip()
        tables = len(facts.get("tables", {}))
        if existing != "0" and not opts.force:
            return StepPlan(
                [],
                f"database {database} on the target already has {existing} table(s) of its "
                "own; use --force to load over them or --rename-db to restore beside it",
            )
        return StepPlan(
            [f"Supabase database {database}: create non-reserved roles, load the schema and "
             f"{tables} table(s) of data (auth and storage included) in one transaction"]
        )  # fmt: skip

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        conn = self.target_conn(opts)
        database = self.target_database(opts)
        report = RestoreReport()
        blocked = self.describe(facts, opts).blocked
        if blocked:
            raise RestoreError(f"{self.label}: {blocked}")
        argv = conn.psql(database, "--single-transaction")
        what = f"{self.label}: restoring Supabase database {database}"
        proc = self.runner.start(argv, stdin=True, env=conn.env(), user=self.run_as)
        stdin = proc.stdin
        assert stdin is not None
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()

        def copy(stream: BinaryIO) -> None:
            while chunk := stream.read(CHUNK):
                stdin.write(chunk)

        existing = self._roles(conn)

        def copy_roles(stream: BinaryIO) -> None:
            # Roles the target already has are left as they are (like globals).
            raw = read_limited(stream, MAX_ROLES)
            if len(raw) > MAX_ROLES:
                raise RestoreError(f"{self.label}: roles.sql is larger than 64 MiB; refusing")
            text = raw.decode("utf-8", "surrogateescape")
            sql, _created, _kept = filter_globals(text, existing, replace=False)
            stdin.write(sql.encode("utf-8", "surrogateescape"))

        try:
            for part in PARTS:
                if part == "data.sql":
                    stdin.write(b"\nSET session_replication_role = replica;\n")
                feed(part, copy_roles if part == "roles.sql" else copy)
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
        report.actions.append(
            f"restored roles, schema and data (auth, storage included) into {database}"
        )
        return report


class _filtered:
    """Context manager: a CommandStream whose output passes through a LineFilter."""

    def __init__(self, inner: Any, fn: Callable[[str], str]) -> None:
        self._inner = inner
        self._fn = fn

    def __enter__(self) -> BinaryIO:
        return LineFilter(self._inner.__enter__(), self._fn)  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        self._inner.__exit__(*exc)
