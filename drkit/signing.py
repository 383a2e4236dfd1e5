"""Ed25519 signatures on repository documents: what makes a snapshot "ours".

age gives confidentiality, not authenticity: anyone holding a public
recipient and write access to the bucket can encrypt a well-formed snapshot.
So the machine that runs ``drkit backup`` for a host (and the machine that
runs drills) signs every document it commits with its own Ed25519 key, and
readers trust a document only when its signature checks against a public key
the local policy pins (``[encryption] signers``). A host's key vouches only
for the hosts whose policies list it; no host holds a key that can read any
backup.

A signed document is a JSON object with a ``signature`` member
``{"key": "ed25519:<base64>", "sig": "<base64>"}``. The signature covers a
domain line naming the document kind (a drill report can never pass for a
manifest) and the canonical JSON of every other member (sorted keys, no
whitespace, ASCII). The verifier recomputes that form from what it parsed,
so what it goes on to use is exactly what was signed, whatever the file's
layout.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from drkit import ed25519
from drkit.errors import CryptoError, RepositoryError, UsageError
from drkit.keyfiles import key_file_lines
from drkit.paths import config_dir

KEY_PREFIX = "ed25519:"
SIGNATURE = "signature"
_DOMAIN = b"drkit-signed-document/v1\n"
SIGNING_KEY_ENV = "DRKIT_SIGNING_KEY"


class UntrustedError(RepositoryError):
    """A repository document is unsigned, wrongly signed, or signed by a key the
    policy does not trust: it is reported, never used."""


def default_signing_key_file() -> Path:
    """``$DRKIT_SIGNING_KEY`` or ``<config dir>/signing.key``."""
    override = os.environ.get(SIGNING_KEY_ENV)
    return Path(override) if override else config_dir() / "signing.key"


def public_text(raw: bytes) -> str:
    """``ed25519:<base64 of the 32-byte public key>``: how keys are pinned in policies."""
    return KEY_PREFIX + base64.b64encode(raw).decode()


def parse_public(text: str) -> bytes:
    """The 32 bytes of an ``ed25519:...`` key. Raises ValueError saying what is wrong."""
    body = text.strip()
    if not body.startswith(KEY_PREFIX):
        raise ValueError(f"not a signing key (expected {KEY_PREFIX}<base64>): {body[:20]!r}")
    try:
        raw = base64.b64decode(body[len(KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"not a signing key (bad base64): {body[:20]!r}...") from None
    if len(raw) != 32:
        raise ValueError(f"not a signing key (an Ed25519 key is 32 bytes, got {len(raw)})")
    return raw


def canonical(document: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: every member but ``signature``, canonical JSON."""
    body = {k: v for k, v in document.items() if k != SIGNATURE}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _message(kind: str, document: Mapping[str, Any]) -> bytes:
    return _DOMAIN + kind.encode() + b"\n" + canonical(document)


