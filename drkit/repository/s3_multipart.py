"""The S3 store's multipart uploads (s3.py holds the store itself).

Each part is spooled to an unlinked temporary file (``TMPDIR``) before it is
sent, so memory stays flat whatever the object size, part size or
concurrency (disk: ``part_size * (concurrency + 1)`` at most). Every part
carries a Content-MD5, so the server refuses data corrupted in transit
(``BadDigest``). On any exception the upload is aborted, so no partial object
or orphaned upload is left behind; prune aborts those a killed run left
(``list_incomplete_uploads``, ``abort_upload``).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO
from urllib.parse import unquote
from xml.sax.saxutils import escape

from drkit.errors import ObjectNotFound, RepositoryError
from drkit.repository.s3_base import S3Base, iso_date
from drkit.repository.s3_client import text
from drkit.repository.store import IncompleteUpload

MAX_PARTS = 10_000  # S3's maximum part count
SPOOL_BLOCK = 1 << 18  # bytes read from the encoder per write to a part spool


class S3Multipart(S3Base):
    """Multipart uploads of the S3 store."""

    def _put_multipart(
        self, key: str, full: str, first: SpooledPart, stream: BinaryIO, retain: bool
    ) -> int:
        try:
            created = self._request(
                "start upload of",
                key,
                "POST",
                params=[("uploads", "")],
                headers=self._lock_headers(retain),
            )
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
                "complete upload of",
                key,
                "POST",
                params=[("uploadId", upload_id)],
                body=f"<CompleteMultipartUpload>{doc}</CompleteMultipartUpload>".encode(),
            )
            # Anything but the result document is no proof the object was assembled.
            self._document("complete upload of", key, completed, "CompleteMultipartUploadResult")
        except BaseException as exc:
            left = self._abort_after_failure(key, full, upload_id, exc)
            if left and isinstance(exc, RepositoryError):  # say it, whoever re-words the error
                raise RepositoryError(f"{exc}; {left}") from exc
            raise
        return total

    def _upload_parts(
        self, key: str, full: str, upload_id: str, first: SpooledPart, stream: BinaryIO
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
        inflight: dict[Future[tuple[int, str]], SpooledPart] = {}
        total = 0
        number = 0
        part: SpooledPart | None = first

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
                part = spool_part(stream, part_size, f"{self.url}/{key}")
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
        self, key: str, upload_id: str, number: int, part: SpooledPart
    ) -> tuple[int, str]:
        result = self._request(
            f"upload part {number} of",
            key,
            "PUT",
            params=[("partNumber", str(number)), ("uploadId", upload_id)],
            body=part.file,
            headers={"content-md5": part.md5},
        )
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
                    initiated = self._call(action, prefix or None, iso_date, when, "<Initiated>")
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


class SpooledPart:
    """One part's bytes in an unlinked temporary file, with its size and Content-MD5."""

    def __init__(self, file: BinaryIO, size: int, md5: str) -> None:
        self.file = file
        self.size = size
        self.md5 = md5

    def close(self) -> None:
        self.file.close()  # an unlinked file: closing frees its blocks

    def __enter__(self) -> SpooledPart:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spool_part(stream: BinaryIO, size: int, where: str) -> SpooledPart:
    """Up to ``size`` bytes of ``stream`` in a temporary file; fewer only at end of stream.
    ``where``: the object's URL, for an error writing the spool (a full ``TMPDIR``).

    Why a file and not memory: a part is 5 MiB or more and two or three exist
    at once; in the page cache they cost the process nothing, and the kernel
    may drop them under pressure (restic spools its packs the same way).
    """
    try:
        spool = tempfile.TemporaryFile(prefix="drkit-part-")  # noqa: SIM115 (closed by the part)
    except OSError as exc:
        raise spool_error(where, exc) from exc
    try:
        md5 = hashlib.md5(usedforsecurity=False)  # integrity in transit, not security
        got = 0
        while got < size:
            data = stream.read(min(SPOOL_BLOCK, size - got))
            if not data:
                break
            md5.update(data)
            try:
                spool.write(data)
            except OSError as exc:
                raise spool_error(where, exc) from exc
            got += len(data)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return SpooledPart(spool, got, content_md5(md5))


def spool_error(where: str, exc: OSError) -> RepositoryError:
    return RepositoryError(
        f"{where}: cannot spool an upload part in {tempfile.gettempdir()} (TMPDIR): "
        f"{exc.strerror or exc}; free space there or set TMPDIR to a larger filesystem, "
        "then run again"
    )


def content_md5(md5: Any) -> str:
    """Content-MD5 header value of a finished md5 hash object."""
    return base64.b64encode(md5.digest()).decode("ascii")
