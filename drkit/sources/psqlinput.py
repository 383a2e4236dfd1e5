"""Feeding psql a plain-format dump from a backup without letting it run meta-commands.

psql runs backslash meta-commands wherever its input has them (``\\!`` is a
shell on the target, ``\\o |cmd`` and ``\\copy ... program`` too), inside any
SQL statement's line; ON_ERROR_STOP does not stop them. A plain dump comes from
the backed-up host, so it is input to distrust. psql 13.22, 14.19, 15.14,
16.10, 17.6 and later have ``\\restrict KEY``: every meta-command after it
fails (and ON_ERROR_STOP ends the load) except ``\\unrestrict KEY``. drkit
starts the input with its own ``\\restrict`` and a random key the dump cannot
know; where psql has no ``\\restrict``, a plain dump is refused.

pg_dump of those versions frames its output with its own ``\\restrict`` /
``\\unrestrict`` pair, which psql would refuse under ours (one more
``\\restrict``, the wrong key). ``RestrictedInput`` drops those two lines only
where pg_dump writes them, before the first statement and after the last (only
comments and blank lines around them); anywhere else they pass and fail the load.
"""

from __future__ import annotations

import re
import secrets
from typing import BinaryIO

from drkit.pipeline.streams import CHUNK
from drkit.remote.base import Runner
from drkit.sources.pgsql import PgConn

# How much of the dump is looked at for pg_dump's header and footer: a few hundred
# bytes each in pg_dump's output; past this, what would be a guard line passes.
HEADER_MAX = 64 << 10
FOOTER_MAX = 64 << 10
_GUARD = re.compile(rb"\\(un)?restrict [A-Za-z0-9]+[ \t\r]*")
MINIMUM_PSQL = "13.22, 14.19, 15.14, 16.10 or 17.6"


def psql_has_restrict(runner: Runner, conn: PgConn, user: str | None) -> bool:
    """Whether the psql that ``conn`` runs on the target knows ``\\restrict``."""
    res = runner.run(conn.argv("psql", "--help=commands"), user=user)
    return res.returncode == 0 and b"\\restrict" in res.stdout


def restrict_line(key: str) -> bytes:
    return b"\\restrict " + key.encode() + b"\n"


def new_key() -> str:
    return secrets.token_hex(32)


class RestrictedInput:
    """A reader over ``raw`` (a plain dump) for psql: ``prefix`` first (drkit's own
    ``\\restrict`` line, or b"" when it was already sent), then the dump less
    pg_dump's own guard lines in the header and footer.

    Streams: holds back at most ``HEADER_MAX`` bytes at the start and
    ``FOOTER_MAX`` plus one chunk before the end.
    """

    def __init__(self, raw: BinaryIO, prefix: bytes) -> None:
        self._raw = raw
        self._out = bytearray(prefix)
        self._head: bytearray | None = bytearray()  # None once past the header
        self._tail = bytearray()
        self._cut = False  # bytes before the held-back tail were passed on: mid-line start
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        while (n is None or n < 0 or len(self._out) < n) and not self._eof:
            self._fill()
        if n is None or n < 0:
            n = len(self._out)
        out = bytes(self._out[:n])
        del self._out[:n]
        return out

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        data = self._raw.read(CHUNK)
        if not data:
            self._eof = True
            if self._head is not None:
                self._tail += self._head
                self._head = None
            self._out += _without_footer_guard(bytes(self._tail), whole=not self._cut)
            self._tail.clear()
            return
        if self._head is not None:
            self._head += data
            self._take_header()
            return
        self._tail += data
        if len(self._tail) > FOOTER_MAX:
            keep = len(self._tail) - FOOTER_MAX
            self._out += self._tail[:keep]
            del self._tail[:keep]
            self._cut = True

    def _take_header(self) -> None:
        """Pass header lines on, pg_dump's ``\\restrict`` line dropped, until the first
        statement line; then everything after it goes to the tail."""
        assert self._head is not None
        head = self._head
        pos = 0
        while True:
            end = head.find(b"\n", pos)
            if end < 0:
                if len(head) > HEADER_MAX:
                    break  # not pg_dump's header: pass it on as it is
                self._out += head[:pos]
                del head[:pos]
                return
            line = bytes(head[pos:end])
            if _GUARD.fullmatch(line) and line.startswith(b"\\restrict"):
                self._out += head[:pos]
                del head[: end + 1]
                pos = 0
                continue
            if line.strip() and not line.startswith(b"--"):
                break
            pos = end + 1
        self._tail += head
        self._head = None


def _without_footer_guard(tail: bytes, *, whole: bool) -> bytes:
    """``tail`` less its last ``\\unrestrict`` line when only comments and blank lines
    follow it. ``whole``: ``tail`` starts at a line start (else its first line is
    never taken for the guard)."""
    lines = tail.split(b"\n")
    for k in range(len(lines) - 1, -1, -1):
        line = lines[k]
        if not line.strip() or line.startswith(b"--"):
            continue
        if (k > 0 or whole) and _GUARD.fullmatch(line) and line.startswith(b"\\unrestrict"):
            return b"\n".join(lines[:k] + lines[k + 1 :])
        break
    return tail