class SigningKey:
    """This machine's signing key (OpenSSH private key file, 0600).

    Loading reads the file itself (its format is simple) and signing is pure
    Python (drkit.ed25519): a backup never imports the `cryptography` package,
    which would add ~5 MiB to its peak RSS. Only `create` (drkit init) uses it.
    """

    def __init__(self, seed: bytes, public_raw: bytes, path: Path) -> None:
        self._seed = seed
        self._public_raw = public_raw
        self.path = path
        self.public = public_text(public_raw)

    @classmethod
    def create(cls, path: Path) -> SigningKey:
        """Write a new key to ``path`` (0600; its directory 0700). Never overwrites:
        raises UsageError if the file exists."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise UsageError(
                f"{path}: a signing key exists already; it is never overwritten"
            ) from None
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        return cls(*_openssh_ed25519(pem, path), path)

    @classmethod
    def load(cls, path: Path | None = None) -> SigningKey:
        """The key at ``path`` (default: ``default_signing_key_file()``).

        Raises UsageError when it is missing (naming ``drkit init``), CryptoError
        when it is readable by others or not an unencrypted Ed25519 OpenSSH key.
        """
        path = path or default_signing_key_file()
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(
                f"no signing key at {path}: run `drkit init` on this machine (it creates one "
                "and prints the public key to pin in each policy's [encryption] signers), "
                f"or point ${SIGNING_KEY_ENV} at this machine's key"
            ) from None
        except OSError as exc:
            raise CryptoError(f"{path}: cannot read the signing key ({exc.strerror})") from None
        if mode & 0o077:
            raise CryptoError(
                f"{path}: the signing key is readable by other users (mode {mode & 0o777:o}); "
                f"chmod 600 {path}"
            )
        return cls(*_openssh_ed25519(data, path), path)

    def sign(self, kind: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """``document`` with its ``signature`` member (any old one replaced)."""
        sig = ed25519.sign(self._seed, self._public_raw, _message(kind, document))
        body = {k: v for k, v in document.items() if k != SIGNATURE}
        body[SIGNATURE] = {"key": self.public, "sig": base64.b64encode(sig).decode()}
        return body

    def derive(self, purpose: str) -> bytes:
        """A 32-byte secret for ``purpose``, derived from the private key (HMAC-SHA256):
        the keyed chunk ids use it, so a host holds one secret, not two."""
        return hmac.digest(self._seed, b"drkit-derived-key/v1\n" + purpose.encode(), "sha256")


class Signers:
    """The public keys a policy trusts for its host's documents."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys: dict[str, bytes] = {}
        for text in keys:
            raw = parse_public(text)  # policy validation has already checked each
            self._keys[public_text(raw)] = raw

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __contains__(self, public: str) -> bool:
        return public in self._keys

    @property
    def keys(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, kind: str, document: Mapping[str, Any], label: str) -> str:
        """The trusted key that signed ``document`` as a ``kind``.

        Raises UntrustedError naming ``label`` when the document carries no signature,
        names a key not in this list, or the signature does not check.
        """
        block = document.get(SIGNATURE)
        if block is None:
            raise UntrustedError(f"{label}: not signed")
        if not isinstance(block, dict) or not all(
            isinstance(block.get(k), str) for k in ("key", "sig")
        ):
            raise UntrustedError(f"{label}: malformed signature")
        raw = self._keys.get(block["key"])
        if raw is None:
            raise UntrustedError(f"{label}: signed by {block['key'][:60]}, which is not trusted")
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            sig = base64.b64decode(block["sig"], validate=True)
            Ed25519PublicKey.from_public_bytes(raw).verify(sig, _message(kind, document))
        except (binascii.Error, ValueError, InvalidSignature):
            raise UntrustedError(f"{label}: signature does not check (altered?)") from None
        return str(block["key"])


def read_signers(keys: Iterable[str], keys_file: str | None) -> list[str]:
    """The signing keys a policy lists, plus the lines of its ``signers_file``.

    Raises CryptoError naming the file when it cannot be read or holds a line that
    is not a key (a typo there must not silently distrust every snapshot).
    """
    lines = list(keys)
    if keys_file:
        for n, text in key_file_lines("signers file", keys_file):
            key = text.split()[0]  # a comment may follow the key
            try:
                parse_public(key)
            except ValueError as exc:
                raise CryptoError(f"signers file {keys_file}, line {n}: {exc}") from None
            lines.append(key)
    return lines


_OPENSSH_MAGIC = b"openssh-key-v1\0"


def _openssh_ed25519(data: bytes, path: Path) -> tuple[bytes, bytes]:
    """(seed, public key) of an unencrypted OpenSSH Ed25519 private key file
    (PROTOCOL.key in OpenSSH). Raises CryptoError naming ``path``."""
    bad = CryptoError(f"{path}: not an unencrypted OpenSSH Ed25519 private key")
    text = data.decode("ascii", "replace").strip().splitlines()
    if len(text) < 3 or "BEGIN OPENSSH PRIVATE KEY" not in text[0]:
        raise bad
    try:
        blob = base64.b64decode("".join(text[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise bad from None
    if not blob.startswith(_OPENSSH_MAGIC):
        raise bad
    reader = _Reader(blob[len(_OPENSSH_MAGIC) :], bad)
    cipher, kdf, _options = reader.string(), reader.string(), reader.string()
    if (cipher, kdf) != (b"none", b"none"):
        raise CryptoError(
            f"{path}: the signing key is passphrase-protected; drkit needs it "
            "unencrypted (protect the file instead: 0600, root only)"
        )
    if reader.uint32() != 1:
        raise bad
    reader.string()  # the public key blob, repeated in the private section
    private = _Reader(reader.string(), bad)
    if private.uint32() != private.uint32():  # check integers: equal when not encrypted
        raise bad
    if private.string() != b"ssh-ed25519":
        raise bad
    public, secret = private.string(), private.string()
    if len(public) != 32 or len(secret) != 64 or secret[32:] != public:
        raise bad
    if ed25519.public_key(secret[:32]) != public:  # a damaged file must not sign garbage
        raise bad
    return secret[:32], public


class _Reader:
    """SSH wire format: big-endian uint32 and length-prefixed strings."""

    def __init__(self, data: bytes, error: CryptoError) -> None:
        self.data, self.pos, self.error = data, 0, error

    def uint32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise self.error
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> bytes:
        size = self.uint32()
        if self.pos + size > len(self.data):
            raise self.error
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value
