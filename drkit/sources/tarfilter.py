"""Check every member of a tar stream before ``tar -x`` on the target sees it.

A signed snapshot can still come from a compromised (but trusted) host, so the
restoring process reads the archive itself and, member by member, refuses
what the local policy does not allow: names outside the source's policy
paths, absolute names, ``..``, symlinks whose target resolves outside those
paths (or the policy's ``symlinks_to`` directories), hard links to outside,
members written through a symlink (one earlier in the same archive, or one
already on the target that leads outside the destination: ``escapes``),
device nodes, fifos and anything GNU tar's defaults do not write, and set-id
bits on non-directories unless the policy says ``allow_setid = true``. A
refused member raises RestoreError naming it before any byte of it reaches
``tar``.

Headers are not passed on as read: each member is re-encoded from the fields
checked here (``tarfile``'s GNU format), so ``tar`` cannot read anything
else into them (pax keys, checksum tricks, sparse maps). Data is passed on
unchanged.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

from drkit.errors import RestoreError
from drkit.sources.tarscan import BLOCK, _num, _parse_pax, _str

_FILE, _HARD, _SYM, _DIR = b"0", b"1", b"2", b"5"
_KINDS = {b"0": _FILE, b"\0": _FILE, b"7": _FILE, b"1": _HARD, b"2": _SYM, b"5": _DIR}
_REFUSED = {b"3": "a character device", b"4": "a block device", b"6": "a fifo"}
_TARINFO_TYPES = {
    _FILE: tarfile.REGTYPE,
    _HARD: tarfile.LNKTYPE,
    _SYM: tarfile.SYMTYPE,
    _DIR: tarfile.DIRTYPE,
}
_GLOB = set("*?[")
SETID = 0o6000


@dataclass(frozen=True)
class MemberRules:
    """What one source's archive may hold.

    ``roots``: the policy's absolute paths (``env`` globs allowed); a member must be
    one of them or under one. ``escapes``: symlinks already on the target (member
    paths, e.g. ``/srv/app/current``) that lead outside where this step may write,
    with where they lead; no member may be written through one.
    """

    roots: tuple[str, ...]
    allow_setid: bool = False
    escapes: Mapping[str, str] = field(default_factory=dict)
    # Outside the roots, where symlinks may still point (the policy's ``symlinks_to``).
    link_targets: tuple[str, ...] = ()


def within(path: str, roots: tuple[str, ...]) -> bool:
    """Whether absolute ``path`` is one of ``roots`` or under one (globs match a whole
    component, as the shell's do)."""
    for root in roots:
        root = root.rstrip("/") or "/"
        if _GLOB & set(root):
            p = PurePosixPath(path)
            if any(
                a.match(root)
                for a in (p, *p.parents)
                if len(a.parts) == len(PurePosixPath(root).parts)
            ):
                return True
        elif root == "/" or path == root or path.startswith(root + "/"):
            return True
    return False


def resolve_link(path: str, link: str) -> str | None:
    """Where symlink ``path`` -> ``link`` points, lexically; None when it climbs above /."""
    parts = [] if link.startswith("/") else path.strip("/").split("/")[:-1]
    for c in link.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(c)
    return "/" + "/".join(parts)


def ancestors(path: str) -> list[str]:
    """The proper ancestors of absolute ``path``, nearest last, "/" excluded."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


class TarFilter:
    """A reader: the checked (re-encoded) tar stream of ``stream``.

    ``label`` names host and source in errors. Reads ``stream`` to its end even
    after the end-of-archive blocks, so its digest check still runs.
    """

    def __init__(self, stream: BinaryIO, rules: MemberRules, label: str) -> None:
        self._stream = stream
        self._rules = rules
        self._label = label
        self._links: set[str] = set()  # symlink members so far
        self._out = (chunk for _path, chunk in self._generate())
        self._buf = bytearray()
        self.members = 0

    def readable(self) -> bool:
        return True

    def chunks(self) -> Iterator[tuple[str | None, bytes]]:
        """The checked stream as (member path, bytes) pieces, each within one member (its
        header or data); the end-of-archive blocks come with None. Instead of ``read``."""
        return self._generate()

    def read(self, n: int = -1) -> bytes:
        while n is None or n < 0 or len(self._buf) < n:
            chunk = next(self._out, None)
            if chunk is None:
                break
            self._buf += chunk
        size = len(self._buf) if n is None or n < 0 else n
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    # ---- parsing -------------------------------------------------------
    def _exact(self, size: int, what: str) -> bytes:
        out = bytearray()
        while len(out) < size:
            chunk = self._stream.read(size - len(out))
            if not chunk:
                raise RestoreError(f"{self._label}: the archive ends inside {what}")
            out += chunk
        return bytes(out)

    def _generate(self) -> Iterator[tuple[str | None, bytes]]:
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            header = self._stream.read(BLOCK)
            if not header:
                raise RestoreError(f"{self._label}: the archive has no end-of-archive marker")
            if len(header) < BLOCK:
                header += self._exact(BLOCK - len(header), "a header")
            if header == b"\0" * BLOCK:
                yield None, b"\0" * (2 * BLOCK)
                while self._stream.read(1 << 16):  # to the end: the digest is checked there
                    pass
                return
            _checksum(header, self._label)
            size = _num(header[124:136])
            flag = header[156:157]
            if flag in (b"L", b"K", b"x"):
                payload = self._exact(size + (-size) % BLOCK, "a long-name header")[:size]
                if flag == b"L":
                    long_name = _str(payload)
                elif flag == b"K":
                    long_link = _str(payload)
                else:
                    pax.update(_parse_pax(payload))
                continue
            name = pax.pop("path", "") or long_name or _ustar_name(header)
            link = pax.pop("linkpath", "") or long_link or _str(header[157:257])
            size = int(pax.pop("size", size))
            mtime = int(float(pax.pop("mtime", _num(header[136:148]))))
            sparse = [k for k in pax if k.startswith("GNU.sparse")]
            pax.clear()
            long_name = long_link = None
            info = self._check(header, flag, name, link, size, sparse)
            path = "/" + info.name.lstrip("/") if info.name != "." else "/"
            info.mtime = mtime
            self.members += 1
            yield path, info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
            remaining = size + (-size) % BLOCK
            while remaining:
                chunk = self._stream.read(min(remaining, 1 << 16))
                if not chunk:
                    raise RestoreError(f"{self._label}: the archive ends inside member {name}")
                remaining -= len(chunk)
                yield path, chunk

    # ---- the rules -----------------------------------------------------
    def _check(
        self, h: bytes, flag: bytes, name: str, link: str, size: int, sparse: list[str]
    ) -> tarfile.TarInfo:
        def refuse(why: str) -> RestoreError:
            return RestoreError(
                f"{self._label}: archive member {name!r} refused: {why}; nothing of it was written"
            )

        kind = _KINDS.get(flag)
        if kind is None:
            raise refuse(_REFUSED.get(flag, f"tar entry type {flag!r} is never restored"))
        if sparse:
            raise refuse("sparse members are never restored")
        path = self._path(name, refuse)
        mode = _num(h[100:108]) & 0o7777
        if kind != _DIR and mode & SETID and not self._rules.allow_setid:
            raise refuse(
                f"mode {mode:04o} has the set-user/group-id bit (set allow_setid = true "
                "on this source in the policy to restore it)"
            )
        if kind != _FILE and size:
            raise refuse("a link or directory with data")
        if kind == _SYM:
            target = resolve_link(path, link)
            allowed = (*self._rules.roots, *self._rules.link_targets)
            if target is None or not within(target, allowed):
                raise refuse(
                    f"symlink to {link!r} leads outside the source's policy paths (list "
                    "its directory in symlinks_to on this source to allow it)"
                )
            self._links.add(path)
        elif kind == _HARD:
            target_path = self._path(link, refuse)
            if not within(target_path, self._rules.roots):
                raise refuse(f"hard link to {link!r} outside the source's policy paths")
        info = tarfile.TarInfo(path.lstrip("/") or ".")
        info.type = _TARINFO_TYPES[kind]
        info.mode, info.size = mode, size if kind == _FILE else 0
        info.uid, info.gid = _num(h[108:116]), _num(h[116:124])
        info.uname, info.gname = _str(h[265:297]), _str(h[297:329])
        if kind == _HARD:
            info.linkname = self._path(link, refuse).lstrip("/")
        elif kind == _SYM:
            info.linkname = link
        return info

    def _path(self, name: str, refuse: Callable[[str], RestoreError]) -> str:
        """``name`` as an absolute member path, checked against the roots and links."""
        if name.startswith("/"):
            raise refuse("absolute name")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise refuse("'..' in its name")
        path = "/" + "/".join(parts)
        if not within(path, self._rules.roots):
            roots = ", ".join(self._rules.roots)
            raise refuse(f"{path} is outside the source's policy paths ({roots})")
        for up in ancestors(path):
            if up in self._links:
                raise refuse(f"it would be written through symlink {up} of the same archive")
            if up in self._rules.escapes:
                raise refuse(
                    f"it would be written through symlink {up} on the target, which leads "
                    f"to {self._rules.escapes[up]}, outside the destination"
                )
        return path


def _ustar_name(h: bytes) -> str:
    name = _str(h[0:100])
    if h[257:262] == b"ustar" and h[345:500].strip(b"\0"):
        name = _str(h[345:500]) + "/" + name
    return name


def _checksum(h: bytes, label: str) -> None:
    stored = _num(h[148:156])
    blanked = h[:148] + b" " * 8 + h[156:]
    unsigned = sum(blanked)
    signed = sum(b - 256 if b > 127 else b for b in blanked)
    if stored not in (unsigned, signed):
        raise RestoreError(f"{label}: the archive has a damaged header (checksum)")
