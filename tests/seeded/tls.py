"""Certificates made at test time, stored the way Caddy (certmagic) stores its own, and the
certificate a TLS server in a container presents for a name."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from drkit.drills.container import HostContainer
from tests.drills.test_drill import cert_pem

# Caddy's data dir layout for Let's Encrypt's production directory (certmagic's issuer key).
LETSENCRYPT = "acme-v02.api.letsencrypt.org-directory"


@dataclass(frozen=True)
class Certificate:
    domain: str
    cert_pem: bytes
    key_pem: bytes
    sha256: str  # hex, lower case: as drkit's facts write it

    def storage_files(self) -> dict[str, bytes]:
        """certmagic's three files for it, relative to Caddy's data dir:
        ``certificates/<issuer>/<domain>/<domain>.{crt,key,json}``."""
        base = f"certificates/{LETSENCRYPT}/{self.domain}/{self.domain}"
        meta = {
            "sans": [self.domain],
            "issuer_data": {
                "url": f"https://acme-v02.api.letsencrypt.org/acme/cert/{self.sha256[:34]}",
                "ca": "https://acme-v02.api.letsencrypt.org/directory",
            },
        }
        return {
            f"{base}.crt": self.cert_pem,
            f"{base}.key": self.key_pem,
            f"{base}.json": json.dumps(meta, indent="\t").encode(),
        }


def make_certificate(domain: str, days_left: int = 60) -> Certificate:
    """A self-signed certificate for ``domain`` (tests/drills/test_drill.py ``cert_pem``:
    90 days of lifetime, as Let's Encrypt issues them) valid ``days_left`` more days.
    Caddy renews in the last third of a lifetime: with 60 left it serves this one and
    never asks for another."""
    not_after = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=days_left)
    pem, key = cert_pem(domain, not_after)
    sha256 = x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()
    return Certificate(domain=domain, cert_pem=pem, key_pem=key, sha256=sha256)


# For each name: "<name> <fingerprint>" of the certificate served on 127.0.0.1:PORT with
# that SNI, or "<name> none" when no TLS handshake completed.
_SERVED = r"""
port=$1; shift
for name in "$@"; do
    fp=$(openssl s_client -connect "127.0.0.1:$port" -servername "$name" </dev/null 2>/dev/null |
        openssl x509 -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2)
    echo "$name ${fp:-none}"
done
"""


def served_fingerprints(box: HostContainer, names: list[str], port: int = 443) -> dict[str, str]:
    """name -> SHA-256 (hex, lower case) of the certificate the container serves on
    127.0.0.1:``port`` for that SNI name, "none" when no handshake completed (checked
    inside the container with ``openssl s_client``)."""
    out = box.exec(["bash", "-c", _SERVED, "served", str(port), *names], timeout=60)
    served = {}
    for line in out.stdout.decode().splitlines():
        name, fingerprint = line.split()
        served[name] = (
            "none" if fingerprint == "none" else re.sub("[^0-9a-f]", "", fingerprint.lower())
        )
    return served


def wait_served(
    box: HostContainer, expected: dict[str, str], port: int = 443, timeout: float = 30
) -> dict[str, str]:
    """``served_fingerprints`` polled until each name is served with ``expected[name]``
    (or ``timeout`` seconds passed); returns the last answer for the caller to assert."""
    deadline = time.monotonic() + timeout
    while True:
        served = served_fingerprints(box, sorted(expected), port)
        if served == expected or time.monotonic() > deadline:
            return served
        time.sleep(0.5)
