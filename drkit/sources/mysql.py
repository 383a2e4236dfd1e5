"""``mysql``: MySQL or MariaDB on the host or in a container, as one SQL dump.

Backup: ``mysqldump --single-transaction --routines --triggers --events
--no-tablespaces --default-character-set=utf8mb4 --databases DB...``: one
consistent InnoDB snapshot of the listed databases (``all``: every schema but
``mysql``, ``information_schema``, ``performance_schema`` and ``sys``: accounts
and grants are the server's, not the application's). The dump is streamed; its
rows are counted from the stream itself (``sqldump.DumpCounter``), so the facts
are exactly what was stored. Fail closed: mysqldump must exit 0 and the dump end
with its ``-- Dump completed`` line (a cut stream has no such line).

Where: on the host (``host``/``port`` or ``socket``), or inside ``container``
(``docker exec``). The password is ``MYSQL_PWD`` in the environment, resolved
from the policy's secret reference, or with ``container_password_env`` read
inside the container from its own variable (``MYSQL_ROOT_PASSWORD``), so it
never leaves the container.

Restore: a database that holds tables is refused unless ``--force-db``, which
drops it first (a dump alone would leave tables that were added since). The
dump is piped into the client with ``--binary-mode`` (no client commands such
as ``\\!`` run from the dump: a dump from a compromised host must not run
commands on the target); the client stops at the first error.

Check: every table's ``COUNT(*)`` equals the backup's.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Any, BinaryIO

from drkit import secrets
from drkit.errors import RestoreError, SourceError
from drkit.policy.models import MysqlConfig
from drkit.remote.base import exit_text, tail_text
from drkit.sources.base import (
    Artifact,
    Check,
    CommandStream,
    Feed,
    RestoreOptions,
    RestoreReport,
    Source,
    StepPlan,
    pipe_into,
)
from drkit.sources.sqldump import DumpCounter

ARTIFACT = "dump.sql"
SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
DUMP_OPTIONS = (
    "--single-transaction",
    "--routines",
    "--triggers",
    "--events",
    "--no-tablespaces",
    "--default-character-set=utf8mb4",
)


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class DumpStream(CommandStream):
    """mysqldump's stdout: counted as it passes; a dump without its last line fails."""

    def __init__(self, source: Source, argv: list[str], env: dict[str, str] | None) -> None:
        super().__init__(source, argv, env=env, expect_output=True, user=None)
        self.counter = DumpCounter()

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        if data:
            self.counter.feed(data)
            return data
        self.counter.close()
        if not self.counter.completed:
            raise SourceError(
                f"{self._source.label}: `{shlex.join(self._argv)}` ended without its "
                "'-- Dump completed' line: the dump is cut; nothing was stored. Look at the "
                "server's log and the dump tool's errors, then run the backup again"
            )
        return data


