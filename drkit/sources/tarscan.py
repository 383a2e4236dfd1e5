"""A push parser for tar streams: facts about every member, from the stream itself.

Fed the plain bytes of a tar artifact as they pass through the pipeline, it
records each member's path, type, mode, owner, size and (for regular files)
sha256, so the facts describe exactly what was stored. It understands ustar,
GNU long names (L/K) and pax headers (x), which is what GNU tar writes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

BLOCK = 512
_TYPES = {b"0": "file", b"\0": "file", b"1": "hardlink", b"2": "symlink", b"5": "dir"}


def _str(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _num(raw: bytes) -> int:
    if raw and raw[0] & 0x80:  # GNU base-256 for large values
        return int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
    text = raw.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


@dataclass
class Member:
    path: str
    type: str
    mode: int
    uid: int
    gid: int
    owner: str
    group: str
    size: int
    link: str = ""
    sha256: str = ""
    content: bytes | None = None

    def fact(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "type": self.type,
            "mode": f"{self.mode:04o}",
            "owner": self.owner or str(self.uid),
            "group": self.group or str(self.gid),
        }
        if self.type == "file":
            out.update(size=self.size, sha256=self.sha256)
        if self.link:
            out["link"] = self.link
        return out


@dataclass
class TarScanner:
    """Feed bytes with ``feed``; read ``members`` afterwards.

    ``keep_content`` keeps the bytes of regular files up to ``content_limit``
    (used for .env key names); larger files keep only their digest.
    ``max_members`` bounds memory on huge trees (``truncated`` tells).
    """

    keep_content: bool = False
    content_limit: int = 1 << 20
    max_members: int = 20000
    members: list[Member] = field(default_factory=list)
    truncated: bool = False
    total_files: int = 0
    total_bytes: int = 0
    ended: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _cur: Member | None = None
    _remaining: int = 0
    _padding: int = 0
    _sha: Any = None
    _content: bytearray | None = None
    _special: bytes = b""  # L, K or x payload collector
    _special_data: bytearray = field(default_factory=bytearray)
    _long_name: str | None = None
    _long_link: str | None = None
    _pax: dict[str, str] = field(default_factory=dict)

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.ended:
            if self._remaining:
                take = min(self._remaining, len(view))
                self._data(view[:take])
                self._remaining -= take
                view = view[take:]
                if not self._remaining:
                    self._end_member()
                continue
            if self._padding:
                take = min(self._padding, len(view))
                self._padding -= take
                view = view[take:]
                continue
            need = BLOCK - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) == BLOCK:
                header = bytes(self._buf)
                self._buf.clear()
                self._header(header)

    def _header(self, h: bytes) -> None:
        if h == b"\0" * BLOCK:
            return  # end-of-archive blocks; trailing data is padding
        size = _num(h[124:136])
        flag = h[156:157]
        self._padding = (-size) % BLOCK
        if flag in (b"L", b"K", b"x", b"g"):
            self._special = flag
            self._special_data = bytearray()
            self._cur = None
            self._remaining = size
            if not size:
                self._end_member()
            return
        name = _str(h[0:100])
        if h[257:262] == b"ustar" and h[345:500].strip(b"\0"):
            name = _str(h[345:500]) + "/" + name
        name = self._pax.pop("path", "") or self._long_name or name
        link = self._pax.pop("linkpath", "") or self._long_link or _str(h[157:257])
        if "size" in self._pax:
            size = int(self._pax.pop("size"))
            self._padding = (-size) % BLOCK
        self._pax.clear()
        self._long_name = self._long_link = None
        kind = _TYPES.get(flag, "other")
        member = Member(
            path=_absolute(name),
            type=kind,
            mode=_num(h[100:108]) & 0o7777,
            uid=_num(h[108:116]),
            gid=_num(h[116:124]),
            owner=_str(h[265:297]),
            group=_str(h[297:329]),
            size=size if kind == "file" else 0,
            link=link if kind in ("symlink", "hardlink") else "",
        )
        self._special = b""
        self._cur = member
        self._sha = hashlib.sha256()
        keep = self.keep_content and kind == "file" and size <= self.content_limit
        self._content = bytearray() if keep else None
        self._remaining = size
        if not size:
            self._end_member()

    def _data(self, chunk: memoryview) -> None:
        if self._special:
            self._special_data += chunk
            return
        self._sha.update(chunk)
        if self._content is not None:
            self._content += chunk

    def _end_member(self) -> None:
        if self._special:
            payload = bytes(self._special_data)
            if self._special == b"L":
                self._long_name = _str(payload)
            elif self._special == b"K":
                self._long_link = _str(payload)
            elif self._special == b"x":
                self._pax.update(_parse_pax(payload))
            self._special = b""
            return
        member = self._cur
        if member is None:
            return
        if member.type == "file":
            member.sha256 = self._sha.hexdigest()
            self.total_files += 1
            self.total_bytes += member.size
            if self._content is not None:
                member.content = bytes(self._content)
        if len(self.members) < self.max_members:
            self.members.append(member)
        else:
            self.truncated = True
        self._cur = None


def _absolute(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    name = name.strip("/")
    return "/" if name in ("", ".") else "/" + name


def _parse_pax(payload: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        space = payload.find(b" ", pos)
        if space < 0:
            break
        length = int(payload[pos:space])
        record = payload[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out
