"""drkit.signing: the key file drkit reads itself, signatures, and what is refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from drkit.errors import CryptoError, UsageError
from drkit.signing import Signers, SigningKey, UntrustedError, parse_public, public_text


def test_key_file_round_trip_matches_cryptography(tmp_path: Path) -> None:
    key = SigningKey.create(tmp_path / "k")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    loaded = SigningKey.load(tmp_path / "k")
    theirs = serialization.load_ssh_private_key((tmp_path / "k").read_bytes(), password=None)
    raw = theirs.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert loaded.public == key.public == public_text(raw)
    assert loaded.derive("chunk-ids/vultr") == key.derive("chunk-ids/vultr")
    assert loaded.derive("chunk-ids/vultr") != loaded.derive("chunk-ids/e2i")
    with pytest.raises(UsageError, match="never overwritten"):
        SigningKey.create(tmp_path / "k")


def test_an_ssh_keygen_key_is_read(tmp_path: Path) -> None:
    path = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    key = SigningKey.load(path)
    pub = (tmp_path / "id.pub").read_text().split()[1]
    import base64

    assert key.public == public_text(base64.b64decode(pub)[-32:])


@pytest.mark.parametrize("kind", ["rsa", "passphrase", "garbage", "mode"])
def test_unusable_key_files_are_refused_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "id"
    if kind == "rsa":
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", str(path)], check=True
        )
    elif kind == "passphrase":
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-f", str(path)], check=True
        )
    elif kind == "garbage":
        path.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END\n")
        path.chmod(0o600)
    else:
        SigningKey.create(path)
        path.chmod(0o644)
    with pytest.raises(CryptoError, match=str(path)):
        SigningKey.load(path)


def test_signatures_bind_the_document_and_its_kind(tmp_path: Path) -> None:
    key = SigningKey.create(tmp_path / "k")
    other = SigningKey.create(tmp_path / "o")
    doc = key.sign("manifest", {"host": "vultr", "n": 1, "f": 7.9, "x": [1, {"y": None}]})
    signers = Signers([key.public])
    assert signers.verify("manifest", doc, "obj") == key.public
    with pytest.raises(UntrustedError, match="does not check"):
        signers.verify("drill-report", doc, "obj")
    with pytest.raises(UntrustedError, match="does not check"):
        signers.verify("manifest", {**doc, "n": 2}, "obj")
    with pytest.raises(UntrustedError, match="not trusted"):
        Signers([other.public]).verify("manifest", doc, "obj")
    with pytest.raises(UntrustedError, match="not signed"):
        signers.verify("manifest", {"host": "vultr"}, "obj")
    with pytest.raises(UntrustedError, match="malformed signature"):
        signers.verify("manifest", {**doc, "signature": "x"}, "obj")


@pytest.mark.parametrize(
    "text", ["ed25519:", "ed25519:!!", "ssh-ed25519 AAAA", "ed25519:" + "A" * 40]
)
def test_bad_public_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a signing key"):
        parse_public(text)


def test_pure_python_signatures_equal_cryptographys() -> None:
    """Ed25519 is deterministic: drkit.ed25519 (the backup path's signer) must sign
    exactly as cryptography does, for keys and messages of every shape."""
    import os

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from drkit import ed25519

    for n in range(40):
        seed, message = os.urandom(32), os.urandom(n * 53)
        theirs = Ed25519PrivateKey.from_private_bytes(seed)
        public = theirs.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert ed25519.public_key(seed) == public
        assert ed25519.sign(seed, public, message) == theirs.sign(message)
