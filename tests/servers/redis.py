"""A real redis-server for tests: a config file in a temp dir, a free port on loopback.

The server daemonizes and writes a pidfile, so a restore can stop it (SHUTDOWN
NOSAVE) and start it again with the same ``start_command`` a policy names; the
fixture stops whatever PID the pidfile names at the end (never by name).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.ports import free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


@dataclass
class RedisServer:
    port: int
    base: Path
    password: str | None

    @property
    def conf(self) -> Path:
        return self.base / "redis.conf"

    @property
    def start_command(self) -> list[str]:
        return [str(REDIS_SERVER), str(self.conf)]

    def cli(self, *args: str, db: int = 0) -> str:
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password
        res = subprocess.run(
            [str(REDIS_CLI), "-p", str(self.port), "-n", str(db), "--raw", *args],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return res.stdout.strip()

    def pid(self) -> int | None:
        with suppress(OSError, ValueError):
            return int((self.base / "redis.pid").read_text().strip())
        return None

    def stop(self) -> None:
        """SHUTDOWN (saving, as a service manager's stop does), wait for the PID to go."""
        pid = self.pid()
        self.cli("SHUTDOWN")
        deadline = time.monotonic() + 20
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

    def start(self) -> None:
        subprocess.run(self.start_command, check=True, capture_output=True)
        deadline = time.monotonic() + 20
        while True:
            with suppress(subprocess.CalledProcessError):
                if self.cli("PING") == "PONG":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError((self.base / "redis.log").read_text()[-2000:])
            time.sleep(0.1)


def require_redis() -> None:
    if not (REDIS_SERVER and REDIS_CLI):
        if os.environ.get("CI"):
            pytest.fail("CI must run the Redis tests: install redis-server (apt)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


@contextmanager
def redis_server(password: str | None = None, *, appendonly: bool = False) -> Iterator[RedisServer]:
    require_redis()
    base = Path(tempfile.mkdtemp(prefix="drkit-redis-"))
    server = RedisServer(free_port(), base, password)
    lines = [
        f"port {server.port}",
        "bind 127.0.0.1",
        f"dir {base}",
        "dbfilename dump.rdb",
        "daemonize yes",
        f"pidfile {base / 'redis.pid'}",
        f"logfile {base / 'redis.log'}",
        'save ""',
        f"appendonly {'yes' if appendonly else 'no'}",
    ]
    if password:
        lines.append(f"requirepass {password}")
    server.conf.write_text("\n".join(lines) + "\n")
    server.conf.chmod(0o600)
    try:
        server.start()
        yield server
    finally:
        pid = server.pid()
        if pid:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        shutil.rmtree(base, ignore_errors=True)
