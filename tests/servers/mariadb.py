"""A real MariaDB server for tests: a temp datadir, a free port on loopback, its own socket.

Runs as the current user (``--user=root`` when that is root: mariadbd refuses
root otherwise); root's password is set at start and the server stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.ports import free_port

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db")
CLIENT = shutil.which("mariadb") or shutil.which("mysql")


@dataclass
class MariaDbServer:
    port: int
    socket: Path
    password: str

    def sql(self, statements: str, *, database: str | None = None) -> str:
        argv = [str(CLIENT), "-N", "-B", "--default-character-set=utf8mb4", "-uroot", "-h127.0.0.1"]
        argv.append(f"-P{self.port}")
        if database:
            argv.append(database)
        res = subprocess.run(
            argv,
            input=statements,
            capture_output=True,
            text=True,
            env={**os.environ, "MYSQL_PWD": self.password},
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"mariadb failed: {res.stderr}")
        return res.stdout.strip()


def require_mariadb() -> None:
    if not (INSTALL_DB and CLIENT and Path(MARIADBD).exists()):
        if os.environ.get("CI"):
            pytest.fail("CI must run the MariaDB tests: install mariadb-server (apt)")
        pytest.skip("mariadb-server is not installed (apt-get install mariadb-server)")


@contextmanager
def mariadb_server(password: str) -> Iterator[MariaDbServer]:
    require_mariadb()
    base = Path(tempfile.mkdtemp(prefix="drkit-mariadb-"))
    data, sock = base / "data", base / "mysqld.sock"
    user = ["--user=root"] if os.getuid() == 0 else []
    subprocess.run(
        [
            str(INSTALL_DB),
            "--no-defaults",
            f"--datadir={data}",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
            *user,
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = open(base / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            MARIADBD,
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={sock}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={base / 'mysqld.pid'}",
            "--innodb-buffer-pool-size=32M",
            "--skip-log-bin",
            *user,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            res = subprocess.run(
                [
                    str(CLIENT),
                    "-uroot",
                    f"--socket={sock}",
                    "-e",
                    f"ALTER USER root@localhost IDENTIFIED BY '{password}'; "
                    f"CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY '{password}'; "
                    "GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION",
                ],
                capture_output=True,
                check=False,
            )
            if res.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((base / "server.log").read_text()[-2000:])
            time.sleep(0.2)
        yield MariaDbServer(port, sock, password)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)
