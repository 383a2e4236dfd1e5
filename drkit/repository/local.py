"""A repository in a local directory: the embedded default (``file:///path``)."""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from drkit.errors import ObjectNotFound, RepositoryError
from drkit.repository.store import IncompleteUpload, ObjectInfo, Store, Written

_CHUNK = 1 << 20
_TMP_PREFIX = ".drkit-tmp-"
# The upload id of a temp file left by a write that never finished (list_incomplete_uploads).
TEMP_FILE = "unfinished write"


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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        except OSError as exc:
            raise self._write_error(key, exc) from exc
        written = 0
        reading = False  # an OSError while reading is the stream's, not the disk's
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    reading = True
                    chunk = stream.read(_CHUNK)
                    reading = False
                    if not chunk:
                        break
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            self._unlink(Path(tmp))
            if reading:
                raise
            raise self._write_error(key, exc) from exc
        except BaseException:
            self._unlink(Path(tmp))
            raise
        _fsync_dir(path.parent)
        return written

    def _write_error(self, key: str, exc: OSError) -> RepositoryError:
        """A write that failed (a full disk, a quota, a read-only mount), named."""
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        hint = (
            "; the repository's filesystem is full: free space there (drkit prune removes "
            "what retention does not keep), then run again"
            if full
            else ""
        )
        return RepositoryError(f"{self.url}/{key}: cannot write: {exc.strerror or exc}{hint}")

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

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with self.get(key) as f:
            f.seek(start)
            data = f.read(length)
        if len(data) != length:
            raise RepositoryError(
                f"{self.url}/{key}: bytes {start}-{start + length - 1} are beyond its end"
            )
        return data

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
        for dirpath, _dirs, files in os.walk(self._walk_from(prefix)):
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    st = full.stat()
                    found.append(ObjectInfo(key, st.st_size, _mtime(st.st_mtime)))
        yield from sorted(found, key=lambda o: o.key)

    def _walk_from(self, prefix: str) -> Path:
        """The deepest directory every key starting with ``prefix`` lies under: a listing
        of one host's snapshots does not walk every other host's packs and snapshots."""
        parts = prefix.rpartition("/")[0].split("/")
        if not all(parts) or any(p in (".", "..") for p in parts):
            return self.root  # no directory part (or an odd one): filter the whole tree
        start = self.root
        for part in parts:
            start = start / part
            # os.walk follows a symlink given as its top, never one met below it: a
            # planted `host/packs -> /etc` must stay unlisted (prune deletes what it lists).
            if start.is_symlink():
                return self.root
        return start

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        # Directories hold objects: delete() removes the ones it leaves empty.
        base = self._path(prefix) if prefix.strip("/") else self.root
        try:
            return sorted(e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def list_incomplete_uploads(self, prefix: str = "") -> builtins.list[IncompleteUpload]:
        """The temp files of writes that never finished (a killed run's: ``put`` removes
        its own on any error it lives to see), as uploads whose id is ``TEMP_FILE``;
        ``abort_upload`` removes one. Prune removes those older than its grace period."""
        if not self.root.exists():
            return []
        found: builtins.list[IncompleteUpload] = []
        for dirpath, _dirs, files in os.walk(self._walk_from(prefix)):
            for name in files:
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if name.startswith(_TMP_PREFIX) and key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        found.append((key, TEMP_FILE, _mtime(full.stat().st_mtime)))
        return sorted(found)

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Remove an unfinished write's temp file (and the directories it leaves empty);
        anything else is no upload of this store: nothing to abort, never deleted."""
        if upload_id == TEMP_FILE and self._path(key).name.startswith(_TMP_PREFIX):
            self.delete(key)

    def delete(self, key: str) -> None:
        self._unlink(self._path(key))

    def _unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        # Drop directories left empty, up to the root, so listings stay clean (a failed
        # write's too: no empty snapshot directory is left for prune to puzzle over).
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
