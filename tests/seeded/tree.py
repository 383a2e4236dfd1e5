"""Files put on a seeded host in one go, and Caddy's state as a seeded host holds it.

A seed is a ``Tree``: absolute path -> ``Entry`` (content, directory or symlink,
mode, owner by name). ``write_tree()`` extracts it into a container as one tar with
owners and modes kept (parents listed before children), so what a backup
reads is exactly what the test wrote. ``caddy_tree()`` is Caddy's data dir
holding certificates the way certmagic stores them (tls.py), owned by the
caddy user, plus a Caddyfile; ``restart_caddy()`` restarts Caddy on it and
waits until every site is served with its certificate.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from drkit.drills.container import HostContainer
from tests.seeded.tls import Certificate, wait_served

# Debian's caddy package: the caddy user's home, where Caddy keeps its data dir.
CADDY_HOME = "/var/lib/caddy"
CADDY_DATA = f"{CADDY_HOME}/.local/share/caddy"  # the shipped policies' data_dir


@dataclass
class Entry:
    data: bytes | None  # None: a directory (or a symlink, with ``link``)
    mode: int
    owner: str = "root"
    link: str | None = None  # a symlink to this target (``data`` None)


Tree = dict[str, Entry]


def parents(path: str, top: str) -> list[str]:
    """The directories between ``top`` (excluded) and ``path`` (excluded), outermost first."""
    out = []
    parent = path.rsplit("/", 1)[0]
    while parent != top and parent.startswith(top + "/"):
        out.append(parent)
        parent = parent.rsplit("/", 1)[0]
    return sorted(out)


def add_dirs(tree: Tree, path: str, top: str, mode: int, owner: str = "root") -> None:
    """``path``'s directories below ``top`` (``top`` itself excluded) with ``mode``/``owner``."""
    for parent in parents(path, top):
        tree[parent] = Entry(None, mode, owner)


def tar_tree(tree: Tree, ids: dict[str, tuple[int, int]]) -> bytes:
    """``tree`` as a tar (GNU format), owners by the uid/gid of their name in ``ids``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(tree):  # parents before children
            entry = tree[path]
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mode = entry.mode
            info.uid, info.gid = ids[entry.owner]
            info.uname = info.gname = entry.owner
            info.mtime = int(time.time())
            if entry.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
                tar.addfile(info)
            elif entry.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buf.getvalue()


def write_tree(box: HostContainer, tree: Tree) -> None:
    """Extract ``tree`` at / in the container, owners (looked up there) and modes kept."""
    owners = sorted({e.owner for e in tree.values()})
    script = 'for u; do echo "$(id -u "$u") $(id -g "$u")"; done'
    out = box.exec(["sh", "-c", script, "ids", *owners]).stdout.decode().split()
    ids = {u: (int(out[2 * i]), int(out[2 * i + 1])) for i, u in enumerate(owners)}
    box.exec(["tar", "-x", "-p", "--same-owner", "-C", "/"], input=tar_tree(tree, ids))


def caddy_tree(caddyfile: str, certificates: Iterable[Certificate]) -> Tree:
    """/etc/caddy/Caddyfile and Caddy's data dir holding ``certificates`` as Let's Encrypt's
    would be (0700 directories and 0600 files owned by caddy, as Caddy makes them)."""
    tree: Tree = {"/etc/caddy/Caddyfile": Entry(caddyfile.encode(), 0o644)}
    add_dirs(tree, CADDY_DATA, CADDY_HOME, 0o700, "caddy")
    tree[CADDY_DATA] = Entry(None, 0o700, "caddy")
    for cert in certificates:
        for rel, data in cert.storage_files().items():
            path = f"{CADDY_DATA}/{rel}"
            add_dirs(tree, path, CADDY_DATA, 0o700, "caddy")
            tree[path] = Entry(data, 0o600, "caddy")
    return tree


def restart_caddy(box: HostContainer, fingerprints: dict[str, str]) -> None:
    """Restart Caddy (as systemd would) and wait until it serves each name of
    ``fingerprints`` with that certificate; AssertionError with Caddy's log if not."""
    box.exec(["drkit-svc", "restart", "caddy"])
    served = wait_served(box, fingerprints)
    if served != fingerprints:
        log = box.exec(["drkit-svc", "log", "caddy"], check=False).stdout.decode()
        raise AssertionError(f"caddy serves {served}, expected {fingerprints}:\n{log}")


def wait_for(what: str, probe: Callable[[], Any], expected: Any, timeout: float = 60) -> None:
    """Poll ``probe()`` until it returns ``expected``; AssertionError naming ``what`` if not."""
    deadline = time.monotonic() + timeout
    while (got := probe()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {got!r}, expected {expected!r}")
        time.sleep(0.5)


# "<url> <HTTP status>" for each https URL, asked inside the container with SNI and the
# name resolved to 127.0.0.1 (no DNS in a drill network): through Caddy, as a client would.
_HTTPS = r"""
for url in "$@"; do
    host=${url#https://}; host=${host%%/*}
    code=$(curl -sk -m 10 -o /dev/null -w '%{http_code}' --resolve "$host:443:127.0.0.1" "$url")
    echo "$url $code"
done
"""


def https_status(box: HostContainer, urls: list[str]) -> dict[str, int]:
    """url -> HTTP status of ``GET url`` through the container's port 443 (curl inside)."""
    out = box.exec(["bash", "-c", _HTTPS, "https", *urls], timeout=120).stdout.decode()
    return {url: int(code) for url, code in (ln.split() for ln in out.splitlines())}
