"""Backends register here, explicitly: a URL scheme maps to one Store class."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from drkit.errors import UsageError
from drkit.repository.store import Store


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


def check_url(url: str) -> None:
    """Refuse a repository URL ``open_store`` could not open (its shape only: nothing
    is contacted). Raises UsageError naming the URL (without credentials)."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            raise UsageError(f"repository {safe_url(url)}: file URLs must be file:///absolute/path")
        if not (unquote(parts.path) if parts.scheme == "file" else url):
            raise UsageError(f"repository {safe_url(url)}: empty path")
    elif parts.scheme == "s3":
        if parts.username or parts.password:
            raise UsageError(
                f"repository {safe_url(url)}: credentials in the URL are refused; "
                "use the AWS credential chain or env:/file: references"
            )
        if not parts.hostname:
            raise UsageError(f"repository {safe_url(url)}: missing bucket name")
    else:
        raise UsageError(f"repository {safe_url(url)}: unsupported scheme {parts.scheme!r}")


def open_store(url: str, options: StoreOptions | None = None) -> Store:
    """Open the repository at ``url`` (``file:///abs/path``, a bare path, or ``s3://bucket/prefix``)."""
    options = options or StoreOptions()
    check_url(url)
    parts = urlsplit(url)
    if parts.scheme == "s3":
        from drkit.repository.s3 import S3Store

        return S3Store(str(parts.hostname), parts.path.strip("/"), options)
    from drkit.repository.local import LocalStore

    path = unquote(parts.path) if parts.scheme == "file" else url
    return LocalStore(Path(path).expanduser())
