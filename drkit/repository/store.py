"""The small storage interface every repository backend implements.

A store holds opaque objects under ``/``-separated keys relative to its root.
It knows nothing of encryption, manifests or hosts (those live in
``layout.py`` and ``manifest.py`` above it). Retry and logging belong in
wrappers, not here.
"""

from __future__ import annotations

import builtins
import datetime as dt
import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from drkit.errors import RepositoryError


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: dt.datetime


class Written(enum.Enum):
    """What a conditional write (``Store.put_bytes_if``) did."""

    YES = "written"  # the condition held: the object is the one written
    REFUSED = "refused"  # the condition failed: nothing was written
    UNCHECKED = "unchecked"  # written, but the store could not check the condition


IncompleteUpload = tuple[str, str, dt.datetime]
"""An open multipart upload: (key relative to the store, upload id, initiated)."""


class Store(ABC):
    """put / get / stat / list / delete over opaque objects.

    ``url`` is safe to print: it never contains credentials.
    """

    url: str

    @abstractmethod
    def put(self, key: str, stream: BinaryIO) -> int:
        """Store everything ``stream.read()`` yields under ``key``; return bytes written.

        Atomic: on any exception (including one raised by ``stream.read``),
        no object (or no partial multipart upload) is left under ``key`` and
        an existing object under ``key`` is unchanged.
        """

    @abstractmethod
    def get(self, key: str) -> BinaryIO:
        """Open ``key`` for streaming reads; the caller closes it.

        Raises ``ObjectNotFound`` if absent.
        """

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and time of ``key``, or None if it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """The names one level below ``prefix`` ("" or ending in "/") that hold objects,
        sorted: ``ls`` of a directory, without listing every object below (a dedup
        repository holds thousands of chunks per host)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing an absent key is not an error."""

    def put_without_retention(self, key: str, stream: BinaryIO) -> int:
        """``put``, skipping the store's write protection (S3 Object Lock retention).

        For objects that are rewritten and deleted soon (the host lock
        object). The default, for stores without such protection, is ``put``.
        """
        return self.put(key, stream)

    def put_file(self, key: str, file: BinaryIO) -> int:
        """``put`` of a finished, seekable file (a pack spooled to disk), from its start.
        The default streams it like any other; a store that can send a file of known
        size in one request (S3: one PUT instead of a multipart upload) does."""
        file.seek(0)
        return self.put(key, file)

    def put_bytes(self, key: str, data: bytes, *, retain: bool = True) -> int:
        """``put`` of an in-memory object; ``retain=False``: ``put_without_retention``."""
        import io

        if retain:
            return self.put(key, io.BytesIO(data))
        return self.put_without_retention(key, io.BytesIO(data))

    def get_bytes(self, key: str) -> bytes:
        with self.get(key) as f:
            return f.read()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of ``key`` from byte ``start`` (a chunk in a pack).

        Raises ``ObjectNotFound`` if absent, RepositoryError naming the object
        when it is shorter than the range. The default reads from the start.
        """
        with self.get(key) as f:
            skip = start
            while skip:
                got = f.read(min(skip, 1 << 20))
                if not got:
                    break
                skip -= len(got)
            data = f.read(length) if not skip else b""
        if len(data) != length:
            raise RepositoryError(
                f"{self.url}/{key}: bytes {start}-{start + length - 1} are beyond its end"
            )
        return data

    def get_bytes_tagged(self, key: str) -> tuple[bytes, str | None]:
        """``get_bytes`` and the object's version tag (S3: its ETag) for ``put_bytes_if``;
        None where the store has no tags. Raises ``ObjectNotFound`` if absent."""
        return self.get_bytes(key), None

    def put_bytes_if(self, key: str, data: bytes, *, tag: str | None) -> Written:
        """Write ``data`` (without retention) only if ``key`` is absent (``tag`` None)
        or still has the version tag ``tag``: a compare-and-swap, for the host lock.

        The default, for stores that cannot check, writes unconditionally and
        says UNCHECKED: the caller must confirm some other way (re-read later).
        """
        self.put_bytes(key, data, retain=False)
        return Written.UNCHECKED

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has nothing to release."""

    # -- maintenance (init, backup's Object Lock check, prune) -------------------
    # Defaults for a store without buckets, retention or multipart uploads (a local
    # directory); the S3 store overrides each.

    def ensure_bucket(self) -> bool:
        """Create the store's bucket if it is missing; True if this call created it.

        The default, for stores without buckets, creates nothing: False (a local
        directory is made by the first write).
        """
        return False

    def object_lock_enabled(self) -> bool:
        """True if what the store writes can be held by Object Lock retention.

        The default, for stores without Object Lock (a local directory), is False.
        Raises RepositoryError when the store cannot say (never assume protection).
        """
        return False

    def object_retention(self, key: str) -> dt.datetime | None:
        """When ``key``'s Object Lock retention ends (``datetime.max`` under legal hold),
        or None if nothing holds it. The default, for stores without Object Lock: None.

        Raises RepositoryError naming the object when the store cannot say.
        """
        return None

    def extend_retention(self, key: str) -> bool:
        """Make ``key``'s Object Lock retention last at least as long as that of an
        object written now (a pack a new snapshot reuses; it never shortens one).
        False when the store has no retention to extend (the default: a local
        directory). Raises RepositoryError naming the object when the store refuses."""
        return False

    def list_incomplete_uploads(self, prefix: str = "") -> builtins.list[IncompleteUpload]:
        """Open multipart uploads whose key starts with ``prefix``, in key order.

        The default, for stores without multipart uploads: none.
        """
        return []

    def abort_upload(self, key: str, upload_id: str) -> None:  # noqa: B027 - optional hook
        """Abort one open multipart upload of ``key``; an upload already gone is not an
        error. The default, for stores without multipart uploads (where every upload is
        gone), does nothing."""
