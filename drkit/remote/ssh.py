"""Run commands on a remote host over SSH (asyncssh) behind the synchronous Runner.

Each SshRunner owns one private asyncio event loop in a daemon thread and one
SSH connection (plus one to the jump host, if any), reused by every command
for that host. Sources call the synchronous ``Process`` (ssh_process.py) from
their own threads: stdout is handed over through a bounded buffer, other calls
hop onto the loop with ``run_coroutine_threadsafe``/``call_soon_threadsafe``.
Command lines and env passing are in ssh_command.py; host keys are checked
against known_hosts (ssh_hostkeys.py) and an unknown or changed key is refused
with its SHA256 fingerprint (see ``docs/ssh.md``).
"""

from __future__ import annotations

import asyncio
import atexit
import re
import shlex
import threading
import weakref
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from pathlib import Path

import asyncssh

from drkit.errors import SourceError, UsageError
from drkit.policy.models import Connection
from drkit.remote.base import Process, Runner
from drkit.remote.loop_thread import LoopStopped, LoopThread
from drkit.remote.ssh_command import env_preamble, remote_command
from drkit.remote.ssh_hostkeys import HostKeyCheck, HostKeyClient, SshAdvice
from drkit.remote.ssh_process import PACKET, WINDOW, SshProcess, SshSession, why

CONNECT_TIMEOUT = 20.0  # TCP connect + key exchange + authentication
KEEPALIVE_INTERVAL = 15.0  # a dead peer is noticed after INTERVAL * COUNT_MAX seconds
KEEPALIVE_COUNT_MAX = 4
# AES-GCM first: AES-NI makes it several times cheaper than chacha20 in Python's
# crypto backend, and it is as strong. The rest is asyncssh's own default order.
ENCRYPTION = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
]


def parse_jump(jump: str, default_user: str) -> tuple[str, str, int]:
    """``user@host[:port]`` (or ``[v6addr]:port``) -> (user, host, port)."""
    user, _, hostport = jump.rpartition("@")
    m = re.match(r"^\[(?P<h>[^]]+)\](?::(?P<p>\d+))?$|^(?P<h2>[^:]+)(?::(?P<p2>\d+))?$", hostport)
    if not m:
        raise UsageError(f"connection.jump {jump!r}: expected user@host[:port]")
    host = m.group("h") or m.group("h2")
    port = int(m.group("p") or m.group("p2") or 22)
    return user or default_user, host, port


