"""SQL text as tokens, for reading role statements from a backup (``pgroles``).

A small lexer of PostgreSQL's syntax, enough for what pg_dumpall writes about
roles: words, quoted identifiers, standard and E'' strings, numbers, a few
punctuation marks; comments are skipped. Anything else, a backslash outside a
string first of all (psql would run it as a meta-command), is refused with
its line. pg_dumpall's own ``\\restrict``/``\\unrestrict`` lines are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drkit.sources.pgsql import quote_ident, quote_literal

_TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<comment>--[^\n]*)|(?P<block>/\*)|(?P<estring>[eE]')|(?P<string>')
    |(?P<ident>")|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>[0-9]+(?:\.[0-9]+)?)
    |(?P<punct>[;,=.()-])""",
    re.X,
)
# pg_dumpall's own guard lines (PostgreSQL 13.22/14.19/15.14/16.10/17.6 and later).
_RESTRICT = re.compile(r"\\(un)?restrict [A-Za-z0-9]+[ \t\r]*$")


class GlobalsRefused(ValueError):
    """The text holds something other than role statements; ``line`` is where (1-based)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class Token:
    kind: str  # word | ident | string | number | punct
    text: str  # word: as written; ident, string: the value; number, punct: as written
    line: int

    @property
    def word(self) -> str:
        """A word in lower case (how PostgreSQL folds it), else ""."""
        return self.text.lower() if self.kind == "word" else ""

    def sql(self) -> str:
        if self.kind == "ident":
            return quote_ident(self.text)
        if self.kind == "string":
            if "\\" in self.text:  # an E'' string means the same whatever the server's setting
                return "E" + quote_literal(self.text.replace("\\", "\\\\"))
            return quote_literal(self.text)
        return self.text


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, comments and pg_dumpall's guard lines left out.

    Raises GlobalsRefused for a backslash outside a string, an unterminated
    string, identifier or comment, or any character role statements do not use.
    """
    tokens: list[Token] = []
    pos, line, n = 0, 1, len(text)
    while pos < n:
        if text[pos] == "\\":
            start = text.rfind("\n", 0, pos) + 1
            end = text.find("\n", pos)
            end = n if end < 0 else end
            if start == pos and _RESTRICT.match(text, pos, end):
                pos = end
                continue
            word = re.match(r"\\[^\s\\]*", text[pos:end])
            command = word.group(0) if word else "\\"
            raise GlobalsRefused(line, f"psql meta-command `{command}`")
        m = _TOKEN.match(text, pos)
        if m is None:
            raise GlobalsRefused(line, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind in ("space", "comment"):
            line += m.group(0).count("\n")
            pos = m.end()
        elif kind == "block":
            pos, line = _skip_block(text, pos, line)
        elif kind in ("string", "estring", "ident"):
            value, end = _quoted(text, m.end(), line, kind)
            tokens.append(Token("ident" if kind == "ident" else "string", value, line))
            line += text.count("\n", pos, end)
            pos = end
        else:
            tokens.append(Token(kind, m.group(0), line))
            pos = m.end()
    return tokens


def _skip_block(text: str, pos: int, line: int) -> tuple[int, int]:
    """Past a (nested) /* */ comment starting at ``pos``: (position, line)."""
    depth, i = 0, pos
    while i < len(text):
        pair = text[i : i + 2]
        if pair == "/*":
            depth, i = depth + 1, i + 2
        elif pair == "*/":
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i, line + text.count("\n", pos, i)
        else:
            i += 1
    raise GlobalsRefused(line, "unterminated /* comment")


def _quoted(text: str, pos: int, line: int, kind: str) -> tuple[str, int]:
    """The value of a quoted string or identifier whose body starts at ``pos`` and the
    position after its closing quote. Standard strings keep backslashes as they are
    (pg_dumpall writes ``standard_conforming_strings = on``); E'' strings may only
    escape a backslash or a quote (all pg_dumpall writes)."""
    quote = '"' if kind == "ident" else "'"
    out: list[str] = []
    i = pos
    while i < len(text):
        c = text[i]
        if c == "\\" and kind == "estring":
            nxt = text[i + 1 : i + 2]
            if nxt not in ("\\", "'"):
                raise GlobalsRefused(line, f"unsupported escape \\{nxt} in an E'' string")
            out.append(nxt)
            i += 2
        elif c == quote:
            if text[i + 1 : i + 2] == quote:
                out.append(quote)
                i += 2
            else:
                value = "".join(out)
                if kind == "ident" and not value:
                    raise GlobalsRefused(line, "empty quoted identifier")
                return value, i + 1
        else:
            out.append(c)
            i += 1
    what = "identifier" if kind == "ident" else "string"
    raise GlobalsRefused(line, f"unterminated quoted {what}")
