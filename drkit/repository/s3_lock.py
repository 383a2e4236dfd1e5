"""The S3 store's bucket and Object Lock side (s3.py holds the store itself): create
the bucket (with Object Lock when the policy asks for retention), whether it has
Object Lock, when an object's retention ends, and extending it (a reused pack).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from xml.sax.saxutils import escape

from drkit.errors import RepositoryError
from drkit.repository import s3_multipart as parts
from drkit.repository.s3_base import DEFAULT_REGION, S3Base, iso_date
from drkit.repository.s3_client import S3Error, text

_NO_BUCKET_CODES = frozenset({"404", "NoSuchBucket", "NotFound"})
_NO_LOCK_CODES = frozenset(
    {"ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"}
)
_FOREVER = dt.datetime.max.replace(tzinfo=dt.UTC)
_RETAIN_MARGIN = dt.timedelta(hours=1)


class S3ObjectLock(S3Base):
    """Bucket creation and Object Lock retention of the S3 store."""

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
        return self._call("read retention of", key, iso_date, until, "retain-until date")

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
        md5 = parts.content_md5(hashlib.md5(body, usedforsecurity=False))
        self._request(
            "extend retention of",
            key,
            "PUT",
            params=[("retention", "")],
            body=body,
            headers={"content-md5": md5, "content-type": "application/xml"},
        )
        return True
