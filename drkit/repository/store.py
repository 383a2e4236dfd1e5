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

    def put_bytes(self, key: str, data: bytes, *, retain: bool = True) -> int:
        """``put`` of an in-memory object; ``retain=False``: ``put_without_retention``."""
        import io

        if retain:
            return self.put(key, io.BytesIO(data))
        return self.put_without_retention(key, io.BytesIO(data))

    def get_bytes(self, key: str) -> bytes:
        with self.get(key) as f:
            return f.read()

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
