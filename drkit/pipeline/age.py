"""age keys: parse public recipients, load and generate identities (pyrage)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyrage

from drkit.errors import CryptoError
from drkit.keyfiles import key_file_lines

Recipient = Any  # pyrage.x25519.Recipient | pyrage.ssh.Recipient (no stubs)
Identity = Any


def parse_recipient(text: str) -> Recipient:
    """An ``age1...`` X25519 key or an ``ssh-ed25519``/``ssh-rsa`` public key line."""
    text = text.strip()
    try:
        if text.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            return pyrage.ssh.Recipient.from_str(text)
    except pyrage.RecipientError as exc:
        raise CryptoError(f"invalid recipient {_shorten(text)}: {exc}") from None
    raise CryptoError(f"invalid recipient {_shorten(text)}: expected age1... or ssh-ed25519 key")


def read_recipients(recipients: list[str], recipients_file: str | None) -> list[Recipient]:
    """Recipients from the policy list plus a file (one per line, # comments)."""
    return [parse_recipient(ln) for ln in recipient_lines(recipients, recipients_file)]


def recipient_lines(recipients: list[str], recipients_file: str | None) -> list[str]:
    """The recipient keys as text: the policy list plus the file's lines."""
    lines = list(recipients)
    if recipients_file:
        lines += [text for _n, text in key_file_lines("recipients file", recipients_file)]
    if not lines:
        raise CryptoError("no recipients: backups need at least one public key")
    return lines


def load_identities(path: Path) -> list[Identity]:
    """Identities from an age identity file (AGE-SECRET-KEY-1 lines) or an SSH private key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CryptoError(f"identity file {path}: {exc.strerror}") from None
    text = data.decode("utf-8", "replace")
    if "-----BEGIN" in text:
        try:
            return [pyrage.ssh.Identity.from_buffer(data)]
        except pyrage.IdentityError as exc:
            raise CryptoError(f"identity file {path}: not a usable SSH key ({exc})") from None
    keys = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("AGE-SECRET-KEY-1")]
    if not keys:
        raise CryptoError(f"identity file {path}: no AGE-SECRET-KEY-1 line found")
    try:
        return [pyrage.x25519.Identity.from_str(k) for k in keys]
    except pyrage.IdentityError:
        raise CryptoError(f"identity file {path}: malformed age secret key") from None


def generate_identity(path: Path) -> str:
    """Write a new identity file with mode 0600; return its public recipient."""
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# created by drkit init\n# public key: {public}\n{identity}\n")
    return public


def recipient_of(identity_file: Path) -> str:
    """The public recipient written in an identity file's comment, else derived."""
    ids = load_identities(identity_file)
    return str(ids[0].to_public())


def _shorten(text: str) -> str:
    return text if len(text) <= 24 else text[:20] + "..."
