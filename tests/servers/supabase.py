"""A real PostgreSQL 15 initialised the way a fresh self-hosted Supabase is.

The SQL is ``docker/hosts/e2i-droplet/supabase/{roles,database}.sql``, which the
e2i-droplet drill image runs too. Written from Supabase's public documentation
of what a new self-hosted instance has (its reserved roles, the internal
schemas with their own base objects, the ``supabase_realtime`` publication,
its event triggers and the default privileges that hand every new table in
``public`` to the API roles), not copied from its init scripts: enough of each
kind that a restore has to merge rather than re-create, and would widen access
if it simply re-granted.

``init_supabase(server)`` initialises a server's ``postgres`` database (the
roles are cluster-wide); ``supabase_server()`` starts a fresh server, does so,
and makes every role but the superusers log in with a password (scram), as a
real deployment does, so a restored role's password is checked for real.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers.postgres import PG_BIN, PgServer, postgres_server

# One source of truth for "a fresh Supabase": the SQL the e2i-droplet drill image runs at
# build time (docker/hosts/e2i-droplet/Dockerfile), so the tests' target and the drill's
# cannot drift apart. roles.sql: cluster-wide, the roles every Supabase has (attributes and
# settings as documented). database.sql: per database, run as supabase_admin (Supabase's
# own objects are its, or its admins').
INIT_DIR = Path(__file__).resolve().parents[2] / "docker" / "hosts" / "e2i-droplet" / "supabase"
ROLES_SQL = (INIT_DIR / "roles.sql").read_text()
DATABASE_SQL = (INIT_DIR / "database.sql").read_text()

# Superusers connect without a password (the tests' own connections); every other role
# must give its password, checked with scram as on a real deployment.
HBA = """local all all trust
host all postgres 127.0.0.1/32 trust
host all supabase_admin 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def init_supabase(server: PgServer, database: str = "postgres") -> None:
    """Create Supabase's roles (once per server) and its base objects in ``database``."""
    if server.psql("postgres", "SELECT 1 FROM pg_roles WHERE rolname = 'anon';").strip() != "1":
        server.psql("postgres", ROLES_SQL)
    server.psql(database, DATABASE_SQL)


def require_passwords(server: PgServer) -> None:
    """Make every role but the superusers log in with a scram password."""
    hba = Path(server.psql("postgres", "SHOW hba_file;").strip())
    hba.write_text(HBA)
    server.psql("postgres", "SELECT pg_reload_conf();")


@contextmanager
def supabase_server() -> Iterator[PgServer]:
    """A fresh server whose ``postgres`` database is a fresh self-hosted Supabase's."""
    with postgres_server() as server:
        init_supabase(server)
        require_passwords(server)
        yield server


def login(server: PgServer, role: str, password: str, database: str = "postgres") -> str:
    """Connect as ``role`` with ``password`` (scram); the server's answer or its error."""
    res = subprocess.run(
        [
            str(PG_BIN / "psql"),
            "-X",
            "-At",
            "-h",
            server.host,
            "-p",
            str(server.port),
            "-U",
            role,
            "-d",
            database,
            "-c",
            "SELECT current_user;",
        ],
        env={"PGPASSWORD": password, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    return res.stdout.strip() if res.returncode == 0 else res.stderr.strip()
