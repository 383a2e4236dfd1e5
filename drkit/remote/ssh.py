"""Run commands on a remote host over SSH (asyncssh) behind the synchronous Runner.

Each SshRunner owns one private asyncio event loop in a daemon thread and one
SSH connection (plus one to the jump host, if any), reused by every command
for that host. Sources call the synchronous ``Process`` from their own
threads: stdout is handed over through a bounded buffer, other calls hop onto
the loop with ``run_coroutine_threadsafe``/``call_soon_threadsafe``.

- stdout has backpressure: the channel is paused while ``LIMIT`` bytes wait
  to be read, so the server stops sending and memory stays flat (~5 MiB per
  command) however slow the pipeline is.
- A connection lost mid-stream makes ``read`` raise SourceError, never a
  clean EOF; at EOF, ``read`` also waits for the exit status, so a command
  whose status never arrived (connection dropped) fails too.
- ``env`` never reaches the command line: it is sent as the first lines of
  stdin to a small ``sh`` wrapper that exports them and execs the command.
- Host keys are checked against known_hosts; an unknown or changed key is
  refused with its SHA256 fingerprint (see ``docs/ssh.md``).
"""

from __future__ import annotations

import asyncio
import atexit
import io
import os
import re
import shlex
import signal
import subprocess
import threading
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import asyncssh

from drkit.errors import SourceError, UsageError
from drkit.policy.models import Connection
from drkit.remote.base import Process, Runner, TailBuffer

T = TypeVar("T")

