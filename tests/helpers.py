"""Test helpers: run the real CLI, write policies, load sample data, compare databases."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drkit.repository.trust import Trust
from drkit.signing import Signers, SigningKey
from tests.servers.postgres import PG_BIN, PgServer

DATA = Path(__file__).parent / "data"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def drkit(*args: str, env: dict[str, str] | None = None, check: bool = False) -> CliResult:
    """Run the real command line in a subprocess, as cron or a person would."""
    full = dict(os.environ)
    if env:
        full.update(env)
    res = subprocess.run(
        [sys.executable, "-m", "drkit", *args],
        capture_output=True,
        text=True,
        env=full,
        check=False,
        timeout=600,
    )
    out = CliResult(res.returncode, res.stdout, res.stderr)
    if check and res.returncode != 0:
        raise AssertionError(f"drkit {' '.join(args)} -> {res.returncode}\n{out.output}")
    return out


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def local_signer() -> str:
    """The public half of this machine's signing key (the test's own, see conftest)."""
    return SigningKey.load().public


class _EveryHost(dict[str, Signers]):
    def __init__(self, signers: Signers) -> None:
        super().__init__()
        self.signers = signers

    def get(self, key: str, default: Any = None) -> Signers:
        return self.signers


def ensure_signing_key(config_dir: Path) -> str:
    """The public half of the signing key in ``config_dir`` (made if missing): for
    scripts whose drkit runs with another ``$DRKIT_CONFIG_DIR`` (bench, demo)."""
    path = config_dir / "signing.key"
    key = SigningKey.load(path) if path.exists() else SigningKey.create(path)
    return key.public


def signed_drill_report(report: dict[str, Any]) -> str:
    """``report`` signed by this machine's key, as `drkit drill` stores it."""
    return json.dumps(SigningKey.load().sign("drill-report", report))


def signed_manifest(document: dict[str, Any]) -> str:
    """A manifest document signed by this machine's key, as a backup stores it."""
    return json.dumps(SigningKey.load().sign("manifest", document))


def trust_for(*hosts: str, signing: bool = True) -> Trust:
    """Trust in this machine's key for ``hosts`` (none named: every host), with the key
    to sign (for tests that drive a Repository directly rather than through a policy)."""
    signers = Signers([local_signer()])
    key = SigningKey.load() if signing else None
    if not hosts:
        return Trust(_EveryHost(signers), _EveryHost(signers), signing_key=key)
    return Trust({h: signers for h in hosts}, {h: signers for h in hosts}, signing_key=key)


def write_policy(
    path: Path,
    host: str,
    repo: dict[str, Any],
    recipients: list[str],
    sources: list[dict[str, Any]],
    extra: str = "",
    signers: list[str] | None = None,
    discover: bool = False,
) -> Path:
    """A policy file. ``discover`` (the backup-time coverage check, #18) is off unless
    asked for: these tests' "host" is this machine, whose containers and files other
    tests come and go in; the shipped-policy scenarios and tests/e2e/
    test_backup_coverage.py run it on hosts whose contents they know."""
    own = [] if re.search(r"^discover\s*=", extra, re.M) else [f"discover = {toml_value(discover)}"]
    lines = [f'host = "{host}"', *own, extra, "[repository]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in repo.items()]
    lines += ["[encryption]", f"recipients = {toml_value(recipients)}"]
    lines += [f"signers = {toml_value(signers if signers is not None else [local_signer()])}"]
    for src in sources:
        lines.append("[[source]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in src.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def load_callmeback(pg: PgServer, database: str, owner: str, password: str) -> None:
    pg.psql("postgres", f"CREATE ROLE {owner} LOGIN PASSWORD '{password}';")
    pg.psql("postgres", f"CREATE DATABASE {database} OWNER {owner};")
    subprocess.run(
        [
            str(PG_BIN / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"owner={owner}",
            "-h",
            pg.host,
            "-p",
            str(pg.port),
            "-U",
            pg.user,
            "-d",
            database,
            "-f",
            str(DATA / "callmeback.sql"),
        ],
        check=True,
        capture_output=True,
    )


def schema_dump(pg: PgServer, database: str) -> str:
    """The schema as pg_dump prints it, less the per-run random \\restrict key lines."""
    out = pg.tool("pg_dump", "--schema-only", "--no-comments", "-d", database)
    return "".join(
        ln for ln in out.splitlines(True) if not ln.startswith(("\\restrict", "\\unrestrict"))
    )


def table_checksums(pg: PgServer, database: str) -> dict[str, str]:
    """md5 of every table's full content in a stable order, plus row counts."""
    tables = pg.psql(
        database,
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog','information_schema') ORDER BY 1;",
    ).split()
    out = {}
    for t in tables:
        out[t] = pg.psql(
            database,
            "SELECT count(*) || ':' || "
            f"coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x;",
        ).strip()
    out["sequence"] = pg.psql(database, "SELECT last_value FROM call_number_seq;").strip()
    return out


def role_exists(pg: PgServer, role: str) -> bool:
    return (
        pg.psql("postgres", f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}';").strip()
        == "1"
    )
