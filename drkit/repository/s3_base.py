"""The S3 store's plumbing (s3.py holds the store itself): the client, keys under the
prefix, errors that name the object and never a secret, Object Lock headers on
writes, and the parsing of answers' numbers and times. Shared by the store's
other parts (s3_multipart.py, s3_lock.py) through the ``S3Base`` class.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any, TypeVar

from drkit.errors import ObjectNotFound, RepositoryError
from drkit.repository.options import StoreOptions, safe_url
from drkit.repository.s3_client import MalformedAnswer, Response, S3Client, S3Error
from drkit.repository.s3_sign import Credentials, CredentialSource, NoCredentials
from drkit.repository.store import Store
from drkit.retry import SYSTEM_CLOCK, Clock

MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
DEFAULT_REGION = "us-east-1"
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_USERINFO = re.compile(r"//[^/@\s]*@")

T = TypeVar("T")


class S3Base(Store):
    """Objects are S3 keys under ``prefix/`` in ``bucket``: what every part of the store
    shares (s3.S3Store is the store)."""

    def __init__(self, bucket: str, prefix: str, options: StoreOptions) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._base = f"{self.prefix}/" if self.prefix else ""
        self._endpoint = safe_url(options.endpoint) if options.endpoint else None
        self._part_size = max(int(options.part_size), MIN_PART_SIZE)
        self._concurrency = max(int(options.concurrency), 1)
        self.max_attempts = 5  # per request (as botocore "standard" retries); before first use
        self.clock: Clock = SYSTEM_CLOCK  # what retries wait on; before first use
        self.read_timeout = 120.0  # seconds an answer may keep silent; before first use
        self._client: S3Client | None = None
        self._client_lock = threading.Lock()
        self._lock_enabled: bool | None = None
        self._checks: dict[str, bool] = {}  # does the server check If-None-Match, If-Match?
        self.list_page_size = 1000  # keys per listing request (S3's maximum)

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self._endpoint!r})"

    # -- plumbing ----------------------------------------------------------

    @property
    def client(self) -> S3Client:
        """drkit's S3 client, created on first use."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> S3Client:
        opts = self.options
        explicit = None
        if opts.access_key_id and opts.secret_access_key:
            explicit = Credentials(opts.access_key_id, opts.secret_access_key)
        try:
            return S3Client(
                self._endpoint,
                opts.region or DEFAULT_REGION,
                CredentialSource(explicit),
                path_style=opts.path_style,
                max_attempts=self.max_attempts,
                clock=self.clock,
                read_timeout=self.read_timeout,
                pool_size=self._concurrency + 2,
            )
        except ValueError as exc:
            raise RepositoryError(
                f"{self.url}: cannot configure S3 client ({self._scrub(str(exc))})"
            ) from None

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _full(self, key: str) -> str:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise RepositoryError(f"{self.url}: invalid object key {key!r}")
        return self._base + key

    def _scrub(self, text: str) -> str:
        """``text`` without the secret key and without any URL userinfo."""
        secret = self.options.secret_access_key
        if secret:
            text = text.replace(secret, "***")
        raw_endpoint = self.options.endpoint
        if raw_endpoint and self._endpoint and raw_endpoint != self._endpoint:
            text = text.replace(raw_endpoint, self._endpoint)
        return _USERINFO.sub("//", text)

    def _error(self, action: str, key: str | None, exc: BaseException) -> RepositoryError:
        """A RepositoryError naming url, key and the S3 error code (no secrets)."""
        where = f"{self.url}/{key}" if key else self.url
        if isinstance(exc, MalformedAnswer):  # which server said it matters here
            server = self._endpoint or f"AWS S3 ({self.options.region or DEFAULT_REGION})"
            return RepositoryError(f"{where}: {action} failed: {server}: {self._scrub(str(exc))}")
        if isinstance(exc, S3Error):
            cls = ObjectNotFound if exc.code in NOT_FOUND_CODES else RepositoryError
            return cls(f"{where}: {action} failed: {self._scrub(str(exc))}")
        return RepositoryError(
            f"{where}: {action} failed: {type(exc).__name__}: {self._scrub(str(exc))}"
        )

    def _call(self, action: str, key: str | None, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run one client call; every S3, network or credential error becomes a RepositoryError."""
        try:
            return fn(*args, **kw)
        except (S3Error, NoCredentials, OSError, ValueError) as exc:
            raise self._error(action, key, exc) from None
        except Exception as exc:  # http.client.HTTPException and the like
            if type(exc).__module__ in ("http.client", "ssl", "socket"):
                raise self._error(action, key, exc) from None
            raise

    def _request(self, action: str, key: str | None, method: str, **kw: Any) -> Response:
        full = self._full(key) if key is not None else None
        result: Response = self._call(
            action, key, self.client.request, method, self.bucket, full, **kw
        )
        return result

    def _document(self, action: str, key: str | None, answer: Response, root: str) -> ET.Element:
        """``answer``'s body as the S3 document ``root``; RepositoryError naming the server,
        the object and ``action`` if it is anything else."""
        doc: ET.Element = self._call(action, key, answer.xml, root)
        return doc

    def _lock_headers(self, retain: bool) -> dict[str, str]:
        days = self.options.object_lock_days
        if days <= 0 or not retain:
            return {}
        until = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
        mode = self.options.object_lock_mode.upper()
        if mode not in ("GOVERNANCE", "COMPLIANCE"):
            raise RepositoryError(f"{self.url}: unknown Object Lock mode {mode!r}")
        return {
            "x-amz-object-lock-mode": mode,
            "x-amz-object-lock-retain-until-date": until.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }

    def _bucket_request(self, action: str, key: str | None, method: str, **kw: Any) -> Response:
        result: Response = self._call(action, key, self.client.request, method, self.bucket, **kw)
        return result


def iso_date(value: str, what: str) -> dt.datetime:
    """S3's ``2026-11-22T04:36:34.000Z`` (XML bodies, lock headers) as an aware datetime;
    MalformedAnswer naming ``what`` if it is not one."""
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedAnswer(f"{what} {value[:40]!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def number(value: str, what: str) -> int:
    """A byte count from an answer; MalformedAnswer naming ``what`` if it is not one."""
    if not value.isascii() or not value.isdigit():
        raise MalformedAnswer(f"{what} {value[:40]!r} is not a byte count")
    return int(value)


def http_date(head: Response) -> dt.datetime:
    raw = head.headers.get("last-modified")
    if not raw:
        return dt.datetime.now(dt.UTC)
    try:
        return email.utils.parsedate_to_datetime(raw).astimezone(dt.UTC)
    except (ValueError, TypeError):
        raise MalformedAnswer(f"Last-Modified {raw[:40]!r} is not an HTTP date") from None
