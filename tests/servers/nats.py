"""A real nats-server with JetStream for tests: a temp store dir, a free port, stopped by PID.

``nats-server -js -sd DIR -a 127.0.0.1 -p PORT`` (Debian's nats-server 2.9).
Optional token auth (``--auth``) for the credential tests. The server can be
stopped and started again on the same store dir and port (stop-copy tests).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.servers.ports import free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
STARTUP_TIMEOUT = 20.0


@dataclass
class NatsServer:
    base: Path
    port: int
    token: str | None = None
    config: str = ""  # extra nats-server configuration text (e.g. max_pending)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.base / "store"

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers PING."""
        argv = [NATS_SERVER, "-js", "-sd", str(self.store_dir), "-a", "127.0.0.1"]
        argv += ["-p", str(self.port)]
        if self.token:
            argv += ["--auth", self.token]
        if self.config:
            conf = self.base / "server.conf"
            conf.write_text(self.config)
            argv += ["-c", str(conf)]
        self._log = open(self.log_file, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(self.log_file.read_text()[-2000:])
            time.sleep(0.05)

    def _ready(self) -> bool:
        """The server sent INFO and JetStream is up (its store dir exists)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                ok = s.recv(4096).startswith(b"INFO ")
        except OSError:
            return False
        return ok and (self.store_dir / "jetstream").is_dir()

    def stop(self) -> None:
        """Terminate by PID, wait, kill if it does not exit."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@contextmanager
def nats_server(token: str | None = None, config: str = "") -> Iterator[NatsServer]:
    base = Path(tempfile.mkdtemp(prefix="drkit-nats-"))
    server = NatsServer(base, free_port(), token, config)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
