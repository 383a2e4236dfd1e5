"""Shared fixtures for the pm2, caddy and certbot source tests.

- ``open_dir``: a temp dir other users can traverse (pytest's tmp_path is
  0700 under root, and these tests run daemons as ``nobody`` or ``caddy``).
- ``make_cert``: a self-signed certificate generated at test time.
- ``snapshot_facts``: decrypt the newest snapshot's facts of one source.
- ``leak_check``: assert a secret appears nowhere drkit writes in the clear.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from drkit.actions.artifact_read import read_facts
from drkit.actions.repository_access import open_repository
from drkit.actions.snapshot_select import select_snapshot
from drkit.pipeline.age import load_identities
from drkit.policy.loader import load_policy


@pytest.fixture
def open_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="drkit-src-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class GeneratedCert:
    cert_pem: bytes
    key_pem: bytes
    sha256: str
    not_after: str  # ISO 8601 UTC, as drkit's facts write it
    names: list[str]


def _make_cert(names: list[str], days: int = 80) -> GeneratedCert:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = now + dt.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "drkit test CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return GeneratedCert(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        names=names,
    )


@pytest.fixture
def make_cert() -> Callable[..., GeneratedCert]:
    return _make_cert


@pytest.fixture
def snapshot_facts(keys: Any) -> Callable[[Path, str], dict[str, Any]]:
    def read(policy_path: Path, source: str) -> dict[str, Any]:
        policy = load_policy(policy_path)
        repo = open_repository(policy)
        manifest = select_snapshot(repo, policy.host)
        facts = read_facts(repo, manifest, load_identities(keys.identity_file))
        return dict(facts[source])

    return read


@pytest.fixture
def leak_check(drkit_home: Path) -> Callable[..., None]:
    """``leak_check(secret, repo_dir, *texts)``: the secret is in no text given, in no
    file of the repository (manifests, encrypted objects) and in nothing under drkit's
    home (catalog, state, logs)."""

    def check(secret: str, repo_dir: Path, *texts: str) -> None:
        needle = secret.encode()
        for text in texts:
            assert secret not in text
        files = [p for d in (repo_dir, drkit_home) for p in d.rglob("*") if p.is_file()]
        assert any(p.name == "manifest.json" for p in files)
        for p in files:
            assert needle not in p.read_bytes(), f"secret found in {p}"

    return check
