"""A repository in an S3 bucket (AWS S3, SeaweedFS, MinIO, B2, R2, Wasabi, ...).

Writes use drkit's own multipart upload so memory stays bounded at about
``part_size * (concurrency + 1)`` whatever the object size. Every part (and
every single-request object) carries a Content-MD5, so the server refuses
data corrupted in transit (``BadDigest``). On any exception the multipart
upload is aborted, so no partial object or orphaned upload is left behind.

Error messages name the store URL, the key and the AWS error code; they never
contain credentials or an endpoint's ``user:password@``.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import datetime as dt
import hashlib
import io
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from drkit.errors import ObjectNotFound, RepositoryError
from drkit.repository.factory import StoreOptions, safe_url
from drkit.repository.store import ObjectInfo, Store

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's maximum part count
DEFAULT_REGION = "us-east-1"
_READ_BUFFER = 1 << 20
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_NO_BUCKET_CODES = frozenset({"404", "NoSuchBucket", "NotFound"})
_USERINFO = re.compile(r"//[^/@\s]*@")

T = TypeVar("T")

IncompleteUpload = tuple[str, str, dt.datetime]
"""An open multipart upload: (key relative to the store, upload id, initiated)."""


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
        self.max_attempts = 5  # per request (botocore "standard" retries); before first use
        self._client: S3Client | None = None
        self._client_lock = threading.Lock()

    # -- plumbing ----------------------------------------------------------

    @property
    def client(self) -> S3Client:
        """The boto3 client, created on first use (boto3 is imported lazily)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> S3Client:
        import boto3.session
        from botocore.config import Config

        opts = self.options
        settings: dict[str, Any] = {
            "retries": {"mode": "standard", "max_attempts": self.max_attempts},
            "connect_timeout": 10,
            "read_timeout": 120,
            "max_pool_connections": self._concurrency + 4,
            "s3": {"addressing_style": "path" if opts.path_style else "auto"},
            # We send Content-MD5 ourselves; the newer default trailing CRC
            # checksums are refused by several S3-compatible services.
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        try:
            config = Config(**settings)
        except TypeError:  # botocore < 1.36 has no checksum settings
            del settings["request_checksum_calculation"]
            del settings["response_checksum_validation"]
            config = Config(**settings)
        kwargs: dict[str, Any] = {
            "region_name": opts.region or DEFAULT_REGION,
            "endpoint_url": self._endpoint,
            "config": config,
        }
        if opts.access_key_id and opts.secret_access_key:
            kwargs["aws_access_key_id"] = opts.access_key_id
            kwargs["aws_secret_access_key"] = opts.secret_access_key
        try:
            # A private session: boto3's default session is not thread-safe.
            return boto3.session.Session().client("s3", **kwargs)
        except Exception as exc:
            raise RepositoryError(
                f"{self.url}: cannot configure S3 client ({type(exc).__name__}: "
                f"{self._scrub(str(exc))})"
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
        """A RepositoryError naming url, key and the AWS error code (no secrets)."""
        from botocore.exceptions import ClientError

        where = f"{self.url}/{key}" if key else self.url
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code") or "Unknown")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = self._scrub(str(err.get("Message") or "")).strip()
            detail = f"{code} (HTTP {status})" if status else code
            if message and message != code:
                detail += f": {message}"
            cls = ObjectNotFound if code in _NOT_FOUND_CODES else RepositoryError
            return cls(f"{where}: {action} failed: {detail}")
        return RepositoryError(
            f"{where}: {action} failed: {type(exc).__name__}: {self._scrub(str(exc))}"
        )

    def _call(self, action: str, key: str | None, fn: Callable[..., T], **kwargs: Any) -> T:
        """Run one boto3 call; every botocore error becomes a RepositoryError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(action, key, exc) from None

    def _lock_args(self) -> dict[str, Any]:
        days = self.options.object_lock_days
        if days <= 0:
            return {}
        until = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
        mode = self.options.object_lock_mode.upper()
        if mode not in ("GOVERNANCE", "COMPLIANCE"):
            raise RepositoryError(f"{self.url}: unknown Object Lock mode {mode!r}")
        return {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": until}

    # -- Store -------------------------------------------------------------

    def put(self, key: str, stream: BinaryIO) -> int:
        full = self._full(key)
        first = _read_full(stream, self._part_size)
        if len(first) < self._part_size:
            self._call(
                "put",
                key,
                self.client.put_object,
                Bucket=self.bucket,
                Key=full,
                Body=first,
                ContentLength=len(first),
                ContentMD5=_md5_b64(first),
                **self._lock_args(),
            )
            return len(first)
        head = [first]
        del first  # ``head`` owns the first part now; _upload_parts lets go of it
        return self._put_multipart(key, full, head, stream)

    def _put_multipart(self, key: str, full: str, head: list[bytes], stream: BinaryIO) -> int:
        created = self._call(
            "start upload of",
            key,
            self.client.create_multipart_upload,
            Bucket=self.bucket,
            Key=full,
            **self._lock_args(),
        )
        upload_id = created["UploadId"]
        try:
            total, parts = self._upload_parts(key, full, upload_id, head, stream)
            self._call(
                "complete upload of",
                key,
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(parts.items())]
                },
            )
        except BaseException as exc:
            self._abort_after_failure(key, full, upload_id, exc)
            raise
        return total

    def _upload_parts(
        self, key: str, full: str, upload_id: str, head: list[bytes], stream: BinaryIO
    ) -> tuple[int, dict[int, str]]:
        """Upload the part in ``head`` and the rest of ``stream``, ``concurrency`` at a time.

        Memory: at most ``concurrency`` parts in flight plus the one being
        read (no other reference to a part is kept). Returns (bytes uploaded,
        part number -> ETag). On exception, cancels queued part uploads and
        waits for running ones before returning, so an abort comes after them.
        """
        part_size = self._part_size
        parts: dict[int, str] = {}
        inflight: set[Future[tuple[int, str]]] = set()
        total = 0
        number = 0
        chunk = head.pop()

        def collect(block_until: int) -> None:
            # Wait until at most ``block_until`` uploads are still running.
            while len(inflight) > block_until:
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    inflight.discard(fut)
                    n, etag = fut.result()  # re-raises the part's error
                    parts[n] = etag

        pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="drkit-s3-put")
        try:
            while True:
                number += 1
                if number > MAX_PARTS:
                    raise RepositoryError(
                        f"{self.url}/{key}: object needs more than {MAX_PARTS} parts of "
                        f"{part_size} bytes; raise part_size"
                    )
                collect(self._concurrency - 1)
                inflight.add(pool.submit(self._upload_part, key, full, upload_id, number, chunk))
                total += len(chunk)
                if len(chunk) < part_size:
                    break  # a short read means end of stream
                chunk = b""  # drop our reference before reading the next part
                chunk = _read_full(stream, part_size)
                if not chunk:
                    break
            collect(0)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return total, parts

    def _upload_part(
        self, key: str, full: str, upload_id: str, number: int, data: bytes
    ) -> tuple[int, str]:
        result = self._call(
            f"upload part {number} of",
            key,
            self.client.upload_part,
            Bucket=self.bucket,
            Key=full,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ContentLength=len(data),
            ContentMD5=_md5_b64(data),
        )
        return number, result["ETag"]

    def _abort_after_failure(
        self, key: str, full: str, upload_id: str, cause: BaseException
    ) -> None:
        try:
            self._abort(key, full, upload_id)
        except Exception as exc:  # keep the original error; say the upload is left over
            cause.add_note(f"also: could not abort the multipart upload: {exc}")

    def _abort(self, key: str, full: str, upload_id: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code not in _NOT_FOUND_CODES and code != "NoSuchUpload":
                raise self._error("abort upload of", key, exc) from None
        except BotoCoreError as exc:
            raise self._error("abort upload of", key, exc) from None

    def get(self, key: str) -> BinaryIO:
        full = self._full(key)
        try:
            response = self._call("read", key, self.client.get_object, Bucket=self.bucket, Key=full)
        except ObjectNotFound:
            raise ObjectNotFound(f"{self.url}: no object {key}") from None
        raw = _BodyReader(response["Body"], self, key)
        return io.BufferedReader(raw, buffer_size=_READ_BUFFER)

    def stat(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        try:
            head = self._call("stat", key, self.client.head_object, Bucket=self.bucket, Key=full)
        except ObjectNotFound:
            return None
        return ObjectInfo(key, int(head["ContentLength"]), head["LastModified"])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Sorted here: some S3-compatible servers (SeaweedFS) list in directory
        # walk order, not in the byte order AWS S3 guarantees.
        found: list[ObjectInfo] = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self._base + prefix)
        for page in self._pages("list", prefix or None, pages):
            for obj in page.get("Contents", []):
                full = obj["Key"]
                if not full.startswith(self._base) or full.endswith("/"):
                    continue
                found.append(ObjectInfo(full[len(self._base) :], obj["Size"], obj["LastModified"]))
        found.sort(key=lambda o: o.key)
        yield from found

    def _pages(self, action: str, key: str | None, pages: Any) -> Iterator[Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        iterator = iter(pages)
        while True:
            try:
                page = next(iterator)
            except StopIteration:
                return
            except (BotoCoreError, ClientError) as exc:
                raise self._error(action, key, exc) from None
            yield page

    def delete(self, key: str) -> None:
        full = self._full(key)
        with contextlib.suppress(ObjectNotFound):  # absent key: nothing to do
            self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=full)

    # -- maintenance (init, prune) -------------------------------------------

    def ensure_bucket(self) -> bool:
        """Create the bucket if missing (with Object Lock if configured); True if created."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code not in _NO_BUCKET_CODES:
                raise self._error("open bucket", None, exc) from None
        except Exception as exc:
            raise self._error("open bucket", None, exc) from None
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.options.region or DEFAULT_REGION
        if region != DEFAULT_REGION:
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        if self.options.object_lock_days > 0:
            kwargs["ObjectLockEnabledForBucket"] = True
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
            raise self._error("create bucket", None, exc) from None
        except Exception as exc:
            raise self._error("create bucket", None, exc) from None
        return True

    def object_lock_enabled(self) -> bool:
        """True if the bucket has Object Lock enabled (so retention can be set on writes)."""
        from botocore.exceptions import ClientError

        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"):
                return False
            raise self._error("read Object Lock configuration of", None, exc) from None
        except Exception as exc:
            raise self._error("read Object Lock configuration of", None, exc) from None
        enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        return bool(enabled == "Enabled")

    def list_incomplete_uploads(self, prefix: str = "") -> builtins.list[IncompleteUpload]:
        """Open multipart uploads under this store: (key, upload id, initiated), key order."""
        seen: set[tuple[str, str]] = set()
        found: list[IncompleteUpload] = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self._base + prefix)
        for page in self._pages("list uploads", prefix or None, pages):
            for upload in page.get("Uploads", []):
                full, upload_id = upload["Key"], upload["UploadId"]
                if not full.startswith(self._base) or (full, upload_id) in seen:
                    continue
                seen.add((full, upload_id))
                found.append((full[len(self._base) :], upload_id, upload["Initiated"]))
        found.sort(key=lambda u: (u[0], u[2], u[1]))
        return found

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one open multipart upload; an already-gone upload is not an error."""
        self._abort(key, self._full(key), upload_id)


class _BodyReader(io.RawIOBase):
    """A botocore StreamingBody as a raw binary stream (errors become RepositoryError)."""

    def __init__(self, body: Any, store: S3Store, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError

        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except (BotoCoreError, OSError) as exc:
            raise self._store._error("read", self._key, exc) from None
        n = len(data)
        view[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at end of stream."""
    data = stream.read(size)
    if not data or len(data) == size:
        return bytes(data or b"")
    pieces = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            break
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


def _md5_b64(data: bytes) -> str:
    """Content-MD5 value: integrity check in transit, not a security digest."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
