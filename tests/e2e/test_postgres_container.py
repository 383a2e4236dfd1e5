"""``postgres`` with ``container = "..."``: pg_dump and pg_restore through ``docker exec``,
as on a host whose database runs in Docker (seed 002's supabase-db).

The server is the PostgreSQL 15 of the e2i-droplet drill image (built once by
drkit.drills.images, then found by its hash), started with only PostgreSQL. The
policy reaches it the way a Dockerised PostgreSQL is usually reached: as
``postgres`` over 127.0.0.1 inside the container, with a password passed as
``docker exec -e PGPASSWORD`` (never in an argv). Off CI the test skips when no
engine can be started; in CI that is a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import DATA, drkit, schema_dump, table_checksums, write_policy

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


class ContainerPg:
    """The subset of tests.servers.postgres.PgServer the helpers use, via ``docker exec``
    as the container's ``postgres`` user (peer authentication on the local socket)."""

    def __init__(self, container: str) -> None:
        self.container = container

    def _exec(self, argv: list[str], sql: str | None = None, check: bool = True) -> str:
        res = subprocess.run(
            ["docker", "exec", "-i", "-u", "postgres", self.container, *argv],
            input=sql,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"{argv[0]} in {self.container}: {res.stderr}")
        return res.stdout

    def psql(self, database: str, sql: str, *, check: bool = True) -> str:
        argv = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", database]
        return self._exec(argv, sql, check)

    def tool(self, name: str, *args: str) -> str:
        return self._exec([name, *args])

    def load(self, database: str, owner: str) -> None:
        self.psql(
            "postgres", f"CREATE ROLE {owner} LOGIN; CREATE DATABASE {database} OWNER {owner};"
        )
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"owner={owner}", "-d", database]
        self._exec(argv, (DATA / "callmeback.sql").read_text())


@pytest.fixture(scope="module")
def pg_container() -> Iterator[ContainerPg]:
    from drkit.drills.engine import DockerError, docker, ensure_engine, stop_engine
    from drkit.drills.images import ensure_host_image

    try:
        running = ensure_engine()
        image = ensure_host_image("e2i-droplet").tag
    except DockerError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Docker tests, but: {exc}")
        pytest.skip(f"no Docker engine or e2i-droplet image here: {exc}")
    name = f"drkit-test-pg-{secrets.token_hex(4)}"
    try:
        docker(
            "run",
            "--detach",
            "--init",
            "--name",
            name,
            "--env",
            "DRKIT_SERVICES=postgresql",
            image,
            timeout=600,
        )
        deadline = time.monotonic() + 300
        while docker("exec", name, "test", "-e", "/run/drkit/ready", check=False).returncode:
            status = docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if status != b"running" or time.monotonic() > deadline:
                logs = docker("logs", name, check=False)
                pytest.fail(f"container {name} not ready ({status!r}): {logs.stdout!r}")
            time.sleep(0.3)
        yield ContainerPg(name)
    finally:
        docker("rm", "--force", name, check=False)
        stop_engine(running)


def test_backup_drop_restore_through_docker_exec(
    pg_container: ContainerPg, keys: Any, tmp_path: Path
) -> None:
    pg = pg_container
    suffix = secrets.token_hex(3)
    db, owner, password = f"callmeback_{suffix}", f"cmb_app_{suffix}", secrets.token_hex(12)
    pg.psql("postgres", f"ALTER ROLE postgres PASSWORD '{password}';")
    pg.load(db, owner)
    policy = write_policy(
        tmp_path / "e2i.toml",
        "e2i-droplet",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [
            {
                "kind": "postgres",
                "name": "supabase-db",
                "container": pg.container,
                "database": db,
                "host": "127.0.0.1",
                "user": "postgres",
                "password": "env:DRKIT_TEST_PGPW",
            }
        ],
    )
    env = {"DRKIT_TEST_PGPW": password}
    schema_before = schema_dump(pg, db)  # type: ignore[arg-type]
    sums_before = table_checksums(pg, db)  # type: ignore[arg-type]
    assert int(sums_before["public.calls"].split(":")[0]) > 0

    res = drkit("backup", "--policy", str(policy), "--json", env=env, check=True)
    assert json.loads(res.stdout)["results"][0]["status"] == "success"
    assert password not in res.output

    pg.psql("postgres", f"DROP DATABASE {db} WITH (FORCE); DROP ROLE {owner};")
    assert pg.psql("postgres", f"SELECT count(*) FROM pg_roles WHERE rolname = '{owner}';") == "0\n"
    res = drkit(
        "--json",
        "restore",
        "--policy",
        str(policy),
        "--yes",
        "--identity",
        str(keys.identity_file),
        env=env,
        check=True,
    )
    out = json.loads(res.stdout)
    assert out["verdict"] == "pass", out
    assert password not in res.output

    assert table_checksums(pg, db) == sums_before  # type: ignore[arg-type]
    assert schema_dump(pg, db) == schema_before  # type: ignore[arg-type]
    assert (
        pg.psql(
            "postgres", f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}';"
        ).strip()
        == owner
    )

    # A second restore meets the live database and refuses rather than overwrite it.
    again = drkit(
        "restore", "--policy", str(policy), "--yes", "--identity", str(keys.identity_file), env=env
    )
    assert again.returncode != 0 and db in again.stderr
