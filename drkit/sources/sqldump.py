"""Reading a mysqldump/mariadb-dump stream as it passes: rows per table, and whether
the dump ran to its end.

The rows are counted from the dump itself, so the facts describe exactly the
data stored (mysqldump's ``--single-transaction`` snapshot is its own session;
no second session can count inside it). mysqldump escapes newlines inside
string literals, so a string never spans lines: each line's literals are
removed with one regular expression and the tuples' opening parentheses
counted. Both layouts are read: MySQL's one ``INSERT ... VALUES (..),(..);``
line and MariaDB's ``INSERT ... VALUES`` followed by one tuple per line.
"""

from __future__ import annotations

import re

_USE_RE = re.compile(r"^USE `((?:[^`]|``)+)`;")
_CREATE_RE = re.compile(r"^CREATE TABLE `((?:[^`]|``)+)` \(")
_INSERT_RE = re.compile(r"^INSERT INTO `((?:[^`]|``)+)` VALUES ?")
_STRING_RE = re.compile(r"'(?:[^'\\]|\\.)*'")
_DONE = "-- Dump completed"


def _name(quoted: str) -> str:
    return quoted.replace("``", "`")


class DumpCounter:
    """Feed it the dump's bytes in order; ``rows`` maps "db.table" to its rows."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self._db = ""
        self._table: str | None = None  # inside an INSERT's values
        self._partial = b""
        self._last = ""  # the last non-empty line

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line.decode("latin-1"))

    def close(self) -> None:
        if self._partial:
            self._line(self._partial.decode("latin-1"))
            self._partial = b""

    @property
    def completed(self) -> bool:
        """Whether the dump ended with mysqldump's own last line (it writes it last)."""
        return self._last.startswith(_DONE)

    def _line(self, text: str) -> None:
        if text.strip():
            self._last = text
        if self._table is None:
            if m := _USE_RE.match(text):
                self._db = _name(m.group(1))
            elif m := _CREATE_RE.match(text):
                self.rows.setdefault(f"{self._db}.{_name(m.group(1))}", 0)
            elif m := _INSERT_RE.match(text):
                self._table = f"{self._db}.{_name(m.group(1))}"
                self._values(text[m.end() :])
            return
        self._values(text)

    def _values(self, text: str) -> None:
        assert self._table is not None
        bare = _STRING_RE.sub("", text)
        self.rows[self._table] = self.rows.get(self._table, 0) + bare.count("(")
        if bare.rstrip().endswith(";"):
            self._table = None
