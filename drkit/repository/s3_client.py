"""A small S3 client over ``http.client``: just the calls S3Store makes.

Why not boto3: its client costs ~39 MiB of memory (parsed service models)
for the dozen requests drkit sends. This module sends SigV4-signed requests
(s3_sign.py) over a small pool of keep-alive connections, retries what
botocore's "standard" mode retries (connection errors, 5xx, throttling) with
jittered exponential backoff (``drkit.retry``, waiting on the client's
``clock``), and turns S3's XML errors into ``S3Error``.

Nothing here formats a credential: errors carry the S3 error code, the HTTP
status and the server's message; the endpoint is kept without userinfo.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from drkit.repository.s3_sign import (
    UNSIGNED_PAYLOAD,
    CredentialSource,
    amz_now,
    authorization,
    uri_encode,
)
from drkit.retry import SYSTEM_CLOCK, Backoff, Clock, retry

if TYPE_CHECKING:
    import ssl

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_RETRY_STATUS = frozenset({500, 502, 503, 504})
_RETRY_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "ServiceUnavailable",
    }
)
_NETWORK_ERRORS = (OSError, http.client.HTTPException)
# botocore "standard": full jitter on 2^attempt, capped at 20 s; attempts per client.
RETRY_BACKOFF = Backoff(attempts=5, base=0.5, cap=20.0, jitter=True)
_SEND_BLOCK = 1 << 18  # http.client reads a file body in pieces of this size (default 8 KiB)

Body = bytes | bytearray | memoryview | BinaryIO
"""A request body: bytes, or a file sent from its start (its size from fstat)."""


class S3Error(Exception):
    """An S3 request failed: ``code`` (S3 error code, or the HTTP status for bodiless answers)."""

    def __init__(self, code: str, status: int | None, message: str = "") -> None:
        self.code = code
        self.status = status
        self.message = message
        detail = f"{code} (HTTP {status})" if status else code
        if message and message != code:
            detail += f": {message}"
        super().__init__(detail)


class MalformedAnswer(ValueError):
    """A 2xx answer that is not what S3 sends there (a proxy's page, a broken server).

    The message says what was expected and what came (status, content type, size),
    never the body: it is the server's, and could be anything.
    """


@dataclass
class Response:
    """A finished request: status, headers (lower-case names) and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def xml(self, root: str) -> ET.Element:
        """The body as the S3 document ``root`` (namespace stripped); else MalformedAnswer."""
        doc = _parse(self.body)
        if doc is None:
            kind = self.headers.get("content-type") or "no content type"
            raise MalformedAnswer(
                f"HTTP {self.status} answer is not XML ({kind}, {len(self.body)} bytes) "
                f"where S3 sends <{root}>"
            )
        tag = doc.tag.rpartition("}")[2]  # a foreign namespace too: the name says enough
        if tag != root:
            code = f" {text(doc, 'Code')}" if tag == "Error" and text(doc, "Code") else ""
            raise MalformedAnswer(
                f"HTTP {self.status} answer is <{tag}>{code}, where S3 sends <{root}>"
            )
        return doc


class S3Client:
    """Signed requests to one S3 endpoint; safe to share between threads.

    ``endpoint`` is ``http[s]://host[:port]`` (userinfo ignored) or None for
    AWS (``https://s3.<region>.amazonaws.com``). ``path_style`` puts the
    bucket in the path, else in the host name (AWS virtual-hosted style).
    """

    def __init__(
        self,
        endpoint: str | None,
        region: str,
        credentials: CredentialSource,
        *,
        path_style: bool = True,
        max_attempts: int = 5,
        pool_size: int = 4,
        connect_timeout: float = 10,
        read_timeout: float = 120,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        parts = urlsplit(endpoint or f"https://s3.{region}.amazonaws.com")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"S3 endpoint must be http(s)://host[:port], not {parts.scheme!r}")
        self.region = region
        self.max_attempts = max(1, max_attempts)
        self.clock = clock  # what retries wait on
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base_path = parts.path.rstrip("/")
        self._path_style = path_style
        self._creds = credentials
        self._pool: list[http.client.HTTPConnection] = []
        self._pool_size = pool_size
        self._pool_lock = threading.Lock()
        self._timeouts = (connect_timeout, read_timeout)
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        scheme = "https" if self._https else "http"
        return f"S3Client({scheme}://{self._netloc(self._host)}, region={self.region!r})"

    # -- connections -----------------------------------------------------------

    def _netloc(self, host: str) -> str:
        default = 443 if self._https else 80
        return host if self._port in (None, default) else f"{host}:{self._port}"

    def _connect(self, host: str) -> http.client.HTTPConnection:
        connect_timeout, _read = self._timeouts
        if self._https:
            if self._ssl is None:
                import ssl  # only for https endpoints: ~1 MiB not spent on plain http

                self._ssl = ssl.create_default_context()
            return http.client.HTTPSConnection(
                host, self._port, timeout=connect_timeout, context=self._ssl, blocksize=_SEND_BLOCK
            )
        return http.client.HTTPConnection(
            host, self._port, timeout=connect_timeout, blocksize=_SEND_BLOCK
        )

    def _take(self, host: str) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to ``host`` (an idle one if any); True if it was reused."""
        with self._pool_lock:
            for i, conn in enumerate(self._pool):
                if conn.host == host:
                    return self._pool.pop(i), True
        return self._connect(host), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._pool_lock:
            if len(self._pool) < self._pool_size:
                self._pool.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()

    # -- requests --------------------------------------------------------------

    def _target(self, bucket: str | None, key: str | None) -> tuple[str, str]:
        """(host, URI-encoded path) for a bucket/key in this client's addressing style."""
        host = self._host
        path = self._base_path
        if bucket:
            if self._path_style or "." in bucket:
                path += "/" + uri_encode(bucket, keep_slash=False)
            else:
                host = f"{bucket}.{host}"
        if key is not None:
            path += "/" + uri_encode(key, keep_slash=True)
        return host, path or "/"

    def request(
        self,
        method: str,
        bucket: str | None,
        key: str | None = None,
        *,
        params: list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body = b"",
        stream: bool = False,
    ) -> Any:
        """Send one request (retrying transient failures); raise S3Error for any non-2xx.

        Returns a Response, or with ``stream`` a StreamingBody of a 2xx answer
        (whose connection goes back to the pool when read to the end). A file
        ``body`` is sent from its start on every attempt.
        """
        params = params or []
        host, path = self._target(bucket, key)
        query = "&".join(
            f"{uri_encode(k, keep_slash=False)}={uri_encode(v, keep_slash=False)}"
            if v != ""
            else uri_encode(k, keep_slash=False)
            for k, v in params
        )
        url = f"{path}?{query}" if query else path
        return retry(
            lambda: self._once(method, host, path, url, params, headers or {}, body, stream),
            backoff=replace(RETRY_BACKOFF, attempts=self.max_attempts),
            retryable=_retryable,
            clock=self.clock,
        )

    def _once(
        self,
        method: str,
        host: str,
        path: str,
        url: str,
        params: list[tuple[str, str]],
        extra: Mapping[str, str],
        body: Body,
        stream: bool,
    ) -> Any:
        creds = self._creds.get()
        amz_date = amz_now()
        headers = {
            "host": self._netloc(host),
            "x-amz-date": amz_date,
            "x-amz-content-sha256": UNSIGNED_PAYLOAD,
        }
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        headers.update({k.lower(): v for k, v in extra.items()})
        signed = dict(headers)
        headers["authorization"] = authorization(
            creds,
            method,
            path,
            params,
            signed,
            UNSIGNED_PAYLOAD,
            region=self.region,
            service="s3",
            amz_date=amz_date,
        )
        length = _body_length(body)
        if length or method in ("PUT", "POST"):
            headers["content-length"] = str(length)
        conn, reused = self._take(host)
        try:
            try:
                conn.request(method, url, body=_rewound(body, length), headers=headers)
                if conn.sock is not None:
                    conn.sock.settimeout(self._timeouts[1])
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # The server closed an idle keep-alive connection: one fresh try, no backoff.
                conn.close()
                conn = self._connect(host)
                conn.request(method, url, body=_rewound(body, length), headers=headers)
                if conn.sock is not None:
                    conn.sock.settimeout(self._timeouts[1])
                resp = conn.getresponse()
            if stream and 200 <= resp.status < 300:
                return StreamingBody(resp, conn, self)
            data = resp.read()  # also for HEAD: frees the connection for the next request
        except BaseException:
            conn.close()
            raise
        answer = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        if resp.will_close:
            conn.close()
        else:
            self._give_back(conn)
        if not 200 <= resp.status < 300:
            raise _error_of(answer)
        if method == "POST" and data.lstrip().startswith(b"<?xml") and b"<Error>" in data[:512]:
            # CompleteMultipartUpload can fail with 200 and an error document.
            raise _error_of(answer)
        return answer


def _retryable(exc: Exception) -> bool:
    """What botocore's "standard" mode retries: 5xx, throttling, the network."""
    if isinstance(exc, S3Error):
        return exc.status in _RETRY_STATUS or exc.code in _RETRY_CODES
    return isinstance(exc, _NETWORK_ERRORS)


def _body_length(body: Body) -> int:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    return os.fstat(body.fileno()).st_size


def _rewound(body: Body, length: int) -> Body | None:
    """What http.client should send: None for no body, a file from its start."""
    if not length:
        return None
    if not isinstance(body, (bytes, bytearray, memoryview)):
        body.seek(0)
    return body


class StreamingBody:
    """A GET's body, read in pieces; returns its connection to the pool at the end."""

    def __init__(
        self, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection, client: S3Client
    ) -> None:
        self._resp = resp
        self._conn: http.client.HTTPConnection | None = conn
        self._client = client
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}

    def readinto(self, buffer: memoryview) -> int:
        owed = self._resp.length  # bytes the Content-Length still promises (None: unknown)
        try:
            n = self._resp.readinto(buffer)
        except BaseException:
            self._discard()
            raise
        if n == 0 and len(buffer):
            if owed:  # http.client ends a body cut short as if it were whole
                self._discard()
                raise http.client.IncompleteRead(b"", owed)
            self._finish()
        return n

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._resp.isclosed() and not self._resp.will_close:
            self._client._give_back(conn)
        else:
            conn.close()

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        if self._conn is not None and self._resp.isclosed():
            self._finish()
        else:
            self._discard()  # unread rest: dropping the connection is cheaper than draining


def _parse(body: bytes) -> ET.Element | None:
    """``body`` as XML with S3's namespace stripped; None if it is not XML."""
    try:
        return _strip_ns(ET.fromstring(body))
    except ET.ParseError:
        return None


def _strip_ns(root: ET.Element) -> ET.Element:
    for el in root.iter():
        if el.tag.startswith(S3_NS):
            el.tag = el.tag[len(S3_NS) :]
    return root


def _error_of(answer: Response) -> S3Error:
    code, message = str(answer.status), http.client.responses.get(answer.status, "")
    root = _parse(answer.body) if answer.body else None
    if root is not None:  # else a proxy's page or nothing: the status says it
        code = (root.findtext("Code") or code).strip()
        message = (root.findtext("Message") or "").strip()
    return S3Error(code, answer.status, message)


def text(el: ET.Element, path: str) -> str:
    """The text at ``path`` under ``el`` ('' if absent)."""
    return (el.findtext(path) or "").strip()


def is_network_error(exc: BaseException) -> bool:
    return isinstance(exc, (*_NETWORK_ERRORS, socket.timeout))
