"""PostgreSQL command lines and SQL text helpers shared by dump and restore."""

from __future__ import annotations

import os
from dataclasses import dataclass


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class PgConn:
    """How to reach one server. ``password`` is a resolved value: env only, never argv."""

    host: str | None
    port: int
    user: str | None
    password: str | None
    bin_dir: str | None = None
    container: str | None = None

    def argv(self, tool: str, *args: str, database: str | None = None) -> list[str]:
        binary = os.path.join(self.bin_dir, tool) if self.bin_dir else tool
        conn = []
        if self.host:
            conn += ["-h", self.host]
        conn += ["-p", str(self.port)]
        if self.user:
            conn += ["-U", self.user]
        if database is not None:
            conn += ["-d", database]
        cmd = [binary, *conn, *args]
        if self.container:
            pw = ["-e", "PGPASSWORD"] if self.password else []
            return ["docker", "exec", "-i", *pw, self.container, *cmd]
        return cmd

    def env(self) -> dict[str, str] | None:
        return {"PGPASSWORD": self.password} if self.password else None

    def psql(self, database: str, *args: str) -> list[str]:
        return self.argv(
            "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *args, database=database
        )
