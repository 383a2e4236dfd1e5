"""PostgreSQL command lines and SQL text helpers shared by dump and restore."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

# Catalog fragments shared by drkit.sources.pgcatalog's queries and drkit.sources.pgacl's
# reset: schemas that are not the system's (n: pg_namespace),
SYSTEM = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'"
# the columns of non-system relations, and each one's key in ``column_acls`` (a tab
# between relation and column: names may hold spaces and dots).
COLUMN_KEY = (
    "'column ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname) || E'\\t' "
    "|| quote_ident(a.attname)"
)
COLUMNS = f"""pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
    AND {SYSTEM}"""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def json_literal(value: object) -> str:
    """``value`` as a JSON string literal that cannot end the ``$drkit$`` body it sits in
    (names in the facts may hold ``$``: JSON spells it ``\\u0024``)."""
    return quote_literal(json.dumps(value).replace("$", "\\u0024"))


def conninfo_dbname(name: str) -> str:
    """``name`` as libpq's ``-d`` argument that can only mean a database of that name.

    libpq reads a ``-d`` value holding ``=`` (or starting ``postgresql://``) as a
    whole connection string: ``--database "dbname=postgres"`` would load into the
    existing ``postgres`` database while every check looked at a database named
    ``dbname=postgres`` (and ``host=...`` would reach another server). A quoted
    ``dbname=`` value is only ever a name.
    """
    return "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


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
            conn += ["-d", conninfo_dbname(database)]
        cmd = [binary, *conn, *args]
        if self.container:
            pw = ["-e", "PGPASSWORD"] if self.password else []
            return ["docker", "exec", "-i", *pw, self.container, *cmd]
        return cmd

    def env(self) -> dict[str, str] | None:
        return {"PGPASSWORD": self.password} if self.password else None

    def shell(self, script: str, *args: str) -> list[str]:
        """``sh -c script`` where the tools run: in the container, if there is one."""
        cmd = ["sh", "-c", script, "sh", *args]
        return ["docker", "exec", "-i", self.container, *cmd] if self.container else cmd

    def psql(self, database: str, *args: str) -> list[str]:
        return self.argv(
            "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *args, database=database
        )


# ---- spooling a dump on the target for a parallel pg_restore ------------------

SPOOL_PREFIX = "drkit-pgrestore."

# One round trip: a private directory (mktemp -d is 0700; chmod in case of an odd
# umask or mktemp), its filesystem's size and free space, and the target's CPUs.
# /var/tmp before /tmp: /tmp is often a RAM-backed tmpfs on small hosts.
_SPOOL_SETUP = r"""set -e
for d in "${TMPDIR:-}" /var/tmp /tmp; do
  if [ -n "$d" ] && [ -d "$d" ] && [ -w "$d" ]; then break; fi
done
dir=$(mktemp -d "$d/drkit-pgrestore.XXXXXX")
chmod 700 "$dir"
echo "$dir"
df -Pk "$dir" | awk 'NR==2 {print $2, $4}'
nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1
"""
SPOOL_WRITE = 'umask 077; exec cat > "$1"'
_SPOOL_REMOVE = 'rm -rf -- "$1"'


@dataclass(frozen=True)
class SpoolDir:
    """A private directory on the target host (or in its container)."""

    path: str
    total_bytes: int
    free_bytes: int
    cpus: int

    @property
    def dump(self) -> str:
        return self.path + "/database.pgdump"


def parse_spool_setup(out: str) -> SpoolDir:
    """Parse what ``_SPOOL_SETUP`` printed; ValueError if it is not that."""
    lines = out.split("\n")
    path = lines[0].strip()
    if not path.startswith("/") or not path.rsplit("/", 1)[-1].startswith(SPOOL_PREFIX):
        raise ValueError(f"unexpected spool directory {path!r}")
    total_kb, free_kb = (int(x) for x in lines[1].split())
    return SpoolDir(path, total_kb * 1024, free_kb * 1024, max(1, int(lines[2].strip())))


def spool_reserve(total_bytes: int) -> int:
    """Free space a spool must leave on its filesystem: 10% of it, at least 256 MiB.

    The spool may share a disk with a live PostgreSQL: filling that disk would
    stop it (WAL cannot be written), so the spool never takes the last bytes.
    """
    return max(256 << 20, total_bytes // 10)


def spool_budget(spool: SpoolDir, expected: int) -> int | None:
    """The most bytes the spool may write, or None when ``expected`` would not fit."""
    budget = spool.free_bytes - spool_reserve(spool.total_bytes)
    return budget if budget >= expected else None


def spool_setup_argv(conn: PgConn) -> list[str]:
    return conn.shell(_SPOOL_SETUP)


def spool_remove_argv(conn: PgConn, spool: SpoolDir) -> list[str]:
    return conn.shell(_SPOOL_REMOVE, spool.path)


def staging_name(database: str) -> str:
    """The name a parallel restore loads into before renaming it to ``database``.

    Deterministic, so a run that died half-way leaves a database the next run
    recognises as its own and drops; within PostgreSQL's 63-byte limit.
    """
    suffix = "_drkit_restoring"
    if len((database + suffix).encode()) <= 63:
        return database + suffix
    digest = hashlib.sha256(database.encode()).hexdigest()[:10]
    return f"{database.encode()[:30].decode('utf-8', 'ignore')}_{digest}{suffix}"


def dump_artifact(fmt: str) -> str:
    return "database.pgdump" if fmt == "custom" else "database.sql"
