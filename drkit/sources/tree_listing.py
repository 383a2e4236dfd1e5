"""A directory tree as entries (path, type, mode, owner ids, size, sha256, link) and its
digest: from the tar stream at backup (``member_entries``), from ``find`` and
``sha256sum`` on the target after a restore (``LIST_SCRIPT``, ``parse_listing``), so the
check compares the two without a second transfer of the data (docker volumes)."""

from __future__ import annotations

import hashlib
from typing import Any

from drkit.sources.tarscan import Member

# One NUL-separated record per entry: "type mode uid gid size", relative path, link target.
_SHA_MARK = b"#sha256"
LIST_SCRIPT = (
    'cd "$1" && find . -printf "%y %m %U %G %s\\0%P\\0%l\\0" && printf "#sha256\\0" && '
    "find . -type f -print0 | xargs -0 -r sha256sum --zero --"
)
_FIND_TYPES = {"f": "file", "d": "dir", "l": "symlink", "p": "other", "c": "other", "b": "other"}


def entry_line(e: dict[str, Any]) -> str:
    """One entry as the digest sees it: type, path, mode, owner ids, size, sha256, link."""
    is_file = e["type"] == "file"
    fields = [
        e["type"],
        e["path"],
        e["mode"],
        f"{e['uid']}:{e['gid']}",
        str(e.get("size", 0)) if is_file else "",
        e.get("sha256", "") if is_file else "",
        e.get("link", "") if e["type"] == "symlink" else "",
    ]
    return "\0".join(fields)


def listing_digest(entries: list[dict[str, Any]]) -> str:
    """sha256 over the sorted entry lines: equal iff the trees are equal (order-free)."""
    return hashlib.sha256("\n".join(sorted(map(entry_line, entries))).encode()).hexdigest()


def member_entries(members: list[Member]) -> list[dict[str, Any]]:
    """Facts entries from a tar listing; a hard link becomes the file it links to
    (``find`` on the target sees two equal files, not a link)."""
    files = {m.path: m for m in members if m.type == "file"}
    out = []
    for m in members:
        entry = {**m.fact(), "uid": m.uid, "gid": m.gid}
        target = files.get("/" + m.link.removeprefix("./").strip("/")) if m.link else None
        if m.type == "hardlink" and target is not None:
            entry.update(type="file", size=target.size, sha256=target.sha256)
            del entry["link"]
        out.append(entry)
    return out


def parse_listing(out: bytes) -> list[dict[str, Any]]:
    """Entries (as ``member_entries`` makes them) from ``LIST_SCRIPT``'s output."""
    listing, _, sums = out.rpartition(b"\0" + _SHA_MARK + b"\0")
    digests: dict[str, str] = {}
    for record in sums.split(b"\0"):
        digest, _, path = record.decode("utf-8", "surrogateescape").partition("  ")
        if path:
            digests["/" + path.removeprefix("./")] = digest
    parts = (listing + b"\0").split(b"\0")
    entries: list[dict[str, Any]] = []
    i = 0
    while i + 2 < len(parts):
        kind, mode, uid, gid, size = parts[i].decode().split(" ")
        rel = parts[i + 1].decode("utf-8", "surrogateescape")
        link = parts[i + 2].decode("utf-8", "surrogateescape")
        i += 3
        if kind == "s":
            continue  # tar skips sockets too
        entry: dict[str, Any] = {
            "path": "/" + rel if rel else "/",
            "type": _FIND_TYPES.get(kind, "other"),
            "mode": f"{int(mode, 8):04o}",
            "uid": int(uid),
            "gid": int(gid),
        }
        if entry["type"] == "file":
            entry["size"] = int(size)
        if entry["type"] == "symlink":
            entry["link"] = link
        entries.append(entry)
    for entry in entries:
        if entry["type"] == "file":
            entry["sha256"] = digests.get(entry["path"], "unreadable")
    return entries
