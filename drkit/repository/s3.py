"""A repository in an S3 bucket (AWS S3, SeaweedFS, MinIO, B2, R2, Wasabi, ...).

Requests go through drkit's own small S3 client (s3_client.py, SigV4 in
s3_sign.py): boto3 costs ~39 MiB of memory for the dozen calls we make.

Writes use our own multipart upload; each part is spooled to an unlinked
temporary file (``TMPDIR``) before it is sent, so memory stays flat whatever
the object size, part size or concurrency (disk: ``part_size * (concurrency
+ 1)`` at most). Every part (and
every single-request object) carries a Content-MD5, so the server refuses
data corrupted in transit (``BadDigest``). On any exception the multipart
upload is aborted, so no partial object or orphaned upload is left behind.

Error messages name the store URL, the key and the S3 error code; they never
contain credentials or an endpoint's ``user:password@``.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import datetime as dt
import email.utils
import hashlib
import io
import os
import re
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO, TypeVar
from urllib.parse import unquote
from xml.sax.saxutils import escape

from drkit.errors import ObjectNotFound, RepositoryError
from drkit.repository.options import StoreOptions, safe_url
from drkit.repository.s3_client import (
    RETRY_BACKOFF,
    MalformedAnswer,
    Response,
    S3Client,
    S3Error,
    StreamingBody,
    is_network_error,
    text,
)
from drkit.repository.s3_sign import Credentials, CredentialSource, NoCredentials
from drkit.repository.store import IncompleteUpload, ObjectInfo, Store, Written
from drkit.retry import SYSTEM_CLOCK, Clock

MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's maximum part count
DEFAULT_REGION = "us-east-1"
_READ_BUFFER = 1 << 20
# A finished file up to this size goes in one PUT (S3 allows 5 GiB); beyond it a
# multipart upload, whose parts a failure retries one by one.
SINGLE_PUT_MAX = 256 << 20
_SPOOL_BLOCK = 1 << 18  # bytes read from the encoder per write to a part spool
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_NO_BUCKET_CODES = frozenset({"404", "NoSuchBucket", "NotFound"})
_NO_LOCK_CODES = frozenset(
    {"ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"}
)
_USERINFO = re.compile(r"//[^/@\s]*@")
_FOREVER = dt.datetime.max.replace(tzinfo=dt.UTC)
_RETAIN_MARGIN = dt.timedelta(hours=1)

T = TypeVar("T")


class _ConditionsUnsupported(Exception):
    """The server rejects conditional writes (501): write unconditionally instead."""


class S3Store(Store):
    """Objects are S3 keys under ``prefix/`` in ``bucket``."""

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
            cls = ObjectNotFound if exc.code in _NOT_FOUND_CODES else RepositoryError
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

    # -- Store -------------------------------------------------------------

    def put_without_retention(self, key: str, stream: BinaryIO) -> int:
        return self.put(key, stream, retain=False)

    def put(self, key: str, stream: BinaryIO, *, retain: bool = True) -> int:
        """See Store.put; ``retain=False`` writes without Object Lock retention (lock objects)."""
        self._full(key)
        first = _spool_part(stream, self._part_size, f"{self.url}/{key}")
        if first.size < self._part_size:
            with first:
                self._request(
                    "put", key, "PUT", body=first.file,
                    headers={"content-md5": first.md5, **self._lock_headers(retain)},
                )  # fmt: skip
                return first.size
        return self._put_multipart(key, self._full(key), first, stream, retain)

    def put_file(self, key: str, file: BinaryIO) -> int:
        """A finished file (a pack) up to ``SINGLE_PUT_MAX`` in one PUT: a 16 MiB pack
        was a multipart upload of 5 MiB parts, six requests and three re-spooled parts."""
        size = os.fstat(file.fileno()).st_size
        if size < self._part_size or size > SINGLE_PUT_MAX:
            return super().put_file(key, file)
        self._full(key)
        md5 = hashlib.md5(usedforsecurity=False)
        file.seek(0)
        for block in iter(lambda: file.read(_SPOOL_BLOCK), b""):
            md5.update(block)
        # The client sends the file from its start (fstat length) on every attempt.
        self._request(
            "put", key, "PUT", body=file,
            headers={"content-md5": _content_md5(md5), **self._lock_headers(True)},
        )  # fmt: skip
        return size

    def put_bytes(self, key: str, data: bytes, *, retain: bool = True) -> int:
        """An object already in memory (a chunk, a manifest): below a part, sent as is."""
        if len(data) >= self._part_size:
            return super().put_bytes(key, data, retain=retain)
        self._full(key)
        md5 = hashlib.md5(data, usedforsecurity=False)
        self._request(
            "put", key, "PUT", body=data,
            headers={"content-md5": _content_md5(md5), **self._lock_headers(retain)},
        )  # fmt: skip
        return len(data)

    def get_bytes_tagged(self, key: str) -> tuple[bytes, str | None]:
        try:
            answer = self._request("read", key, "GET")
        except ObjectNotFound:
            raise ObjectNotFound(f"{self.url}: no object {key}") from None
        return answer.body, answer.headers.get("etag")

    def put_bytes_if(self, key: str, data: bytes, *, tag: str | None) -> Written:
        """A PUT with ``If-None-Match: *`` (create) or ``If-Match: tag`` (replace).

        Servers that do not know a header ignore it and write anyway, so the
        first write with each header proves the server checks it, with a write
        it must refuse: create again what it just wrote, or replace it under an
        ETag it cannot have. Where it does not (or answers 501), that kind of
        write is UNCHECKED.
        """
        header, value = ("if-none-match", "*") if tag is None else ("if-match", tag)
        if self._checks.get(header) is False:
            return super().put_bytes_if(key, data, tag=tag)
        try:
            if not self._put_condition(key, data, {header: value}):
                return Written.REFUSED
            if header not in self._checks:
                refused = {header: "*" if tag is None else '"drkit-not-an-etag"'}
                self._checks[header] = not self._put_condition(key, data, refused)
        except _ConditionsUnsupported:
            self._checks[header] = False
            return super().put_bytes_if(key, data, tag=tag)
        return Written.YES if self._checks[header] else Written.UNCHECKED

    def _put_condition(self, key: str, data: bytes, condition: dict[str, str]) -> bool:
        """PUT ``data`` without retention under ``condition``; False if the server refused
        (412; 409 while another conditional write of the key is in flight)."""
        md5 = _content_md5(hashlib.md5(data, usedforsecurity=False))
        headers = {"content-md5": md5, **condition}

        def put() -> bool:
            try:
                self.client.request("PUT", self.bucket, self._full(key), body=data, headers=headers)
            except S3Error as exc:
                if exc.status in (409, 412):
                    return False
                if exc.status == 501 or exc.code == "NotImplemented":
                    raise _ConditionsUnsupported from None
                raise
            return True

        return self._call("put", key, put)

    def _put_multipart(
        self, key: str, full: str, first: _SpooledPart, stream: BinaryIO, retain: bool
    ) -> int:
        try:
            created = self._request(
                "start upload of", key, "POST", params=[("uploads", "")],
                headers=self._lock_headers(retain),
            )  # fmt: skip
            answer = self._document(
                "start upload of", key, created, "InitiateMultipartUploadResult"
            )
            upload_id = text(answer, "UploadId")
            if not upload_id:
                raise RepositoryError(f"{self.url}/{key}: start upload of failed: no UploadId")
        except BaseException:
            first.close()
            raise
        try:
            total, parts = self._upload_parts(key, full, upload_id, first, stream)
            doc = "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
                for n, etag in sorted(parts.items())
            )
            completed = self._request(
                "complete upload of", key, "POST", params=[("uploadId", upload_id)],
                body=f"<CompleteMultipartUpload>{doc}</CompleteMultipartUpload>".encode(),
            )  # fmt: skip
            # Anything but the result document is no proof the object was assembled.
            self._document("complete upload of", key, completed, "CompleteMultipartUploadResult")
        except BaseException as exc:
            left = self._abort_after_failure(key, full, upload_id, exc)
            if left and isinstance(exc, RepositoryError):  # say it, whoever re-words the error
                raise RepositoryError(f"{exc}; {left}") from exc
            raise
        return total

    def _upload_parts(
        self, key: str, full: str, upload_id: str, first: _SpooledPart, stream: BinaryIO
    ) -> tuple[int, dict[int, str]]:
        """Upload ``first`` and the rest of ``stream``, ``concurrency`` parts at a time.

        Each part is spooled to an unlinked temporary file before it is sent,
        so memory does not grow with part size or concurrency: at most
        ``concurrency`` parts uploading plus the one being filled exist, on
        disk (page cache the kernel can write back or drop), each deleted as
        soon as it is sent. Returns (bytes uploaded, part number -> ETag). On
        exception, cancels queued part uploads and waits for running ones
        before returning, so an abort comes after them.
        """
        part_size = self._part_size
        parts: dict[int, str] = {}
        inflight: dict[Future[tuple[int, str]], _SpooledPart] = {}
        total = 0
        number = 0
        part: _SpooledPart | None = first

        def collect(block_until: int) -> None:
            # Wait until at most ``block_until`` uploads are still running.
            while len(inflight) > block_until:
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    inflight.pop(fut).close()
                    n, etag = fut.result()  # re-raises the part's error
                    parts[n] = etag

        pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="drkit-s3-put")
        try:
            while part is not None:
                number += 1
                if number > MAX_PARTS:
                    raise RepositoryError(
                        f"{self.url}/{key}: object needs more than {MAX_PARTS} parts of "
                        f"{part_size} bytes; raise part_size"
                    )
                collect(self._concurrency - 1)
                fut = pool.submit(self._upload_part, key, upload_id, number, part)
                inflight[fut] = part
                total += part.size
                if part.size < part_size:
                    part = None  # a short part means end of stream
                    break
                part = _spool_part(stream, part_size, f"{self.url}/{key}")
                if part.size == 0:
                    part.close()
                    part = None
            collect(0)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for spooled in inflight.values():
                spooled.close()
            if part is not None:
                part.close()
        return total, parts

    def _upload_part(
        self, key: str, upload_id: str, number: int, part: _SpooledPart
    ) -> tuple[int, str]:
        result = self._request(
            f"upload part {number} of", key, "PUT",
            params=[("partNumber", str(number)), ("uploadId", upload_id)],
            body=part.file, headers={"content-md5": part.md5},
        )  # fmt: skip
        etag = result.headers.get("etag")
        if not etag:
            raise RepositoryError(f"{self.url}/{key}: upload part {number} failed: no ETag")
        return number, etag

    def _abort_after_failure(
        self, key: str, full: str, upload_id: str, cause: BaseException
    ) -> str:
        """Abort the upload after ``cause``; if that fails too, a sentence saying the
        upload is left over (also noted on ``cause``), else ''."""
        try:
            self._abort(key, full, upload_id)
        except Exception as exc:  # keep the original error; say the upload is left over
            left = (
                f"also: could not abort the multipart upload ({exc}); `drkit prune` aborts "
                "it once it is older than the grace period"
            )
            cause.add_note(left)
            return left
        return ""

    def _abort(self, key: str, full: str, upload_id: str) -> None:
        try:
            self._request("abort upload of", key, "DELETE", params=[("uploadId", upload_id)])
        except ObjectNotFound:
            pass
        except RepositoryError as exc:
            if "NoSuchUpload" not in str(exc):
                raise

    def get(self, key: str) -> BinaryIO:
        try:
            body = self._request("read", key, "GET", stream=True)
        except ObjectNotFound:
            raise ObjectNotFound(f"{self.url}: no object {key}") from None
        raw = _BodyReader(body, self, key)  # type: ignore[arg-type]
        return io.BufferedReader(raw, buffer_size=_READ_BUFFER)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """One ranged GET; an answer that is not exactly that range is refused."""
        end = start + length - 1
        try:
            answer = self._request("read", key, "GET", headers={"range": f"bytes={start}-{end}"})
        except ObjectNotFound:
            raise ObjectNotFound(f"{self.url}: no object {key}") from None
        got = answer.headers.get("content-range", "")
        if answer.status != 206 or not got.startswith(f"bytes {start}-{end}/"):
            raise RepositoryError(
                f"{self.url}/{key}: read of bytes {start}-{end} was answered HTTP "
                f"{answer.status} {got or '(no Content-Range)'} ({len(answer.body)} bytes)"
            )
        if len(answer.body) != length:
            raise RepositoryError(
                f"{self.url}/{key}: read of bytes {start}-{end} gave {len(answer.body)} bytes"
            )
        return bytes(answer.body)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._request("stat", key, "HEAD")
        except ObjectNotFound:
            return None
        size = self._call("stat", key, _number, head.headers.get("content-length", "0"), "size")
        return ObjectInfo(key, size, self._call("stat", key, _http_date, head))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Sorted here: some S3-compatible servers (SeaweedFS) list in directory
        # walk order, not in the byte order AWS S3 guarantees.
        found: list[ObjectInfo] = []
        for page in self._list_pages(prefix):
            found += self._call("list", prefix or None, self._listed, page)
        found.sort(key=lambda o: o.key)
        yield from found

    def _listed(self, page: ET.Element) -> builtins.list[ObjectInfo]:
        """The objects of one listing page under this store; MalformedAnswer if a size or
        time in it is not one."""
        found = []
        for obj in page.findall("Contents"):
            full = unquote(text(obj, "Key"))
            if not full.startswith(self._base) or full.endswith("/"):
                continue
            size = _number(text(obj, "Size"), "<Size>")
            modified = _iso_date(text(obj, "LastModified"), "<LastModified>")
            found.append(ObjectInfo(full[len(self._base) :], size, modified))
        return found

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """One delimiter listing: the common prefixes, not every object below them."""
        found: set[str] = set()
        for page in self._list_pages(prefix, delimiter="/"):
            for common in page.findall("CommonPrefixes"):
                name = unquote(text(common, "Prefix"))[len(self._base + prefix) :].strip("/")
                if name:
                    found.add(name)
        return sorted(found)

    def _list_pages(self, prefix: str, delimiter: str = "") -> Iterator[ET.Element]:
        """Every page of a ListObjectsV2 of ``prefix``, following continuation tokens."""
        token = ""
        seen: set[str] = set()
        while True:
            params = [("list-type", "2"), ("prefix", self._base + prefix)]
            params += [("delimiter", delimiter)] if delimiter else []
            params += [("encoding-type", "url"), ("max-keys", str(self.list_page_size))]
            if token:
                params.append(("continuation-token", token))
            answer = self._bucket_request("list", prefix or None, "GET", params=params)
            page = self._document("list", prefix or None, answer, "ListBucketResult")
            yield page
            token = text(page, "NextContinuationToken")
            if text(page, "IsTruncated") != "true" or not token:
                return
            if token in seen:  # a server going round in circles would list forever
                raise self._error(
                    "list",
                    prefix or None,
                    MalformedAnswer("its listing repeats a continuation token"),
                )
            seen.add(token)

    def _bucket_request(self, action: str, key: str | None, method: str, **kw: Any) -> Response:
        result: Response = self._call(action, key, self.client.request, method, self.bucket, **kw)
        return result

    def delete(self, key: str) -> None:
        with contextlib.suppress(ObjectNotFound):  # absent key: nothing to do
            self._request("delete", key, "DELETE")

    # -- maintenance (init, prune) -------------------------------------------

    def ensure_bucket(self) -> bool:
        """Create the bucket if missing (with Object Lock if configured); True if created."""
        try:
            self.client.request("HEAD", self.bucket)
            return False
        except S3Error as exc:
            if exc.code not in _NO_BUCKET_CODES:
                raise self._error("open bucket", None, exc) from None
        except Exception as exc:
            raise self._error("open bucket", None, exc) from None
        headers: dict[str, str] = {}
        body = b""
        region = self.options.region or DEFAULT_REGION
        if region != DEFAULT_REGION:
            body = (
                '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<LocationConstraint>{escape(region)}</LocationConstraint>"
                "</CreateBucketConfiguration>"
            ).encode()
        if self.options.object_lock_days > 0:
            headers["x-amz-bucket-object-lock-enabled"] = "true"
        try:
            self.client.request("PUT", self.bucket, headers=headers, body=body)
        except S3Error as exc:
            if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
            raise self._error("create bucket", None, exc) from None
        except Exception as exc:
            raise self._error("create bucket", None, exc) from None
        return True

    def object_lock_enabled(self) -> bool:
        """True if the bucket has Object Lock enabled (so retention can be set on writes)."""
        action = "read Object Lock configuration of"
        try:
            conf = self.client.request("GET", self.bucket, params=[("object-lock", "")])
        except S3Error as exc:
            if exc.code in _NO_LOCK_CODES:
                return False
            raise self._error(action, None, exc) from None
        except Exception as exc:
            raise self._error(action, None, exc) from None
        doc = self._document(action, None, conf, "ObjectLockConfiguration")
        return text(doc, "ObjectLockEnabled") == "Enabled"

    def object_retention(self, key: str) -> dt.datetime | None:
        """When ``key``'s Object Lock retention ends (datetime.max under legal hold), or None.

        Used by prune. Reads the bucket's configuration once: in a bucket
        without Object Lock nothing is locked and no object is asked.
        Raises RepositoryError naming the object if the server cannot say.
        """
        if self._lock_enabled is None:
            try:
                self._lock_enabled = self.object_lock_enabled()
            except RepositoryError:
                self._lock_enabled = True  # cannot tell: ask each object rather than assume
        if not self._lock_enabled:
            return None
        head = self._request("read retention of", key, "HEAD")
        if head.headers.get("x-amz-object-lock-legal-hold", "").upper() == "ON":
            return _FOREVER
        until = head.headers.get("x-amz-object-lock-retain-until-date")
        if not until:
            # Some servers leave the lock headers out of HEAD: ask for retention itself.
            try:
                answer = self._request("read retention of", key, "GET", params=[("retention", "")])
            except RepositoryError as exc:
                if any(code in str(exc) for code in _NO_LOCK_CODES):
                    return None
                raise
            doc = self._document("read retention of", key, answer, "Retention")
            until = text(doc, "RetainUntilDate")
        if not until:
            return None
        return self._call("read retention of", key, _iso_date, until, "retain-until date")

    def extend_retention(self, key: str) -> bool:
        """PutObjectRetention (in the store's lock mode) to what a write now gets, plus
        ``_RETAIN_MARGIN`` so that a reused pack outlives the manifest committed after
        it; nothing when its retention already ends later. False when this store
        writes without retention."""
        headers = self._lock_headers(retain=True)
        if not headers:
            return False
        until = (
            dt.datetime.now(dt.UTC)
            + _RETAIN_MARGIN
            + dt.timedelta(days=self.options.object_lock_days)
        )
        current = self.object_retention(key)
        if current is not None and current >= until:
            return True
        mode = headers["x-amz-object-lock-mode"]
        stamp = until.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        body = (
            '<Retention xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Mode>{mode}</Mode><RetainUntilDate>{stamp}</RetainUntilDate></Retention>"
        ).encode()
        md5 = _content_md5(hashlib.md5(body, usedforsecurity=False))
        self._request(
            "extend retention of", key, "PUT", params=[("retention", "")], body=body,
            headers={"content-md5": md5, "content-type": "application/xml"},
        )  # fmt: skip
        return True

    def list_incomplete_uploads(self, prefix: str = "") -> builtins.list[IncompleteUpload]:
        """Open multipart uploads under this store: (key, upload id, initiated), key order."""
        action = "list uploads"
        seen: set[tuple[str, str]] = set()
        found: list[IncompleteUpload] = []
        key_marker = upload_marker = ""
        while True:
            params = [
                ("uploads", ""),
                ("prefix", self._base + prefix),
                ("encoding-type", "url"),
                ("max-uploads", str(self.list_page_size)),
            ]
            if key_marker:
                params.append(("key-marker", key_marker))
            if upload_marker:
                params.append(("upload-id-marker", upload_marker))
            page = self._bucket_request(action, prefix or None, "GET", params=params)
            doc = self._document(action, prefix or None, page, "ListMultipartUploadsResult")
            new = 0
            for upload in doc.findall("Upload"):
                full, upload_id = unquote(text(upload, "Key")), text(upload, "UploadId")
                if (full, upload_id) in seen:
                    continue
                seen.add((full, upload_id))
                new += 1
                if full.startswith(self._base):
                    when = text(upload, "Initiated")
                    initiated = self._call(action, prefix or None, _iso_date, when, "<Initiated>")
                    found.append((full[len(self._base) :], upload_id, initiated))
            # SeaweedFS pages by upload id and sends no NextKeyMarker: follow what is given.
            key_marker = unquote(text(doc, "NextKeyMarker"))
            upload_marker = text(doc, "NextUploadIdMarker")
            if text(doc, "IsTruncated") != "true" or not new or not (key_marker or upload_marker):
                break
        found.sort(key=lambda u: (u[0], u[2], u[1]))
        return found

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one open multipart upload; an already-gone upload is not an error."""
        self._abort(key, self._full(key), upload_id)


class _BodyReader(io.RawIOBase):
    """A streaming GET body as a raw binary stream (errors become RepositoryError).

    A body that breaks off (connection reset, fewer bytes than its
    Content-Length, read timeout) is resumed where it stopped with a ranged
    GET of the same version (``If-Match`` on the first answer's ETag), as
    the client retries whole requests: up to the store's attempts in all.
    """

    def __init__(self, body: StreamingBody, store: S3Store, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key
        self._offset = 0
        self._etag = body.headers.get("etag")
        self._attempt = 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            try:
                n = self._body.readinto(view)
            except Exception as exc:
                if not self._etag or not is_network_error(exc):
                    raise self._store._error("read", self._key, exc) from None
                if self._attempt >= self._store.max_attempts:
                    raise self._store._error(
                        f"read (at byte {self._offset}, {self._attempt} attempts)", self._key, exc
                    ) from None
                self._resume()
                continue
            self._offset += n
            return n

    def _resume(self) -> None:
        """Read on from ``_offset``: a ranged GET of the version first read."""
        self._body.close()
        self._store.clock.sleep(RETRY_BACKOFF.delay(self._attempt - 1))
        self._attempt += 1
        assert self._etag is not None
        headers = {"range": f"bytes={self._offset}-", "if-match": self._etag}
        body: StreamingBody = self._store._request(
            "read", self._key, "GET", headers=headers, stream=True
        )  # type: ignore[assignment]
        self._body = body
        got = body.headers.get("content-range", "")
        if body.status != 206 or not got.startswith(f"bytes {self._offset}-"):
            body.close()
            raise RepositoryError(
                f"{self._store.url}/{self._key}: read failed: resuming at byte {self._offset} "
                f"was answered HTTP {body.status} {got or '(no Content-Range)'}"
            )

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


class _SpooledPart:
    """One part's bytes in an unlinked temporary file, with its size and Content-MD5."""

    def __init__(self, file: BinaryIO, size: int, md5: str) -> None:
        self.file = file
        self.size = size
        self.md5 = md5

    def close(self) -> None:
        self.file.close()  # an unlinked file: closing frees its blocks

    def __enter__(self) -> _SpooledPart:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _spool_part(stream: BinaryIO, size: int, where: str) -> _SpooledPart:
    """Up to ``size`` bytes of ``stream`` in a temporary file; fewer only at end of stream.
    ``where``: the object's URL, for an error writing the spool (a full ``TMPDIR``).

    Why a file and not memory: a part is 5 MiB or more and two or three exist
    at once; in the page cache they cost the process nothing, and the kernel
    may drop them under pressure (restic spools its packs the same way).
    """
    try:
        spool = tempfile.TemporaryFile(prefix="drkit-part-")  # noqa: SIM115 (closed by the part)
    except OSError as exc:
        raise _spool_error(where, exc) from exc
    try:
        md5 = hashlib.md5(usedforsecurity=False)  # integrity in transit, not security
        got = 0
        while got < size:
            data = stream.read(min(_SPOOL_BLOCK, size - got))
            if not data:
                break
            md5.update(data)
            try:
                spool.write(data)
            except OSError as exc:
                raise _spool_error(where, exc) from exc
            got += len(data)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return _SpooledPart(spool, got, _content_md5(md5))


def _spool_error(where: str, exc: OSError) -> RepositoryError:
    return RepositoryError(
        f"{where}: cannot spool an upload part in {tempfile.gettempdir()} (TMPDIR): "
        f"{exc.strerror or exc}; free space there or set TMPDIR to a larger filesystem, "
        "then run again"
    )


def _content_md5(md5: Any) -> str:
    """Content-MD5 header value of a finished md5 hash object."""
    return base64.b64encode(md5.digest()).decode("ascii")


def _iso_date(value: str, what: str) -> dt.datetime:
    """S3's ``2026-11-22T04:36:34.000Z`` (XML bodies, lock headers) as an aware datetime;
    MalformedAnswer naming ``what`` if it is not one."""
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedAnswer(f"{what} {value[:40]!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _number(value: str, what: str) -> int:
    """A byte count from an answer; MalformedAnswer naming ``what`` if it is not one."""
    if not value.isascii() or not value.isdigit():
        raise MalformedAnswer(f"{what} {value[:40]!r} is not a byte count")
    return int(value)


def _http_date(head: Response) -> dt.datetime:
    raw = head.headers.get("last-modified")
    if not raw:
        return dt.datetime.now(dt.UTC)
    try:
        return email.utils.parsedate_to_datetime(raw).astimezone(dt.UTC)
    except (ValueError, TypeError):
        raise MalformedAnswer(f"Last-Modified {raw[:40]!r} is not an HTTP date") from None