class SshRunner(Runner):
    """Runs commands on ``connection.address`` over one reused SSH connection.

    ``advice``: how the command in use trusts a host key (named when one is refused).
    """

    def __init__(self, host: str, connection: Connection, advice: SshAdvice | None = None) -> None:
        if not connection.address:
            raise UsageError(f"host {host}: [connection] type ssh needs an address")
        self.host = host
        self.config = connection
        self.advice = advice or SshAdvice()
        self.target = f"{connection.user}@{connection.address}:{connection.port}"
        self._loop: LoopThread | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._jump: asyncssh.SSHClientConnection | None = None
        self._lock = threading.Lock()
        # Actions do not close their runners: close at exit so the loop stops cleanly.
        ref = weakref.ref(self)

        def close_at_exit() -> None:
            runner = ref()
            if runner is not None:
                runner.close()

        self._atexit = close_at_exit
        atexit.register(close_at_exit)

    @property
    def known_hosts(self) -> Path:
        return Path(self.config.known_hosts or "~/.ssh/known_hosts").expanduser()

    def start(
        self,
        argv: list[str],
        *,
        stdin: bool = False,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> Process:
        sudo_user = user if user is not None and user != self.config.user else None
        preamble = env_preamble(env or {})
        command = remote_command(argv, sudo_user)
        conn = self._connection()
        loop = self._running_loop()
        try:
            session = loop.call(self._open_session(conn, command, preamble, stdin), CONNECT_TIMEOUT)
        except (asyncssh.Error, OSError, FutureTimeout, LoopStopped) as exc:
            raise SourceError(
                f"host {self.host}: cannot start `{shlex.join(argv)}` over ssh {self.target}: "
                f"{why(exc, CONNECT_TIMEOUT)}"
            ) from None
        return SshProcess(self, loop, conn, session, argv, stdin=stdin, sudo_user=sudo_user)

    async def _open_session(
        self, conn: asyncssh.SSHClientConnection, command: str, preamble: bytes, stdin: bool
    ) -> SshSession:
        chan, session = await conn.create_session(
            SshSession, command, encoding=None, request_pty=False, window=WINDOW, max_pktsize=PACKET
        )
        assert isinstance(session, SshSession)
        chan.write(preamble)
        if not stdin:
            chan.write_eof()
        return session

    def _running_loop(self) -> LoopThread:
        if self._loop is None:
            self._loop = LoopThread(f"drkit-ssh-{self.host}")
        return self._loop

    def _connection(self) -> asyncssh.SSHClientConnection:
        with self._lock:
            if self._conn is None or self._conn.is_closed():
                loop = self._running_loop()
                try:
                    # asyncssh enforces CONNECT_TIMEOUT per hop; this bound is a backstop.
                    self._conn = loop.call(self._connect(), timeout=3 * CONNECT_TIMEOUT)
                except FutureTimeout:
                    raise SourceError(
                        f"host {self.host}: ssh {self.target}: cannot connect: timed out"
                    ) from None
                except LoopStopped as exc:
                    raise SourceError(f"host {self.host}: ssh {self.target}: {exc}") from None
            return self._conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        cfg = self.config
        assert cfg.address is not None
        tunnel = None
        if cfg.jump:
            juser, jhost, jport = parse_jump(cfg.jump, cfg.user)
            if self._jump is None or self._jump.is_closed():
                self._jump = await self._open(jhost, jport, juser, None, f"jump host {cfg.jump}")
            tunnel = self._jump
        return await self._open(cfg.address, cfg.port, cfg.user, tunnel, f"ssh {self.target}")

    async def _open(
        self,
        address: str,
        port: int,
        user: str,
        tunnel: asyncssh.SSHClientConnection | None,
        what: str,
    ) -> asyncssh.SSHClientConnection:
        label = f"host {self.host}: {what}"
        check = HostKeyCheck(self.known_hosts, self.config.accept_new_host_key, label, self.advice)
        keys: list[str] | tuple[()] = ()
        if self.config.identity_file:
            identity = Path(self.config.identity_file).expanduser()
            if not identity.is_file():
                raise SourceError(f"{label}: identity_file {identity} does not exist")
            keys = [str(identity)]
        try:
            conn = await asyncssh.connect(
                address,
                port,
                tunnel=tunnel,
                username=user,
                client_factory=lambda: HostKeyClient(check),
                known_hosts=check.match,
                client_keys=keys,  # () = ~/.ssh/id_*; ssh-agent is used as well when present
                config=[],  # the policy is the whole truth, not ~/.ssh/config
                encryption_algs=ENCRYPTION,
                compression_algs=["none"],
                connect_timeout=CONNECT_TIMEOUT,
                keepalive_interval=KEEPALIVE_INTERVAL,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                preferred_auth=["publickey"],
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise SourceError(check.problem or f"{label}: host key refused: {exc}") from None
        except asyncssh.PermissionDenied:
            which = self.config.identity_file or "the default keys or ssh-agent"
            raise SourceError(
                f"{label}: login as {user} refused (key: {which}; another: {self.advice.identity})"
            ) from None
        except asyncssh.KeyImportError as exc:
            raise SourceError(
                f"{label}: cannot load identity_file {self.config.identity_file}: {exc} "
                f"(a passphrase-protected key must be loaded into ssh-agent instead)"
            ) from None
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            raise SourceError(
                f"{label}: cannot connect: {why(exc, CONNECT_TIMEOUT)}{check.lost_hint(exc)}"
            ) from None
        return conn

    def close(self) -> None:
        """Close the connections and stop the loop thread (idempotent)."""
        loop, self._loop = self._loop, None
        atexit.unregister(self._atexit)
        if loop is None:
            return

        async def shut() -> None:
            for conn in (self._conn, self._jump):
                if conn is not None:
                    conn.close()
                    with suppress(Exception):
                        await asyncio.wait_for(conn.wait_closed(), 5)

        with suppress(Exception):
            loop.call(shut(), timeout=10)
        self._conn = self._jump = None
        loop.stop()
