"""Backends register here, explicitly: a URL scheme maps to one Store class."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from drkit.errors import UsageError
from drkit.repository.options import StoreOptions, safe_url
from drkit.repository.store import Store

__all__ = ["StoreOptions", "check_url", "open_store", "safe_url"]


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
