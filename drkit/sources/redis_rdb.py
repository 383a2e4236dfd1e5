"""What drkit reads from a Redis server, without I/O of its own: ``INFO`` parsed, the
key counts checked against a backup's, and redis-cli's RDB stream checked whole as it
passes (drkit.sources.redis runs the commands)."""

from __future__ import annotations

import re
import shlex
from typing import Any

from drkit.errors import SourceError
from drkit.sources.base import Check, CommandStream, Source

_KEYSPACE_RE = re.compile(r"^db(\d+):keys=(\d+),expires=(\d+)")


def parse_keyspace(info: str) -> dict[str, dict[str, int]]:
    """``INFO keyspace`` -> {"0": {"keys": n, "expires": m}, ...}."""
    out: dict[str, dict[str, int]] = {}
    for line in info.splitlines():
        m = _KEYSPACE_RE.match(line.strip())
        if m:
            out[m.group(1)] = {"keys": int(m.group(2)), "expires": int(m.group(3))}
    return out


def parse_info(info: str) -> dict[str, str]:
    """``INFO`` text -> field: value (sections merged)."""
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and not key.startswith("#"):
            fields[key] = value
    return fields


def parse_modules(info: str) -> list[str]:
    """Module names from ``INFO modules`` (``module:name=graph,ver=...``)."""
    names = []
    for line in info.splitlines():
        if line.startswith("module:"):
            for part in line[len("module:") :].split(","):
                key, _, value = part.partition("=")
                if key == "name":
                    names.append(value)
    return sorted(names)


def key_check(name: str, want: dict[str, Any], have: dict[str, dict[str, int]]) -> Check:
    """Keys per database on the target against the backup's facts."""
    bad, notes = [], []
    for db in sorted(set(want) | set(have), key=int):
        w = want.get(db) or {"low": 0, "high": 0, "expires": 0}
        got = (have.get(db) or {}).get("keys", 0)
        low, high = int(w["low"]), int(w["high"])
        if low <= got <= high:
            continue
        if low - int(w.get("expires", 0)) <= got < low:
            notes.append(f"db{db}: {got} of {low} keys (the others had a TTL)")
            continue
        span = str(low) if low == high else f"{low}..{high}"
        bad.append(f"db{db}: {got} keys, backup {span}")
    total = sum(v.get("keys", 0) for v in have.values())
    if bad:
        return Check(name, "keys per database", "fail", "; ".join(bad))
    detail = f"{total} key(s) in {len(have)} database(s) as at backup"
    return Check(name, "keys per database", "pass", "; ".join([detail, *notes]))


class RdbStream(CommandStream):
    """redis-cli's stdout, checked: RDB magic first, the EOF opcode and checksum last.

    redis-cli 7.0 writing a diskless transfer to a pipe leaves the server's 40-byte
    end-of-transfer mark after the RDB (it truncates the mark away only in a file):
    the last 40 bytes are held back and dropped when they are that mark.
    """

    MARK = 40

    def __init__(self, source: Source, argv: list[str], env: dict[str, str] | None) -> None:
        super().__init__(source, argv, env=env, expect_output=True, user=None)
        self._head = b""
        self._held = b""  # the stream's last bytes, not passed on yet
        self._checked = False
        self.size = 0  # bytes of RDB passed on

    def read(self, n: int = -1) -> bytes:
        while True:
            data = super().read(n)
            if not data:
                return self._end()
            if len(self._head) < 9:
                self._head = (self._head + data)[:9]
            held = self._held + data
            # Keep the last MARK + 9 bytes: the end opcode, the checksum, a possible mark.
            keep = self.MARK + 9
            out, self._held = held[:-keep], held[-keep:]
            if out:
                self.size += len(out)
                return out

    def _end(self) -> bytes:
        if self._checked:
            return b""
        self._checked = True
        tail = self._held
        if _is_mark(tail[-self.MARK :]) and tail[-self.MARK - 9 : -self.MARK + 0][:1] == b"\xff":
            tail = tail[: -self.MARK]
        if not self._head.startswith(b"REDIS") or tail[-9:][:1] != b"\xff":
            raise SourceError(
                f"{self._source.label}: `{shlex.join(self._argv)}` did not write a whole RDB "
                f"({self.size + len(tail)} bytes, no RDB header or end marker); nothing was "
                "stored. Check that the server allows SYNC/PSYNC for this user and is not "
                "out of memory"
            )
        self.size += len(tail)
        return tail


def _is_mark(data: bytes) -> bool:
    return len(data) == RdbStream.MARK and all(c in b"0123456789abcdef" for c in data)


def counts(keyspace: dict[str, dict[str, int]]) -> str:
    """``db0=12, db3=4`` (or ``none``), for the facts' and plan's text."""
    return ", ".join(f"db{db}={v['keys']}" for db, v in sorted(keyspace.items())) or "none"
