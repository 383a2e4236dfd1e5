"""Run commands on this machine (subprocess)."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import threading
from typing import BinaryIO, cast

from drkit.errors import SourceError
from drkit.remote.base import Process, Runner, TailBuffer


class LocalProcess(Process):
    def __init__(self, argv: list[str], popen: subprocess.Popen[bytes]) -> None:
        self.argv = argv
        self._popen = popen
        self.stdout = cast(BinaryIO, popen.stdout)
        self.stdin = cast(BinaryIO, popen.stdin) if popen.stdin else None
        self._tail = TailBuffer()
        self._reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._reader.start()

    def _drain_stderr(self) -> None:
        err = self._popen.stderr
        assert err is not None
        while chunk := err.read1(65536):  # type: ignore[attr-defined]
            self._tail.add(chunk)

    def wait(self, timeout: float | None = None) -> int:
        rc = self._popen.wait(timeout)
        self._reader.join(timeout=5)
        for f in (self._popen.stdout, self._popen.stderr):
            if f is not None:
                f.close()
        return rc

    def kill(self) -> None:
        # The command runs in its own session: kill the whole group, so a child
        # (sh -c '... | ...') cannot keep the pipe open after its parent died.
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, signal.SIGKILL)

    def stderr_tail(self) -> str:
        return self._tail.text()


class LocalRunner(Runner):
    def __init__(self, host: str = "localhost") -> None:
        self.host = host

    def start(
        self,
        argv: list[str],
        *,
        stdin: bool = False,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> Process:
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        wrapped = _as_user(argv, user, sorted(env) if env else [])
        try:
            popen = subprocess.Popen(
                wrapped,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                start_new_session=True,  # a Ctrl-C to drkit must not kill a dump half-way silently
            )
        except FileNotFoundError as exc:
            # What a shell over SSH reports as "command not found" (exit 127), said here
            # by name rather than as an internal error.
            raise SourceError(
                f"{wrapped[0]}: command not found on {self.host} (is it installed and on "
                f"PATH?), running: {' '.join(argv)}"
            ) from exc
        return LocalProcess(argv, popen)


def _as_user(argv: list[str], user: str | None, keep_env: list[str]) -> list[str]:
    """Wrap ``argv`` to run as ``user`` when that is not who we are."""
    if user is None or pwd.getpwuid(os.getuid()).pw_name == user:
        return argv
    if os.getuid() == 0:
        # runuser (util-linux) is present where sudo may not be; --preserve-environment
        # keeps secrets passed in env (e.g. PGPASSWORD) out of argv.
        return (
            ["runuser", "-u", user, "-m", "--", *argv]
            if keep_env
            else [
                "runuser",
                "-u",
                user,
                "--",
                *argv,
            ]
        )
    return [
        "sudo",
        "-n",
        "-u",
        user,
        *(["--preserve-env=" + ",".join(keep_env)] if keep_env else []),
        "--",
        *argv,
    ]
