"""A repository in a local directory: the embedded default (``file:///path``)."""

from __future__ import annotations

import builtins
import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from drkit.errors import ObjectNotFound, RepositoryError
from drkit.repository.store import ObjectInfo, Store, Written

_CHUNK = 1 << 20
_TMP_PREFIX = ".drkit-tmp-"


class LocalStore(Store):
    """Objects are files under ``root``; writes go to a temp file, fsync, rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.resolve().as_uri() if root.is_absolute() else f"file://{root}"

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise RepositoryError(f"{self.url}: invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, stream: BinaryIO) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return written

    def put_bytes_if(self, key: str, data: bytes, *, tag: str | None) -> Written:
        """Create-if-absent is exact here (a hard link fails on an existing name, also
        over NFS); files carry no version tag, so a replace is UNCHECKED."""
        if tag is not None:
            return super().put_bytes_if(key, data, tag=tag)
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return Written.REFUSED
        finally:
            Path(tmp).unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return Written.YES

    def get(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.url}: no object {key}") from None
        except OSError as exc:
            raise RepositoryError(f"{self.url}: cannot read {key}: {exc.strerror}") from exc

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, _mtime(st.st_mtime))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.exists():
            return
        found: list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    st = full.stat()
                    found.append(ObjectInfo(key, st.st_size, _mtime(st.st_mtime)))
        yield from sorted(found, key=lambda o: o.key)

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        # Directories hold objects: delete() removes the ones it leaves empty.
        base = self._path(prefix) if prefix.strip("/") else self.root
        try:
            return sorted(e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Drop directories left empty, up to the root, so listings stay clean.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)
