"""What opening a store takes besides its URL, and the URL as messages may show it:
below both the factory and the stores it opens (so neither imports the other back)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from drkit.errors import RepositoryError

PART_SIZE_ENV = "DRKIT_PART_SIZE"
# Parts are spooled to temporary files, not held: a larger part costs no memory, and
# 16 MiB cuts a whole artifact's requests ~3x (96 MiB: 22 -> 8; packs are one PUT).
PART_SIZE = 16 << 20
_PART_RANGE = (5 << 20, 1 << 30)  # S3's minimum part; a part is spooled whole to disk


def part_size() -> int:
    """The multipart part size: ``$DRKIT_PART_SIZE`` (bytes, 5 MiB to 1 GiB) or
    ``PART_SIZE``. The variable exists for tests that need several parts of a small
    artifact (the fault campaign), and for a link where a resent part must stay small."""
    raw = os.environ.get(PART_SIZE_ENV, "").strip()
    if not raw:
        return PART_SIZE
    try:
        size = int(raw)
    except ValueError:
        size = -1
    if not _PART_RANGE[0] <= size <= _PART_RANGE[1]:
        raise RepositoryError(
            f"${PART_SIZE_ENV}={raw!r}: not a part size in bytes between "
            f"{_PART_RANGE[0]} and {_PART_RANGE[1]}"
        )
    return size


@dataclass(frozen=True)
class StoreOptions:
    """Connection options beside the URL (S3 only; ignored for file://).

    Credentials are never here as values: they come from the standard AWS
    chain, or from the resolved secret references passed in ``access_key_id``
    and ``secret_access_key`` by the caller.
    """

    endpoint: str | None = None
    region: str | None = None
    path_style: bool = True
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    part_size: int = field(default_factory=part_size)
    concurrency: int = 2
    object_lock_days: int = 0
    object_lock_mode: str = "GOVERNANCE"  # or COMPLIANCE (nobody can shorten it)


def safe_url(url: str) -> str:
    """``url`` with any user:password@ removed, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=host).geturl()
