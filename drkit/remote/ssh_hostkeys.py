"""Host key verification for the SSH runner: known_hosts, refusals with fingerprints."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

# Where OpenSSH keeps the public half of each host key type (sshd's defaults).
HOST_KEY_FILES = {
    "ssh-ed25519": "ssh_host_ed25519_key.pub",
    "ssh-rsa": "ssh_host_rsa_key.pub",
    "rsa-sha2-256": "ssh_host_rsa_key.pub",
    "rsa-sha2-512": "ssh_host_rsa_key.pub",
    "ecdsa-sha2-nistp256": "ssh_host_ecdsa_key.pub",
    "ecdsa-sha2-nistp384": "ssh_host_ecdsa_key.pub",
    "ecdsa-sha2-nistp521": "ssh_host_ecdsa_key.pub",
    "ssh-dss": "ssh_host_dsa_key.pub",
}


@dataclass(frozen=True)
class SshAdvice:
    """What a refusal tells a person to change, in the terms of the command in use.

    The default is a policy's [connection] (backup and every command reaching the
    policy's host); ``restore --target`` has flags of its own (actions/restore_target.py).
    """

    accept_new: str = "set accept_new_host_key = true in the policy's [connection]"
    known_hosts: str = "known_hosts in the policy's [connection]"
    identity: str = "identity_file in the policy's [connection]"


def fingerprint_command(algorithm: str) -> str:
    """The command that prints, on the host, the fingerprint of its key of this type."""
    name = HOST_KEY_FILES.get(algorithm)
    if name is None:
        return f"ssh-keygen -lf on the host's {algorithm} key in /etc/ssh"
    return f"ssh-keygen -lf /etc/ssh/{name}"


class HostKeyCheck:
    """Verifies a server's host key against a known_hosts file (OpenSSH format).

    Passed to asyncssh as its ``known_hosts`` matcher and consulted through
    ``validate_host_public_key`` when the key presented is not trusted.
    ``problem`` then holds the refusal message (asyncssh's own is generic):
    the key type offered and its fingerprint, and ``advice`` on how to trust it.
    """

    def __init__(
        self, path: Path, accept_new: bool, label: str, advice: SshAdvice | None = None
    ) -> None:
        self.path = path
        self.accept_new = accept_new
        self.label = label
        self.advice = advice or SshAdvice()
        self.known_for_host = False
        self.known_types: list[str] = []  # of the plain keys known for the host
        self.pattern = ""
        self.problem: str | None = None

    def match(self, host: str, addr: str, port: int | None) -> Any:
        try:
            text = self.path.read_text() if self.path.is_file() else ""
            known = asyncssh.import_known_hosts(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
            # Refused like an unknown key (nothing is trusted), with the file named.
            self.problem = f"{self.label}: known_hosts file {self.path} cannot be read: {why}"
            raise asyncssh.HostKeyNotVerifiable(self.problem) from None
        result = known.match(host, addr, port)
        self.known_for_host = bool(result[0] or result[1])
        self.known_types = sorted({key.algorithm.decode() for key in result[0]})
        self.pattern = host if port in (None, 22) else f"[{host}]:{port}"
        return result

    def lost_hint(self, exc: BaseException) -> str:
        """For a connection ended during the key exchange: asyncssh offers only the key
        types known for the host, and a server with none of them (reinstalled with other
        keys) just hangs up, so the refusal that would name its key never comes. The hang-up
        reaches us as a lost connection or, when the close races our next write, a reset."""
        if not self.known_types or not isinstance(
            exc, (asyncssh.ConnectionLost, asyncssh.KeyExchangeFailed, ConnectionResetError)
        ):
            return ""
        return (
            f" (drkit offered only the host key type(s) {self.path} holds for "
            f"{self.pattern}: {', '.join(self.known_types)}. A server without such a key "
            f"ends the connection so: if the host was reinstalled, remove the old entry "
            f"(ssh-keygen -R '{self.pattern}' -f {self.path}), then check and accept the "
            f"new key ({self.advice.accept_new}))"
        )

    def validate(self, host: str, port: int, key: asyncssh.SSHKey) -> bool:
        fp = key.get_fingerprint("sha256")
        algorithm = key.algorithm.decode()
        pattern = host if port == 22 else f"[{host}]:{port}"
        check = f"check on the host that `{fingerprint_command(algorithm)}` prints {fp}"
        if self.known_for_host:
            self.problem = (
                f"{self.label}: REFUSED: the host key has CHANGED: the server presents "
                f"{algorithm} {fp}, which is not the key {self.path} holds for "
                f"{pattern}. This can mean an attack. If the host was really reinstalled, "
                f"{check}, remove the old entry (ssh-keygen -R '{pattern}' -f {self.path}) "
                f"and accept the new one ({self.advice.accept_new})"
            )
            return False
        if not self.accept_new:
            self.problem = (
                f"{self.label}: REFUSED: unknown host key {algorithm} {fp} "
                f"({pattern} is not in {self.path}). First {check}; then add the key to "
                f"{self.path} (or name a file holding it: {self.advice.known_hosts}), or "
                f"{self.advice.accept_new} to trust it once and record it"
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


class HostKeyClient(asyncssh.SSHClient):
    def __init__(self, check: HostKeyCheck) -> None:
        self._check = check

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return self._check.validate(host, port, key)