CONNECT_TIMEOUT = 20.0  # TCP connect + key exchange + authentication
KEEPALIVE_INTERVAL = 15.0  # a dead peer is noticed after INTERVAL * COUNT_MAX seconds
KEEPALIVE_COUNT_MAX = 4
WINDOW = 2 << 20  # SSH channel window: what the server may send ahead of our reads
LIMIT = 2 << 20  # stdout buffered before the channel is paused
SEND_BUFFER = 1 << 20  # stdin queued for the server before a write waits
KILL_WAIT = 5.0
PACKET = 32 << 10
BUFFER = 256 << 10  # client-side buffered reader/writer, as for local pipes
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
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Every command runs under this wrapper. It reports its PID on stderr (so kill()
# can reach the command: sshd ignores signal requests on root logins), reads
# NAME='value' lines from stdin up to an empty line and exports them, then execs
# the command with the rest of stdin. `read` takes one byte at a time from a
# pipe, so nothing past the empty line is consumed. Values are single-quoted; a
# newline inside one is written as '"$nl"'.
WRAPPER = (
    "echo \"drkit-pid $$\" >&2; nl='\n'; "
    'while IFS= read -r l && [ -n "$l" ]; do eval "export $l" || exit 125; done; '
    'exec "$@"'
)
_PID_LINE = re.compile(rb"(?m)^drkit-pid (\d+)\n")
# Kills the command's process group (sshd makes the login shell, which execs the
# wrapper, a session leader), else the process alone (under sudo it may not lead).
KILL_SCRIPT = 'kill -s KILL -- "-$1" 2>/dev/null || kill -s KILL -- "$1"'


class _Loop:
    """A private event loop running in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (TimeoutError after ``timeout``)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


def env_preamble(env: dict[str, str]) -> bytes:
    """The stdin lines ``WRAPPER`` reads: one ``NAME='value'`` per variable, then ``\\n``."""
    lines = []
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise UsageError(f"environment variable name {name!r} is not valid")
        if "\0" in value:
            raise UsageError(f"environment variable {name} holds a NUL byte")
        quoted = value.replace("'", "'\\''").replace("\n", "'\"$nl\"'")
        lines.append(f"{name}='{quoted}'\n")
    return ("".join(lines) + "\n").encode()


def remote_command(argv: list[str], sudo_user: str | None, wrap: bool = True) -> str:
    """The command line the login shell runs: argv under ``WRAPPER`` and sudo, quoted."""
    inner = ["sh", "-c", WRAPPER, "drkit", *argv] if wrap else list(argv)
    if sudo_user:
        # -n: a sudo that needs a password fails at once instead of waiting for one.
        inner = ["sudo", "-n", "-u", sudo_user, "--", *inner]
    # exec: the login shell becomes the command, so it leads the session's process group.
    return "exec " + shlex.join(inner)


def parse_jump(jump: str, default_user: str) -> tuple[str, str, int]:
    """``user@host[:port]`` (or ``[v6addr]:port``) -> (user, host, port)."""
    user, _, hostport = jump.rpartition("@")
    m = re.match(r"^\[(?P<h>[^]]+)\](?::(?P<p>\d+))?$|^(?P<h2>[^:]+)(?::(?P<p2>\d+))?$", hostport)
    if not m:
        raise UsageError(f"connection.jump {jump!r}: expected user@host[:port]")
    host = m.group("h") or m.group("h2")
    port = int(m.group("p") or m.group("p2") or 22)
    return user or default_user, host, port


class HostKeyCheck:
    """Verifies a server's host key against a known_hosts file (OpenSSH format).

    Passed to asyncssh as its ``known_hosts`` matcher and consulted through
    ``validate_host_public_key`` when the key presented is not trusted.
    ``problem`` then holds the refusal message (asyncssh's own is generic).
    """

    def __init__(self, path: Path, accept_new: bool, label: str) -> None:
        self.path = path
        self.accept_new = accept_new
        self.label = label
        self.known_for_host = False
        self.problem: str | None = None

    def match(self, host: str, addr: str, port: int | None) -> Any:
        text = self.path.read_text() if self.path.is_file() else ""
        result = asyncssh.import_known_hosts(text).match(host, addr, port)
        self.known_for_host = bool(result[0] or result[1])
        return result

    def validate(self, host: str, port: int, key: asyncssh.SSHKey) -> bool:
        fp = key.get_fingerprint("sha256")
        pattern = host if port == 22 else f"[{host}]:{port}"
        if self.known_for_host:
            self.problem = (
                f"{self.label}: REFUSED: the host key has CHANGED: the server presents "
                f"{key.algorithm.decode()} {fp}, which is not the key {self.path} holds for "
                f"{pattern}. This can mean an attack. If the host was really reinstalled, "
                f"check the new fingerprint on the host (ssh-keygen -lf "
                f"/etc/ssh/ssh_host_ed25519_key.pub), remove the old entry "
                f"(ssh-keygen -R '{pattern}' -f {self.path}) and accept the new one "
                f"(accept_new_host_key = true in [connection])"
            )
            return False
        if not self.accept_new:
            self.problem = (
                f"{self.label}: REFUSED: unknown host key {key.algorithm.decode()} {fp} "
                f"({pattern} is not in {self.path}). Check the fingerprint on the host "
                f"(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then add the key to "
                f"{self.path} or set accept_new_host_key = true in [connection] to trust it "
                f"once and record it"
            )
            return False
        self._append(
            f"{pattern} " + " ".join(key.export_public_key("openssh").decode().split()[:2])
        )
        return True

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            if fh.tell() > 0 and not self.path.read_bytes().endswith(b"\n"):
                fh.write("\n")
            fh.write(line + "\n")


class _Client(asyncssh.SSHClient):
    def __init__(self, check: HostKeyCheck) -> None:
        self._check = check

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return self._check.validate(host, port, key)


class SshRunner(Runner):
    """Runs commands on ``connection.address`` over one reused SSH connection."""

    def __init__(self, host: str, connection: Connection) -> None:
        if not connection.address:
            raise UsageError(f"host {host}: [connection] type ssh needs an address")
        self.host = host
        self.config = connection
        self.target = f"{connection.user}@{connection.address}:{connection.port}"
        self._loop: _Loop | None = None
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
        except (asyncssh.Error, OSError, FutureTimeout) as exc:
            raise SourceError(
                f"host {self.host}: cannot start `{shlex.join(argv)}` over ssh {self.target}: "
                f"{_why(exc)}"
            ) from None
        return SshProcess(self, loop, conn, session, argv, stdin=stdin, sudo_user=sudo_user)

    async def _open_session(
        self, conn: asyncssh.SSHClientConnection, command: str, preamble: bytes, stdin: bool
    ) -> _Session:
        chan, session = await conn.create_session(
            _Session, command, encoding=None, request_pty=False, window=WINDOW, max_pktsize=PACKET
        )
        assert isinstance(session, _Session)
        chan.write(preamble)
        if not stdin:
            chan.write_eof()
        return session

    def _running_loop(self) -> _Loop:
        if self._loop is None:
            self._loop = _Loop(f"drkit-ssh-{self.host}")
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
        check = HostKeyCheck(self.known_hosts, self.config.accept_new_host_key, label)
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
                client_factory=lambda: _Client(check),
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
            raise SourceError(f"{label}: login as {user} refused (key: {which})") from None
        except asyncssh.KeyImportError as exc:
            raise SourceError(
                f"{label}: cannot load identity_file {self.config.identity_file}: {exc} "
                f"(a passphrase-protected key must be loaded into ssh-agent instead)"
            ) from None
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            raise SourceError(f"{label}: cannot connect: {_why(exc)}") from None
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


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):  # asyncio's and concurrent.futures' alike
        return f"timed out after {CONNECT_TIMEOUT:.0f}s"
    return str(exc) or type(exc).__name__


class _Session(asyncssh.SSHClientSession[bytes]):
    """Channel callbacks (loop thread) feeding a bounded buffer read by a worker thread.

    Flow control is ours, not asyncssh's stream layer: that one sends a window
    adjust as it hands buffered data on, so with a consumer slower than the
    network its buffers grew without bound (measured: 126 MiB for a 200 MB
    stream). Here the channel is paused when ``LIMIT`` bytes wait and resumed
    when the reader has taken half; a resume always delivers everything the
    channel held, so at most ``LIMIT / 2 + 2 * WINDOW`` bytes are ever buffered.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self.closed = threading.Event()
        self.error: Exception | None = None
        self._paused = False
        self._resume_pending = False
        self._flushing = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._tail = TailBuffer()
        self._tail_lock = threading.Lock()
        self._pid_scan: bytes | None = b""  # stderr held back until the PID line is seen
        self.pid: int | None = None
        self.pid_scanned = threading.Event()  # the PID is known, or will never be
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # ---- loop thread ----------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan
        self.loop = asyncio.get_running_loop()
        # Writers wait once more than this is queued for the server (asyncssh's
        # default, 64 KiB, made each 256 KiB write wait a round trip).
        chan.set_write_buffer_limits(high=SEND_BUFFER)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            # Kept as it comes: stderr must never wait behind unread stdout.
            self._stderr(data)
            return
        with self._cond:
            self._chunks.append(data)
            self._buffered += len(data)
            self._cond.notify()
            pause = self._buffered >= LIMIT and not self._paused and not self._flushing
            if pause:
                self._paused = True
        if pause and self.chan is not None:
            self.chan.pause_reading()

    def _stderr(self, data: bytes) -> None:
        with self._tail_lock:
            if self._pid_scan is not None:
                # The wrapper's PID line comes first (after anything sudo or the
                # login shell printed); it is taken out of the tail.
                scan = self._pid_scan + data
                m = _PID_LINE.search(scan)
                if m:
                    self.pid = int(m.group(1))
                    data = scan[: m.start()] + scan[m.end() :]
                elif len(scan) < 4096:
                    self._pid_scan = scan
                    return
                else:
                    data = scan
                self._pid_scan = None
                self.pid_scanned.set()
            self._tail.add(data)

    def eof_received(self) -> bool:
        with self._cond:
            self._eof = True
            self._cond.notify_all()
        return True  # keep stdin open, as with a local pipe

    def connection_lost(self, exc: Exception | None) -> None:
        with self._cond:
            self.error = exc
            self._eof = True
            self._cond.notify_all()
        self._writable.set()
        self.pid_scanned.set()
        self.closed.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _resume(self) -> None:
        with self._cond:
            self._resume_pending = False
            self._paused = False
            self._flushing = True
        assert self.chan is not None
        try:
            self.chan.resume_reading()  # hands over everything buffered, synchronously
        finally:
            with self._cond:
                self._flushing = False
                pause = self._buffered >= LIMIT
                self._paused = pause
        if pause:
            self.chan.pause_reading()

    async def send(self, data: bytes) -> None:
        assert self.chan is not None
        if self.closed.is_set():
            raise BrokenPipeError("channel closed")
        self.chan.write(data)
        await self._writable.wait()

    # ---- reader thread --------------------------------------------------
    def readinto(self, buffer: memoryview) -> int:
        """Copy at least one byte into ``buffer``, or return 0 at the end of stdout."""
        with self._cond:
            while not self._chunks and not self._eof:
                self._cond.wait()
            size = 0
            while self._chunks and size < len(buffer):
                chunk = self._chunks[0]
                take = min(len(chunk), len(buffer) - size)
                buffer[size : size + take] = chunk[:take]
                if take == len(chunk):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = chunk[take:]
                size += take
            self._buffered -= size
            resume = self._paused and not self._resume_pending and self._buffered <= LIMIT // 2
            if resume:
                self._resume_pending = True
        if resume and self.loop is not None:
            self.loop.call_soon_threadsafe(self._resume)
        return size

    def stderr_tail(self) -> str:
        with self._tail_lock:
            pending = self._pid_scan or b""
            return self._tail.text() + pending.decode("utf-8", "replace")


class SshProcess(Process):
    """A remote command: stdout/stdin bridged to the runner's loop, stderr tail kept."""

    def __init__(
        self,
        runner: SshRunner,
        loop: _Loop,
        conn: asyncssh.SSHClientConnection,
        session: _Session,
        argv: list[str],
        *,
        stdin: bool,
        sudo_user: str | None,
    ) -> None:
        self.argv = argv
        self._runner = runner
        self._loop = loop
        self._conn = conn
        self._session = session
        self._sudo_user = sudo_user
        self._killed = False
        self._rc: int | None = None
        self.stdout = cast(BinaryIO, io.BufferedReader(_Stdout(self), BUFFER))
        self.stdin = cast(BinaryIO, io.BufferedWriter(_Stdin(self), BUFFER)) if stdin else None

    @property
    def what(self) -> str:
        return f"host {self._runner.host}: `{shlex.join(self.argv)}` over ssh {self._runner.target}"

    def readinto(self, buffer: memoryview) -> int:
        """Stdout bytes; 0 only after a clean end with an exit status, else SourceError."""
        if self._rc is not None:
            return 0
        size = self._session.readinto(buffer)
        if size:
            return size
        error = self._session.error
        if error is not None and not self._killed:
            raise SourceError(f"{self.what}: connection lost mid-stream: {_why(error)}")
        self.wait()  # raises if the channel closed without an exit status
        return 0

    def write(self, data: bytes) -> None:
        try:
            self._loop.call(self._session.send(data))
        except BrokenPipeError:
            raise
        except Exception as exc:
            # Like a local pipe: the caller stops writing and reads the status from wait().
            raise BrokenPipeError(f"{self.what}: {_why(exc)}") from None

    def write_eof(self) -> None:
        chan = self._session.chan
        if chan is not None:
            self._loop.loop.call_soon_threadsafe(_quietly, chan.write_eof)

    def wait(self, timeout: float | None = None) -> int:
        if self._rc is not None:
            return self._rc
        # A killed command's channel normally closes at once; a dead connection's may
        # never: then the kill stands as the status.
        limit = KILL_WAIT if self._killed else timeout
        if not self._session.closed.wait(limit) and not self._killed:
            raise subprocess.TimeoutExpired(self.argv, timeout or 0)
        self._rc = self._status()
        return self._rc

    def _status(self) -> int:
        chan = self._session.chan
        assert chan is not None
        if self._killed:
            return -signal.SIGKILL
        sig = chan.get_exit_signal()
        if sig is not None:
            return -getattr(signal, f"SIG{sig[0]}", signal.SIGKILL)
        status = chan.get_exit_status()
        if status is None:
            why = _why(self._session.error) if self._session.error else "no exit status"
            raise SourceError(
                f"{self.what}: the connection closed before the command's exit status "
                f"arrived ({why}){_tail(self.stderr_tail())}"
            )
        if status == 1 and self._sudo_user and "password is required" in self.stderr_tail():
            user = self._runner.config.user
            raise SourceError(
                f"host {self._runner.host}: `sudo -u {self._sudo_user}` needs a password for "
                f"login user {user}, and drkit runs sudo without a terminal (-n). Allow it "
                f"without a password (a NOPASSWD rule in sudoers for {user}) or log in as "
                f"{self._sudo_user}. Command: `{shlex.join(self.argv)}`"
            )
        return status

    def kill(self) -> None:
        if self._rc is not None or self._killed:
            return
        self._killed = True
        if self._session.closed.is_set():
            return
        # A command killed just after it started may not have reported its PID yet.
        self._session.pid_scanned.wait(KILL_WAIT)
        with suppress(Exception):
            self._loop.call(self._terminate(), timeout=2 * KILL_WAIT)
        # sshd closes the channel once the command is gone; a dead connection is not waited for.
        self._session.closed.wait(KILL_WAIT)

    async def _terminate(self) -> None:
        chan = self._session.chan
        assert chan is not None
        # A signal request works only for non-root logins (OpenSSH ignores it on
        # root sessions), so the wrapper's PID is also killed from a second channel.
        _quietly(chan.kill)
        pid = self._session.pid
        if pid is not None:
            argv = ["sh", "-c", KILL_SCRIPT, "drkit-kill", str(pid)]
            command = remote_command(argv, self._sudo_user, wrap=False)
            with suppress(Exception):
                killer, _ = await self._conn.create_session(asyncssh.SSHClientSession, command)
                await asyncio.wait_for(killer.wait_closed(), KILL_WAIT)
        # Closing our end also closes the command's pipes: whatever survived dies
        # of SIGPIPE at its next write.
        _quietly(chan.abort)

    def stderr_tail(self) -> str:
        return self._session.stderr_tail()


def _quietly(fn: Callable[[], object]) -> None:
    with suppress(Exception):
        fn()


def _tail(text: str) -> str:
    text = text.strip()
    return f": {text}" if text else ""


class _Stdout(io.RawIOBase):
    def __init__(self, proc: SshProcess) -> None:
        super().__init__()
        self._proc = proc

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._proc.readinto(memoryview(buffer).cast("B"))


class _Stdin(io.RawIOBase):
    def __init__(self, proc: SshProcess) -> None:
        super().__init__()
        self._proc = proc

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._proc.write(bytes(data))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._proc.write_eof()
        super().close()
