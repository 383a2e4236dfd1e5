"""The Docker engine restore drills run on, driven through the ``docker`` CLI.

``ensure_engine()`` returns a running engine: the one that answers already
(``DOCKER_HOST`` or ``/var/run/docker.sock``), or, when there is none and we
are root, a ``dockerd --storage-driver=vfs`` started in the background with
its log in ``<state dir>/docker/dockerd.log``. It never installs anything:
``scripts/docker-setup.sh`` installs ``docker.io`` and ``debootstrap``.

vfs is the one storage driver that works on every machine (no overlay
mounts, so also inside a container or a VM without overlayfs); it copies
each image layer in full, which is why drkit's images keep few layers, and
it copies the whole image for every new container (about 20 s for the
vultr image). ``DRKIT_DOCKER_STORAGE_DRIVER=overlay2`` picks another driver
where the kernel allows it (a container then starts in about a second).

``docker()`` runs one CLI command and raises ``DockerError`` naming the
command and the tail of its stderr.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from drkit.errors import DrkitError
from drkit.paths import state_dir

SOCKET = Path("/var/run/docker.sock")
DRIVER_ENV = "DRKIT_DOCKER_STORAGE_DRIVER"
DEFAULT_STORAGE_DRIVER = "vfs"
SETUP_HINT = "run scripts/docker-setup.sh"


class DockerError(DrkitError):
    """The Docker engine, an image build or a container failed (names the command)."""


@dataclass(frozen=True)
class Engine:
    """A Docker engine that answers.

    ``pid`` and ``log_file`` are set only when ``ensure_engine()`` started
    the daemon itself; ``stop_engine()`` stops only such a daemon.
    """

    server_version: str
    pid: int | None = None
    log_file: Path | None = None


def docker_binary() -> str:
    """Path of the ``docker`` CLI; raises ``DockerError`` when it is not installed."""
    path = shutil.which("docker")
    if path is None:
        raise DockerError(f"the docker CLI is not installed: {SETUP_HINT}")
    return path


def docker(
    *args: str,
    input: bytes | None = None,
    timeout: float | None = 120,
    check: bool = True,
    what: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``docker ARGS``; stdout and stderr are captured.

    ``env`` is added to the CLI's environment: ``docker run -e NAME`` and
    ``docker exec -e NAME`` take values from there, so they never appear in
    a process list. ``what`` names the operation in errors (default: the
    command line). Raises ``DockerError`` when it exits non-zero (if
    ``check``) or times out.
    """
    argv = [docker_binary(), *args]
    label = what or "docker " + " ".join(args[:3])
    full_env = {**os.environ, **env} if env else None
    try:
        done = subprocess.run(
            argv, input=input, capture_output=True, timeout=timeout, check=False, env=full_env
        )
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"{label}: no answer within {timeout:.0f} s") from exc
    if check and done.returncode != 0:
        raise DockerError(f"{label}: exit {done.returncode}: {tail(done.stderr)}")
    return done


def tail(data: bytes, lines: int = 15) -> str:
    """The last ``lines`` lines of a command's output, decoded, for an error message."""
    text = data.decode("utf-8", "replace").strip()
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def server_version() -> str | None:
    """The engine's version, or None when no engine answers."""
    try:
        done = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=15)
    except DockerError:
        return None
    version = done.stdout.decode().strip()
    return version if done.returncode == 0 and version else None


def ensure_engine(*, start: bool = True, timeout: float = 60) -> Engine:
    """Return an engine that answers, starting ``dockerd`` if needed and allowed.

    ``start=False`` only checks. Raises ``DockerError`` naming what is missing
    (CLI, daemon binary, root) or, when the daemon does not come up within
    ``timeout`` seconds, with the tail of its log.
    """
    docker_binary()
    version = server_version()
    if version is not None:
        return Engine(version)
    if os.environ.get("DOCKER_HOST"):
        raise DockerError(f"no Docker engine answers at DOCKER_HOST={os.environ['DOCKER_HOST']}")
    if SOCKET.exists():
        raise DockerError(f"{SOCKET} exists but no Docker engine answers on it")
    if not start:
        raise DockerError(f"no Docker engine runs ({SOCKET} is absent): {SETUP_HINT}")
    if os.geteuid() != 0:
        raise DockerError(f"no Docker engine runs and starting dockerd needs root: {SETUP_HINT}")
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerError(f"dockerd is not installed: {SETUP_HINT}")
    return _start_dockerd(dockerd, timeout)


def storage_driver() -> str:
    """The storage driver for a dockerd drkit starts: ``$DRKIT_DOCKER_STORAGE_DRIVER`` or vfs."""
    return os.environ.get(DRIVER_ENV) or DEFAULT_STORAGE_DRIVER


def _start_dockerd(dockerd: str, timeout: float) -> Engine:
    log_file = state_dir() / "docker" / "dockerd.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        # A session of its own: the engine outlives this drkit process and a
        # Ctrl-C in its terminal, like a system service.
        proc = subprocess.Popen(
            [dockerd, f"--storage-driver={storage_driver()}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise DockerError(
                f"dockerd exited with {proc.returncode} (log {log_file}): "
                f"{tail(log_file.read_bytes())}"
            )
        version = server_version() if SOCKET.exists() else None
        if version is not None:
            return Engine(version, pid=proc.pid, log_file=log_file)
        if time.monotonic() > deadline:
            _stop_pid(proc.pid)
            raise DockerError(
                f"dockerd did not answer within {timeout:.0f} s (log {log_file}): "
                f"{tail(log_file.read_bytes())}"
            )
        time.sleep(0.2)


def stop_engine(engine: Engine, timeout: float = 30) -> None:
    """Stop the daemon ``ensure_engine()`` started (by PID); an engine it found is left alone."""
    if engine.pid is not None:
        _stop_pid(engine.pid, timeout)


def _stop_pid(pid: int, timeout: float = 30) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Our child when started in this process: reap it; else poll it.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
