"""Host key verification for the SSH runner: known_hosts, refusals with fingerprints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncssh


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


class HostKeyClient(asyncssh.SSHClient):
    def __init__(self, check: HostKeyCheck) -> None:
        self._check = check

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return self._check.validate(host, port, key)
