"""Certificate inspection shared by the ``caddy`` and ``certbot`` sources.

Certificates are parsed on the drkit side from the bytes that pass through
the tar stream (``cryptography``, already a dependency of asyncssh), so the
host needs no ``openssl`` and the facts describe exactly what was stored.

The fingerprint is the SHA-256 of the DER encoding in lowercase hex: the
same value as ``openssl x509 -noout -fingerprint -sha256`` without colons,
and what a TLS client sees on the wire.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# cryptography.x509 costs ~7 MiB of RSS: imported when a certificate is parsed,
# not whenever the source registry or a caddy/certbot module is loaded.
if TYPE_CHECKING:
    from cryptography import x509


class CertificateParseError(ValueError):
    """The bytes hold no parsable PEM certificate (the message never quotes them)."""


@dataclass(frozen=True)
class CertInfo:
    """What a drill checks about one certificate."""

    names: list[str]  # subjectAltName DNS names and IPs, else the subject CN
    sha256: str
    not_before: str  # ISO 8601, UTC
    not_after: str
    issuer: str
    serial: str

    def fact(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "sha256": self.sha256,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "issuer": self.issuer,
            "serial": self.serial,
        }


def parse_certificate(pem: bytes) -> CertInfo:
    """The first certificate of a PEM file (a leaf, or the leaf of a full chain).

    Raises CertificateParseError when there is none.
    """
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CertificateParseError("not a PEM certificate") from exc
    if not certs:
        raise CertificateParseError("no certificate in the PEM data")
    return describe(certs[0])


def describe(cert: x509.Certificate) -> CertInfo:
    from cryptography.hazmat.primitives import hashes

    return CertInfo(
        names=certificate_names(cert),
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_before=_iso(cert.not_valid_before_utc),
        not_after=_iso(cert.not_valid_after_utc),
        issuer=_name_text(cert.issuer),
        serial=f"{cert.serial_number:x}",
    )


def certificate_names(cert: x509.Certificate) -> list[str]:
    """subjectAltName DNS names and IP addresses; the subject CN when there is no SAN."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    names: list[str] = []
    if san is not None:
        names += [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return names


def certificate_fact(path: str, pem: bytes | None) -> dict[str, Any]:
    """``{"path", names, sha256, not_after, ...}`` or ``{"path", "error"}``.

    A damaged certificate is a finding for the drill, not a reason to fail
    the backup of everything else in the directory.
    """
    if pem is None:
        return {"path": path, "error": "too large to inspect"}
    try:
        return {"path": path, **parse_certificate(pem).fact()}
    except CertificateParseError as exc:
        return {"path": path, "error": str(exc)}


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _name_text(name: x509.Name) -> str:
    from cryptography.x509.oid import NameOID

    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        attrs = name.get_attributes_for_oid(oid)
        if attrs:
            return str(attrs[0].value)
    return name.rfc4514_string()
