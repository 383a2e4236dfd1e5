"""One remote command over SSH: channel callbacks with our own flow control,
and the synchronous ``Process`` the pipeline reads from and writes to.

- stdout has backpressure: the channel is paused while ``LIMIT`` bytes wait
  to be read, so the server stops sending and memory stays flat (~5 MiB per
  command) however slow the pipeline is.
- A connection lost mid-stream makes ``read`` raise SourceError, never a
  clean EOF; at EOF, ``read`` also waits for the exit status, so a command
  whose status never arrived (connection dropped) fails too.
"""

from __future__ import annotations

import asyncio
import io
import shlex
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import asyncssh

from drkit.errors import SourceError
from drkit.redact import scrub
from drkit.remote.base import Process, TailBuffer
from drkit.remote.loop_thread import LoopThread
from drkit.remote.ssh_command import KILL_SCRIPT, PID_LINE, remote_command

if TYPE_CHECKING:
    from drkit.remote.ssh import SshRunner

WINDOW = 2 << 20  # SSH channel window: what the server may send ahead of our reads
LIMIT = 2 << 20  # stdout buffered before the channel is paused
SEND_BUFFER = 1 << 20  # stdin queued for the server before a write waits
KILL_WAIT = 5.0
PACKET = 32 << 10
BUFFER = 256 << 10  # client-side buffered reader/writer, as for local pipes


def why(exc: BaseException, timeout: float | None = None) -> str:
    """A short reason for an SSH/OS error, for messages."""
    if isinstance(exc, TimeoutError):  # asyncio's and concurrent.futures' alike
        return f"timed out after {timeout:.0f}s" if timeout else "timed out"
    return str(exc) or type(exc).__name__


class SshSession(asyncssh.SSHClientSession[bytes]):
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
                m = PID_LINE.search(scan)
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
            return scrub(self._tail.text() + pending.decode("utf-8", "replace"))


class SshProcess(Process):
    """A remote command: stdout/stdin bridged to the runner's loop, stderr tail kept."""

    def __init__(
        self,
        runner: SshRunner,
        loop: LoopThread,
        conn: asyncssh.SSHClientConnection,
        session: SshSession,
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
            raise SourceError(f"{self.what}: connection lost mid-stream: {why(error)}")
        self.wait()  # raises if the channel closed without an exit status
        return 0

    def write(self, data: bytes) -> None:
        if self._killed or self._session.closed.is_set():
            # Like a local pipe whose reader is gone. Checked before making the
            # coroutine: a buffered writer flushed at exit, after the runner closed
            # its loop, must not leave one "never awaited".
            raise BrokenPipeError(f"{self.what}: the command's input is closed")
        try:
            self._loop.call(self._session.send(data))
        except BrokenPipeError:
            raise
        except Exception as exc:
            # Like a local pipe: the caller stops writing and reads the status from wait().
            raise BrokenPipeError(f"{self.what}: {why(exc)}") from None

    def write_eof(self) -> None:
        chan = self._session.chan
        if chan is not None and not self._session.closed.is_set():
            self._loop.call_soon(lambda: _quietly(chan.write_eof))

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
            reason = why(self._session.error) if self._session.error else "no exit status"
            raise SourceError(
                f"{self.what}: the connection closed before the command's exit status "
                f"arrived ({reason}){_tail(self.stderr_tail())}"
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