class MysqlSource(Source):
    kind = "mysql"
    config: MysqlConfig

    # ---- talking to the server ---------------------------------------------
    def env(self) -> dict[str, str] | None:
        c = self.config
        return {"MYSQL_PWD": secrets.resolve(c.password)} if c.password else None

    def argv(self, tool: str, *args: str) -> list[str]:
        c = self.config
        conn = [f"--user={c.user}"]
        if c.host:
            conn += [f"--host={c.host}", f"--port={c.port}"]
        elif c.socket:
            conn += [f"--socket={c.socket}"]
        cmd = [tool, *conn, *args]
        if not c.container:
            return cmd
        if c.container_password_env:
            # The password stays in the container: its own variable, read by its shell.
            script = f'MYSQL_PWD="${{{c.container_password_env}}}" exec "$@"'
            return ["docker", "exec", "-i", c.container, "sh", "-c", script, "sh", *cmd]
        pw = ["-e", "MYSQL_PWD"] if c.password else []
        return ["docker", "exec", "-i", *pw, c.container, *cmd]

    @property
    def where(self) -> str:
        c = self.config
        server = f"{c.host}:{c.port}" if c.host else (c.socket or "the local socket")
        return f"{server} in container {c.container}" if c.container else server

    def sql(self, statements: str, error: type[Exception] = SourceError) -> list[list[str]]:
        """Rows (tab-separated columns) of ``statements`` run by the client."""
        argv = self.argv(self.config.client, "--batch", "--skip-column-names")
        try:
            res = self.runner.run(argv, input=statements.encode(), env=self.env(), user=self.run_as)
        except OSError as exc:
            raise error(f"{self.label}: {shlex.join(argv)}: {exc}") from None
        if res.returncode != 0:
            raise error(
                f"{self.label}: server {self.where}: the client {exit_text(res.returncode)}"
                f"{tail_text(res.stderr)}; check that the server is up and the source's "
                "user and password"
            )
        text = res.stdout.decode("utf-8", "replace")
        return [line.split("\t") for line in text.splitlines()]

    def databases(self, error: type[Exception] = SourceError) -> list[str]:
        if self.config.databases != "all":
            return list(self.config.databases)
        excluded = ", ".join(quote_literal(s) for s in SYSTEM_SCHEMAS)
        rows = self.sql(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
            f"WHERE SCHEMA_NAME NOT IN ({excluded}) ORDER BY 1;",
            error,
        )
        return [r[0] for r in rows]

    def tables(self, databases: list[str], error: type[Exception]) -> dict[str, str]:
        """ "db.table" -> TABLE_TYPE (BASE TABLE, VIEW, ...) of the databases that exist."""
        names = ", ".join(quote_literal(d) for d in databases)
        rows = self.sql(
            "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA IN ({names}) ORDER BY 1, 2;",
            error,
        )
        return {f"{db}.{table}": kind for db, table, kind in rows}

    def existing(self, databases: list[str], error: type[Exception]) -> set[str]:
        names = ", ".join(quote_literal(d) for d in databases)
        rows = self.sql(
            f"SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ({names});",
            error,
        )
        return {r[0] for r in rows}

    # ---- backup -------------------------------------------------------
    def artifacts(self) -> Iterator[Artifact]:
        [[version]] = self.sql("SELECT VERSION();")
        databases = self.databases()
        if not databases:
            raise SourceError(
                f"{self.label}: server {self.where} has no database to dump (all of them are "
                "system schemas); list the databases in the policy"
            )
        missing = sorted(set(databases) - self.existing(databases, SourceError))
        if missing:
            raise SourceError(
                f"{self.label}: server {self.where} has no database {', '.join(missing)}; "
                "fix `databases` in the policy"
            )
        argv = self.argv(self.config.dump, *DUMP_OPTIONS, "--databases", *databases)
        env = self.env()
        streams: list[DumpStream] = []

        def opener() -> DumpStream:
            streams.append(DumpStream(self, argv, env))
            return streams[-1]

        yield Artifact(ARTIFACT, opener)
        self.facts.update(
            server=self.where,
            version=version,
            databases=databases,
            tables=streams[-1].counter.rows,
            rows=sum(streams[-1].counter.rows.values()),
        )

    # ---- restore ------------------------------------------------------
    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        databases = list(facts.get("databases") or [])
        present = self.tables(databases, RestoreError)
        actions = []
        held = [d for d in databases if any(t.startswith(d + ".") for t in present)]
        for db in databases:
            n = sum(1 for t in facts.get("tables", {}) if t.startswith(db + "."))
            if db in held and opts.force_db:
                actions.append(f"DROP DATABASE {db} and what it holds (--force-db)")
            actions.append(f"create database {db} and load {n} table(s) into {self.where}")
        if held and not opts.force_db:
            return StepPlan(
                actions,
                f"database(s) {', '.join(held)} on {self.where} hold tables; use --force-db "
                "to replace them",
            )
        return StepPlan(actions)

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        plan = self.describe(facts, opts)
        if plan.blocked:
            raise RestoreError(f"{self.label}: {plan.blocked}")
        databases = list(facts.get("databases") or [])
        report = RestoreReport()
        drop = sorted(self.existing(databases, RestoreError)) if opts.force_db else []
        if drop:
            self.sql("".join(f"DROP DATABASE {quote_ident(d)};" for d in drop), RestoreError)
            report.actions.append(f"dropped database(s) {', '.join(drop)} (--force-db)")
        argv = self.argv(self.config.client, "--binary-mode")
        where = f"{self.label}: loading {ARTIFACT} into {self.where}"

        def load(stream: BinaryIO) -> None:
            pipe_into(self.runner, argv, stream, what=where, env=self.env(), user=self.run_as)

        feed(ARTIFACT, load)
        report.actions.append(
            f"loaded {len(facts.get('tables', {}))} table(s) of {', '.join(databases)}"
        )
        return report

    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        want: dict[str, int] = facts.get("tables") or {}
        databases = list(facts.get("databases") or [])
        present = self.tables(databases, RestoreError)
        # Older dumps create a stand-in table for each view first: a view there is fine.
        counted = sorted(t for t in want if present.get(t) == "BASE TABLE")
        got: dict[str, int] = {}
        if counted:
            query = " UNION ALL ".join(
                f"SELECT {quote_literal(t)}, COUNT(*) FROM "
                f"{quote_ident(t.split('.', 1)[0])}.{quote_ident(t.split('.', 1)[1])}"
                for t in counted
            )
            got = {name: int(n) for name, n in self.sql(query + ";", RestoreError)}
        bad = [f"{t}: missing" for t in sorted(set(want) - set(present))]
        bad += [f"{t}: {got[t]} rows, backup {want[t]}" for t in counted if got[t] != want[t]]
        if bad:
            shown = "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
            return [Check(self.name, "rows per table", "fail", shown)]
        detail = f"{len(counted)} table(s), {sum(got.values())} rows as at backup"
        return [Check(self.name, "rows per table", "pass", detail)]
