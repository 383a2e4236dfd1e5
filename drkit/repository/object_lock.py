"""The Object Lock guard: a store whose writes first prove the bucket holds retention.

A policy with ``repository.immutable_days`` wraps its store in ``ObjectLockGuard``:
every write (lock object, format marker, artifacts) first asks whether the bucket
has Object Lock and is refused, naming the host, when it has not. Reads (restore,
verify, status) never pay for the check. Everything else is the inner store's,
method by method: the guard implements the whole ``Store`` interface.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Callable, Iterator
from typing import BinaryIO
from urllib.parse import urlsplit

from drkit.errors import RepositoryError
from drkit.repository.store import IncompleteUpload, ObjectInfo, Store, Written


def object_lock_missing(url: str, days: int, host: str | None) -> str:
    """The message for a bucket without Object Lock under a policy asking ``days`` of
    retention (names no credentials: ``url`` is safe)."""
    bucket = urlsplit(url).hostname or url
    who = f"host {host}: " if host else ""
    return (
        f"{who}bucket {bucket} ({url}) does not have S3 Object Lock enabled, but the policy "
        f"sets repository.immutable_days = {days}; nothing was written. "
        "Object Lock can only be turned on when a bucket is created: create a new bucket "
        "with Object Lock enabled (`drkit init --policy FILE` creates a missing bucket "
        "that way; or `aws s3api create-bucket --object-lock-enabled-for-bucket`) and "
        "point repository.url at it, or set immutable_days = 0"
    )


class ObjectLockGuard(Store):
    """``inner`` for a policy with ``immutable_days`` = ``days``: each write first checks
    ``enabled()`` (whether ``inner``'s bucket has Object Lock; the caller decides how
    often the server is asked) and is refused with RepositoryError when it is False.
    """

    def __init__(self, inner: Store, *, days: int, enabled: Callable[[], bool]) -> None:
        self.inner = inner
        self.url = inner.url
        self.days = days
        self._enabled = enabled

    def _require(self, key: str) -> None:
        if not self._enabled():
            # Keys are "<host>/...": name the host whose run is refused.
            host = key.split("/", 1)[0] if "/" in key else None
            raise RepositoryError(object_lock_missing(self.url, self.days, host))

    # -- writes: checked -------------------------------------------------------

    def put(self, key: str, stream: BinaryIO) -> int:
        self._require(key)
        return self.inner.put(key, stream)

    def put_file(self, key: str, file: BinaryIO) -> int:
        self._require(key)
        return self.inner.put_file(key, file)

    def put_without_retention(self, key: str, stream: BinaryIO) -> int:
        # Checked too: a run on a bucket without Object Lock must not even take its lock.
        self._require(key)
        return self.inner.put_without_retention(key, stream)

    def put_bytes_if(self, key: str, data: bytes, *, tag: str | None) -> Written:
        self._require(key)
        return self.inner.put_bytes_if(key, data, tag=tag)

    # -- everything else: the inner store's ------------------------------------
    # put_bytes and get_bytes are not here: Store builds them on the methods above.

    def get(self, key: str) -> BinaryIO:
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.inner.get_range(key, start, length)

    def extend_retention(self, key: str) -> bool:
        return self.inner.extend_retention(key)

    def get_bytes_tagged(self, key: str) -> tuple[bytes, str | None]:
        return self.inner.get_bytes_tagged(key)

    def stat(self, key: str) -> ObjectInfo | None:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        return self.inner.list_dirs(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()

    def ensure_bucket(self) -> bool:
        # Not checked: creating the bucket (with Object Lock) comes before any check.
        return self.inner.ensure_bucket()

    def object_lock_enabled(self) -> bool:
        return self.inner.object_lock_enabled()

    def object_retention(self, key: str) -> dt.datetime | None:
        return self.inner.object_retention(key)

    def list_incomplete_uploads(self, prefix: str = "") -> builtins.list[IncompleteUpload]:
        return self.inner.list_incomplete_uploads(prefix)

    def abort_upload(self, key: str, upload_id: str) -> None:
        self.inner.abort_upload(key, upload_id)
