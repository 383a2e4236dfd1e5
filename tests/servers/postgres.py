"""A real PostgreSQL 15 server for tests: initdb in a temp dir, a free port, stopped by PID."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from tests.servers.ports import free_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


class _Demote(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]


def _demote_kwargs() -> _Demote:
    """initdb and postgres refuse root: run them as the postgres user when we are root."""
    if os.getuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


@dataclass
class PgServer:
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"

    def psql(self, database: str, sql: str, *, check: bool = True) -> str:
        res = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
            ],
            input=sql,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"psql failed: {res.stderr}")
        return res.stdout

    def tool(self, name: str, *args: str) -> str:
        res = subprocess.run(
            [str(PG_BIN / name), "-h", self.host, "-p", str(self.port), "-U", self.user, *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return res.stdout


@contextmanager
def postgres_server() -> Iterator[PgServer]:
    base = Path(tempfile.mkdtemp(prefix="drkit-pg-"))
    kwargs = _demote_kwargs()
    if kwargs:
        os.chown(base, kwargs["user"], kwargs["group"])
    data = base / "data"
    subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        **kwargs,
    )
    port = free_port()
    log = open(base / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(base),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=50",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        **kwargs,
    )
    server = PgServer(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((base / "server.log").read_text()[-2000:])
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)
