"""AWS Signature Version 4 for S3 requests, and where the credentials come from.

Signing follows the published SigV4 algorithm (canonical request -> string
to sign -> HMAC chain); tests/unit/test_s3_sign.py checks it against AWS's
test-suite vectors. Bodies are sent as ``UNSIGNED-PAYLOAD`` with a signed
Content-MD5 instead of a sha256 of every part: the server still refuses a
body altered in transit, and the data path saves a hash of every byte.

Credentials are looked up in order: the policy's resolved references, the
``AWS_*`` environment, the shared files (``AWS_PROFILE`` in
``~/.aws/credentials`` and ``~/.aws/config``); only if none of these has
static keys is botocore's full chain (SSO, web identity, instance metadata,
...) loaded, lazily, because botocore costs ~10 MiB of memory.
"""

from __future__ import annotations

import configparser
import datetime as dt
import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class NoCredentials(Exception):
    """No source yielded S3 credentials (the message names where drkit looked)."""


@dataclass(frozen=True)
class Credentials:
    """An access key pair (and session token). repr shows the key id only."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """SigV4's URI encoding: everything but ``A-Za-z0-9-._~`` (and ``/`` if kept) as %XX."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def canonical_query(params: list[tuple[str, str]]) -> str:
    """``k=v`` pairs, each side URI-encoded, sorted by key then value, joined with ``&``."""
    encoded = sorted(
        (uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False)) for k, v in params
    )
    return "&".join(f"{k}={v}" for k, v in encoded)


def _header_value(value: str) -> str:
    return " ".join(value.strip().split())


def canonical_request(
    method: str,
    path: str,
    params: list[tuple[str, str]],
    headers: Mapping[str, str],
    payload_hash: str,
) -> tuple[str, str]:
    """(canonical request, signed header list). ``path`` is already URI-encoded."""
    canon = sorted((name.lower(), _header_value(value)) for name, value in headers.items())
    signed = ";".join(name for name, _ in canon)
    lines = [
        method,
        path or "/",
        canonical_query(params),
        "".join(f"{name}:{value}\n" for name, value in canon),
        signed,
        payload_hash,
    ]
    return "\n".join(lines), signed


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived key for one day, region and service."""
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def authorization(
    creds: Credentials,
    method: str,
    path: str,
    params: list[tuple[str, str]],
    headers: Mapping[str, str],
    payload_hash: str,
    *,
    region: str,
    service: str,
    amz_date: str,
) -> str:
    """The ``Authorization`` header value for a request whose ``headers`` are all signed.

    ``headers`` must already hold ``host`` and ``x-amz-date`` (= ``amz_date``,
    ``YYYYMMDDTHHMMSSZ``) and, with temporary keys, ``x-amz-security-token``.
    """
    date = amz_date[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    creq, signed = canonical_request(method, path, params, headers, payload_hash)
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    key = signing_key(creds.secret_key, date, region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )


def amz_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


# -- where credentials come from ----------------------------------------------


class CredentialSource:
    """Finds credentials once, on first use; ``get()`` is thread-safe.

    ``explicit`` is the policy's (resolved) key pair, if it has one. Raises
    NoCredentials from ``get()`` when nothing yields keys; never includes a
    secret in a message.
    """

    def __init__(
        self, explicit: Credentials | None, environ: Mapping[str, str] | None = None
    ) -> None:
        self._explicit = explicit
        self._environ = environ if environ is not None else os.environ
        self._lock = threading.Lock()
        self._static: Credentials | None = None
        self._refresh: Callable[[], Credentials] | None = None
        self.origin = ""  # where they came from, for messages ("environment", ...)

    def __repr__(self) -> str:
        return f"CredentialSource(origin={self.origin or 'not resolved'!r})"

    def get(self) -> Credentials:
        with self._lock:
            if self._static is None and self._refresh is None:
                self._resolve()
            if self._refresh is not None:
                return self._refresh()
            assert self._static is not None
            return self._static

    def _resolve(self) -> None:
        if self._explicit is not None:
            self._static, self.origin = self._explicit, "policy"
            return
        env = self._environ
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
            self._static, self.origin = Credentials(key, secret, token), "environment"
            return
        profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
        found = _from_shared_files(env, profile)
        if found is not None:
            self._static, self.origin = found, f"profile {profile}"
            return
        self._refresh, self.origin = _botocore_chain(env.get("AWS_PROFILE")), "botocore chain"


def _from_shared_files(env: Mapping[str, str], profile: str) -> Credentials | None:
    """Static keys of ``profile`` in the shared credentials file, then the config file."""
    home = Path(env.get("HOME") or Path.home())
    creds_file = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws/credentials")
    config_file = Path(env.get("AWS_CONFIG_FILE") or home / ".aws/config")
    config_section = profile if profile == "default" else f"profile {profile}"
    for path, section in ((creds_file, profile), (config_file, config_section)):
        values = _ini_section(path.expanduser(), section)
        key, secret = values.get("aws_access_key_id"), values.get("aws_secret_access_key")
        if key and secret:
            return Credentials(key, secret, values.get("aws_session_token") or None)
    return None


def _ini_section(path: Path, section: str) -> dict[str, str]:
    parser = configparser.RawConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (OSError, configparser.Error):
        return {}  # unreadable or malformed: botocore's chain gets its say next
    if not parser.has_section(section):
        return {}
    return {k.lower(): v.strip() for k, v in parser.items(section)}


def _botocore_chain(profile: str | None) -> Callable[[], Credentials]:
    """botocore's own chain (SSO, assume-role, IMDS, ...): loaded only when needed."""
    try:
        import botocore.session

        session: Any = botocore.session.Session(profile=profile)
        found: Any = session.get_credentials()
    except Exception as exc:  # ProfileNotFound, a malformed config, ...
        raise NoCredentials(f"no S3 credentials: {type(exc).__name__}") from None
    if found is None:
        raise NoCredentials(
            "no S3 credentials: set repository access_key_id/secret_access_key "
            "references, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an AWS profile"
        )

    def frozen() -> Credentials:
        # Refreshable credentials (SSO, roles) renew themselves here.
        now = found.get_frozen_credentials()
        return Credentials(now.access_key, now.secret_key, now.token or None)

    return frozen
