"""What opening a store takes besides its URL, and the URL as messages may show it:
below both the factory and the stores it opens (so neither imports the other back)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


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
    part_size: int = 5 << 20  # S3 minimum: 3 parts in memory at concurrency 2
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
