"""A real OpenSSH sshd for tests: a temp host key, a test login key, a free port on 127.0.0.1.

``sshd_server()`` starts ``/usr/sbin/sshd -D -e -f CONFIG`` (we are root, as on
CI) and stops it and every per-connection child it forked by PID.
``temp_user()`` adds a throwaway non-root login user (and a sudoers drop-in)
for tests that need ``sudo``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers.ports import free_port

SSHD = Path(os.environ.get("SSHD", "/usr/sbin/sshd"))


@dataclass
class SshHost:
    """A running test sshd and what a client needs to reach it."""

    address: str
    port: int
    user: str
    identity_file: Path
    host_public_key: str  # "ssh-ed25519 AAAA..."
    fingerprint: str  # "SHA256:..."
    pid: int
    base: Path
    log_file: Path = field(repr=False)

    def known_hosts_line(self, key: str | None = None) -> str:
        """A known_hosts entry for this server (with ``key`` instead of its own if given)."""
        return f"[{self.address}]:{self.port} {key or self.host_public_key}\n"

    def write_known_hosts(self, path: Path, key: str | None = None) -> Path:
        path.write_text(self.known_hosts_line(key))
        return path

    def connection(self, **overrides: Any) -> dict[str, Any]:
        """The policy's ``[connection]`` table for this server, as a dict."""
        values: dict[str, Any] = {
            "type": "ssh",
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "identity_file": str(self.identity_file),
        }
        values.update(overrides)
        return values

    def session_pids(self) -> list[int]:
        """PIDs of the per-connection sshd processes the listener forked."""
        return _children(self.pid)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def drop_connections(self) -> int:
        """Kill every per-connection sshd process, as a network failure would end them.

        Commands they ran are left alone (they die of SIGPIPE or are killed when
        the server stops). Returns how many processes were killed.
        """
        return len(self.signal_connections(signal.SIGKILL))

    def signal_connections(self, sig: int) -> list[int]:
        """Send ``sig`` to every per-connection sshd process (SIGSTOP: a silent peer)."""
        pids = [p for p in _descendants(self.pid) if _comm(p) == "sshd"]
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    def find_command(self, argv: list[str]) -> int | None:
        """PID of a command (exact argv) that one of this server's sessions runs."""
        for pid in _descendants(self.pid):
            with suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] == [
                    a.encode() for a in argv
                ]:
                    return pid
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found.append(child)
        found.extend(_descendants(child))
    return found


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def fingerprint_of(public_key_file: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(1)
            try:
                s.connect(("127.0.0.1", port))
                if s.recv(4).startswith(b"SSH-"):
                    return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not listen on {port}: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@contextmanager
def sshd_server(
    extra_config: str = "", host_key: Path | None = None, client_key: Path | None = None
) -> Iterator[SshHost]:
    """Start a real sshd. ``host_key``/``client_key`` reuse another server's keys
    (private key paths); by default each server gets fresh ones."""
    if not SSHD.exists():
        raise RuntimeError(f"{SSHD} is missing: apt-get install openssh-server")
    # sshd refuses to start without its privilege-separation directory.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    # mkdtemp is 0700; a non-root test user's sshd child must read the
    # authorized keys file, so the directory is opened up (the keys are throwaway).
    base = Path(tempfile.mkdtemp(prefix="drkit-sshd-"))
    base.chmod(0o755)
    if host_key is None:
        host_key = base / "host_ed25519"
        _keygen(host_key, "drkit-test-host")
    else:
        shutil.copy(host_key, base / "host_ed25519")
        shutil.copy(host_key.with_suffix(".pub"), base / "host_ed25519.pub")
        host_key = base / "host_ed25519"
    host_key.chmod(0o600)
    if client_key is None:
        client_key = base / "client_ed25519"
        _keygen(client_key, "drkit-test-client")
    (base / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    (base / "authorized_keys").chmod(0o644)
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {host_key}",
                "PidFile none",
                "UsePAM no",
                "StrictModes no",
                f"AuthorizedKeysFile {base}/authorized_keys",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "LogLevel VERBOSE",
                extra_config,
                "",
            ]
        )
    )
    log = base / "sshd.log"
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=log_fh)
    host = SshHost(
        address="127.0.0.1",
        port=port,
        user="root",
        identity_file=client_key,
        host_public_key=" ".join(host_key.with_suffix(".pub").read_text().split()[:2]),
        fingerprint=fingerprint_of(host_key.with_suffix(".pub")),
        pid=proc.pid,
        base=base,
        log_file=log,
    )
    try:
        _wait_listening(port, proc, log)
        yield host
    finally:
        # Sessions outlive the listener: stop them first, by PID.
        for pid in _descendants(proc.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def sudo_missing_reason() -> str | None:
    """Why sudo tests cannot run here, or None."""
    if shutil.which("sudo") is None:
        return "sudo is not installed: add `sudo` to the apt packages in scripts/setup.sh"
    return None


@contextmanager
def temp_user(sudoers: str | None = None) -> Iterator[str]:
    """A throwaway non-root user that can log in with the test key.

    ``sudoers`` (e.g. ``"ALL=(ALL) ALL"``: a password is required) becomes
    ``/etc/sudoers.d/<drop-in>`` for that user. The user, its processes, its
    home and the drop-in are removed afterwards.
    """
    name = f"drkit-t{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    drop_in = Path("/etc/sudoers.d") / f"drkit-test-{name}"
    try:
        # With UsePAM no, sshd refuses accounts whose password is locked ("!"):
        # give it a random password (which also makes sudo ask for one).
        subprocess.run(
            ["chpasswd"], input=f"{name}:{secrets.token_hex(16)}\n", text=True, check=True
        )
        if sudoers is not None:
            drop_in.write_text(f"{name} {sudoers}\n")
            drop_in.chmod(0o440)
            subprocess.run(["visudo", "-c", "-q", "-f", str(drop_in)], check=True)
        yield name
    finally:
        drop_in.unlink(missing_ok=True)
        uid = _uid(name)
        for pid in _pids_of_uid(uid) if uid is not None else []:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["userdel", "-r", "-f", name], check=False, capture_output=True)


def _uid(name: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
    return pids
