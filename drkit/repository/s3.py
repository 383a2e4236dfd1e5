"""A repository in an S3 bucket (AWS S3, SeaweedFS, MinIO, B2, R2, Wasabi, ...).

Requests go through drkit's own small S3 client (s3_client.py, SigV4 in
s3_sign.py): boto3 costs ~39 MiB of memory for the dozen calls we make.

The store is split along its seams: this module holds ``S3Store`` (puts,
conditional puts, reads, listings, deletes); s3_base.py the plumbing every part
shares (client, keys, errors, lock headers); s3_multipart.py multipart uploads,
spooled part by part to temporary files so memory stays flat; s3_lock.py the
bucket and Object Lock retention. Every single-request object carries a
Content-MD5, so the server refuses data corrupted in transit (``BadDigest``).

Error messages name the store URL, the key and the S3 error code; they never
contain credentials or an endpoint's ``user:password@``.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import unquote

from drkit.errors import ObjectNotFound, RepositoryError
from drkit.repository import s3_multipart as parts
from drkit.repository.s3_base import DEFAULT_REGION, MIN_PART_SIZE, http_date, iso_date, number
from drkit.repository.s3_client import (
    RETRY_BACKOFF,
    MalformedAnswer,
    S3Error,
    StreamingBody,
    is_network_error,
    text,
)
from drkit.repository.s3_lock import S3ObjectLock
from drkit.repository.s3_multipart import MAX_PARTS, S3Multipart
from drkit.repository.store import ObjectInfo, Written

__all__ = ["DEFAULT_REGION", "MAX_PARTS", "MIN_PART_SIZE", "SINGLE_PUT_MAX", "S3Store"]

_READ_BUFFER = 1 << 20
# A finished file up to this size goes in one PUT (S3 allows 5 GiB); beyond it a
# multipart upload, whose parts a failure retries one by one.
SINGLE_PUT_MAX = 256 << 20


class _ConditionsUnsupported(Exception):
    """The server rejects conditional writes (501): write unconditionally instead."""


class S3Store(S3Multipart, S3ObjectLock):
    """Objects are S3 keys under ``prefix/`` in ``bucket``."""

    def put_without_retention(self, key: str, stream: BinaryIO) -> int:
        return self.put(key, stream, retain=False)

    def put(self, key: str, stream: BinaryIO, *, retain: bool = True) -> int:
        """See Store.put; ``retain=False`` writes without Object Lock retention (lock objects)."""
        self._full(key)
        first = parts.spool_part(stream, self._part_size, f"{self.url}/{key}")
        if first.size < self._part_size:
            with first:
                self._request(
                    "put",
                    key,
                    "PUT",
                    body=first.file,
                    headers={"content-md5": first.md5, **self._lock_headers(retain)},
                )
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
        for block in iter(lambda: file.read(parts.SPOOL_BLOCK), b""):
            md5.update(block)
        # The client sends the file from its start (fstat length) on every attempt.
        self._request(
            "put",
            key,
            "PUT",
            body=file,
            headers={"content-md5": parts.content_md5(md5), **self._lock_headers(True)},
        )
        return size

    def put_bytes(self, key: str, data: bytes, *, retain: bool = True) -> int:
        """An object already in memory (a chunk, a manifest): below a part, sent as is."""
        if len(data) >= self._part_size:
            return super().put_bytes(key, data, retain=retain)
        self._full(key)
        md5 = hashlib.md5(data, usedforsecurity=False)
        self._request(
            "put",
            key,
            "PUT",
            body=data,
            headers={"content-md5": parts.content_md5(md5), **self._lock_headers(retain)},
        )
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
        md5 = parts.content_md5(hashlib.md5(data, usedforsecurity=False))
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

    def get(self, key: str) -> BinaryIO:
        try:
            body = self._request("read", key, "GET", stream=True)
        except ObjectNotFound:
            raise ObjectNotFound(f"{self.url}: no object {key}") from None
        raw = BodyReader(body, self, key)  # type: ignore[arg-type]
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
        size = self._call("stat", key, number, head.headers.get("content-length", "0"), "size")
        return ObjectInfo(key, size, self._call("stat", key, http_date, head))

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
            size = number(text(obj, "Size"), "<Size>")
            modified = iso_date(text(obj, "LastModified"), "<LastModified>")
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

    def delete(self, key: str) -> None:
        with contextlib.suppress(ObjectNotFound):  # absent key: nothing to do
            self._request("delete", key, "DELETE")


class BodyReader(io.RawIOBase):
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
