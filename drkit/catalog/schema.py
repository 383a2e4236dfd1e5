"""The catalog's tables in SQLite, its URLs and its times.

The catalog is one SQLite file (``sqlite:///PATH``, the default in the state
dir) or an in-memory database (``sqlite://``, for tests and one-off runs). It
is a cache of the repositories, which ``drkit catalog sync`` rebuilds, so one
local file serves: no other database is supported (docs/design-notes.md).
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from pathlib import Path
from typing import Final
from urllib.parse import unquote

from drkit.catalog.rows import to_utc
from drkit.errors import UsageError

# (table, (CREATE TABLE, CREATE INDEX ...)), in creation order. The text is the DDL
# SQLAlchemy generated while drkit wrote the catalog through it (until issue #22),
# kept byte for byte: catalog files from then and now have the same sqlite_master.
SCHEMA: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (
        "drills",
        (
            (
                "CREATE TABLE drills (\n"
                "\tid INTEGER NOT NULL, \n"
                "\trepository_url VARCHAR(2048) NOT NULL, \n"
                "\thost VARCHAR(255) NOT NULL, \n"
                "\tdrill_id VARCHAR(255) NOT NULL, \n"
                "\tsnapshot_id VARCHAR(255) NOT NULL, \n"
                "\tstarted DATETIME NOT NULL, \n"
                "\tfinished DATETIME, \n"
                "\tverdict VARCHAR(8) NOT NULL, \n"
                "\trto_seconds FLOAT, \n"
                "\trpo_seconds FLOAT, \n"
                "\treport_key VARCHAR(2048), \n"
                "\tPRIMARY KEY (id), \n"
                "\tCONSTRAINT uq_drills_key UNIQUE (repository_url, host, drill_id), \n"
                "\tCONSTRAINT ck_drills_verdict CHECK (verdict IN ('pass', 'fail', 'warn'))\n"
                ")"
            ),
            "CREATE INDEX ix_drills_host_started ON drills (host, started)",
        ),
    ),
    (
        "runs",
        (
            (
                "CREATE TABLE runs (\n"
                "\tid INTEGER NOT NULL, \n"
                "\thost VARCHAR(255) NOT NULL, \n"
                "\trepository_url VARCHAR(2048) NOT NULL, \n"
                "\tstarted DATETIME NOT NULL, \n"
                "\tfinished DATETIME, \n"
                "\tstatus VARCHAR(16) NOT NULL, \n"
                "\tsnapshot_id VARCHAR(255), \n"
                "\terror TEXT, \n"
                "\tPRIMARY KEY (id), \n"
                "\tCONSTRAINT ck_runs_status CHECK "
                "(status IN ('running', 'success', 'failed', 'partial'))\n"
                ")"
            ),
            "CREATE INDEX ix_runs_host_started ON runs (host, started)",
        ),
    ),
    (
        "snapshots",
        (
            (
                "CREATE TABLE snapshots (\n"
                "\tid INTEGER NOT NULL, \n"
                "\trepository_url VARCHAR(2048) NOT NULL, \n"
                "\thost VARCHAR(255) NOT NULL, \n"
                "\tsnapshot_id VARCHAR(255) NOT NULL, \n"
                "\tstarted DATETIME NOT NULL, \n"
                "\tfinished DATETIME NOT NULL, \n"
                "\tstatus VARCHAR(32) NOT NULL, \n"
                "\tstored_bytes BIGINT NOT NULL, \n"
                "\tplain_bytes BIGINT NOT NULL, \n"
                "\tdrkit_version VARCHAR(64) NOT NULL, \n"
                "\tpolicy_sha256 VARCHAR(64) NOT NULL, \n"
                "\tsynced DATETIME NOT NULL, \n"
                "\tPRIMARY KEY (id), \n"
                "\tCONSTRAINT uq_snapshots_key UNIQUE (repository_url, host, snapshot_id)\n"
                ")"
            ),
            "CREATE INDEX ix_snapshots_host_started ON snapshots (host, started)",
        ),
    ),
    (
        "artifacts",
        (
            (
                "CREATE TABLE artifacts (\n"
                "\tid INTEGER NOT NULL, \n"
                "\tsnapshot_pk INTEGER NOT NULL, \n"
                "\tsource VARCHAR(255) NOT NULL, \n"
                "\tkind VARCHAR(64) NOT NULL, \n"
                "\tname VARCHAR(1024) NOT NULL, \n"
                '\t"key" VARCHAR(2048) NOT NULL, \n'
                "\tformat VARCHAR(64) NOT NULL, \n"
                "\tplain_size BIGINT NOT NULL, \n"
                "\tplain_sha256 VARCHAR(64) NOT NULL, \n"
                "\tstored_size BIGINT NOT NULL, \n"
                "\tstored_sha256 VARCHAR(64) NOT NULL, \n"
                "\tPRIMARY KEY (id), \n"
                "\tFOREIGN KEY(snapshot_pk) REFERENCES snapshots (id) ON DELETE CASCADE\n"
                ")"
            ),
            "CREATE INDEX ix_artifacts_snapshot_pk ON artifacts (snapshot_pk)",
        ),
    ),
)

MEMORY: Final = ":memory:"

_SQLITE_URL = re.compile(r"sqlite(?:\+pysqlite)?://(?:/(?P<database>.*))?")


def database_of(url: str) -> Path | str:
    """The file of ``sqlite:///PATH`` (percent-escapes decoded), or ``MEMORY`` for
    ``sqlite://`` and ``sqlite:///:memory:``.

    Raises UsageError for any other URL (naming only its scheme: a URL may hold a
    password) and for query options or ``file:`` URIs, which drkit does not read.
    """
    match = _SQLITE_URL.fullmatch(url)
    if match is None:
        scheme = url.partition(":")[0] if "://" in url else ""
        shown = f" ({scheme}://...)" if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) else ""
        raise UsageError(
            f"catalog: not a SQLite URL{shown}: the catalog is a local SQLite file, "
            "sqlite:///PATH (drkit catalog sync rebuilds it from the repository)"
        )
    database = match.group("database")
    if not database or database == MEMORY:
        return MEMORY
    if "?" in database or database.startswith("file:"):
        raise UsageError(f"catalog {url}: query options and file: URIs are not supported")
    return Path(unquote(database))


def db_time(value: dt.datetime) -> str:
    """``value`` as the catalog stores a DATETIME: naive UTC with microseconds."""
    return to_utc(value).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def from_db_time(value: str) -> dt.datetime:
    """A stored DATETIME (naive UTC) as an aware UTC datetime."""
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create every missing table and its indexes; takes the write lock only if one is."""

    def missing() -> list[tuple[str, tuple[str, ...]]]:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        have = {name for (name,) in rows}
        return [entry for entry in SCHEMA if entry[0] not in have]

    if not missing():
        return  # the usual case: no write lock taken
    conn.execute("BEGIN IMMEDIATE")
    try:
        for _table, statements in missing():  # again, under the lock
            for statement in statements:
                conn.execute(statement)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
