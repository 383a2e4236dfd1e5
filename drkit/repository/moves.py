"""Signed records of chunks a repack moved (docs/dedup.md, "Repack").

A snapshot's chunk index names each chunk's pack and offset, and the signed
manifest covers the index, so a chunk cannot move without a signed word for
it. A repack (actions/repack.py) copies a pack's live chunks byte for byte
into a new pack and then stores a *move record*::

    <host>/moves/<set>/<id>.json   {"format": "drkit-pack-moves", "host", "set",
                                    "created", "moves": {<old pack>: [[offset,
                                    length, <new pack>, new offset], ...]}, "signature"}

signed as kind ``pack-moves`` by a key the host's policy trusts for its
snapshots (the same keys as manifests: the run that repacks must hold one).
Readers follow a move only when its record's signature checks against the
local policy, it names the host and set it is stored under, and it is not
dated in the future; anything else in ``<host>/moves/`` is *refused*: never
followed, named in ``rejected`` (and prune collects nothing while one is
there: a record it cannot trust may be one it needs). Following a trusted
record changes only where bytes are read: each chunk's bytes are still checked
against the sha256 its signed index names.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from drkit.errors import DrkitError, IntegrityError, RepositoryError
from drkit.repository.manifest import dump_document, load_json

KIND = "pack-moves"
FORMAT = "drkit-pack-moves"
VERSION = 1
MAX_HOPS = 8  # a chunk moved again is followed through each record (bounded: no cycles)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[0-9A-Za-z._-]{1,80}\.json")
_MAX_NUMBER = 1 << 40


def moves_prefix(host: str) -> str:
    return f"{host}/moves/"


def moves_key(host: str, rset: str, name: str) -> str:
    return f"{moves_prefix(host)}{rset}/{name}.json"


@dataclass(frozen=True)
class Move:
    """``length`` bytes that were at ``offset`` of a pack, now at ``to`` of ``pack``."""

    offset: int
    length: int
    pack: str
    to: int
    record: str  # the key of the record that says so


@dataclass(frozen=True)
class Piece:
    """Where a range of stored bytes is now: ``length`` bytes at ``offset`` of ``pack``."""

    pack: str
    offset: int
    length: int


def document(
    host: str, rset: str, created: dt.datetime, moves: dict[str, list[Move]]
) -> dict[str, Any]:
    """The record (unsigned) of ``moves`` by old pack."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "host": host,
        "set": rset,
        "created": created.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "moves": {
            old: [[m.offset, m.length, m.pack, m.to] for m in sorted(ms, key=lambda m: m.offset)]
            for old, ms in sorted(moves.items())
        },
    }


def write_record(repo: Any, host: str, rset: str, name: str, moves: dict[str, list[Move]]) -> str:
    """Sign (this machine's key, refused unless the host's policy trusts it) and store a
    record of ``moves``; returns its key. ``repo``: a layout.Repository."""
    key = repo.trust.signer_for(host)
    body = document(host, rset, dt.datetime.now(dt.UTC), moves)
    where = moves_key(host, rset, name)
    repo.store.put_bytes(where, dump_document(key.sign(KIND, body)))
    return where


@dataclass
class Moves:
    """The trusted move records of one host: where a chunk an index names is now."""

    host: str
    by_pack: dict[tuple[str, str], dict[int, Move]] = field(default_factory=dict)
    records: dict[str, dt.datetime] = field(default_factory=dict)  # trusted: key -> created
    rejected: list[str] = field(default_factory=list)  # "<url>/<key>: why"

    @classmethod
    def load(cls, repo: Any, host: str) -> Moves:
        """Every record under ``<host>/moves/``, each checked (``repo``: a layout.Repository;
        its trust decides). Listing errors raise RepositoryError."""
        out = cls(host)
        signers = repo.trust.snapshot_signers(host)
        latest = repo.trust.latest_acceptable()
        for info in repo.store.list(moves_prefix(host)):
            origin = f"{repo.url}/{info.key}"
            try:
                raw = repo.store.get_bytes(info.key)
                out._add(info.key, raw, origin, signers, latest)
            except DrkitError as exc:
                out.rejected.append(
                    f"{origin}: move record refused, not followed: {_why(exc, origin)}"
                )
        return out

    def _add(self, key: str, raw: bytes, origin: str, signers: Any, latest: dt.datetime) -> None:
        parts = key.split("/")
        if len(parts) != 4 or not _NAME.fullmatch(parts[3]):
            raise RepositoryError(f"{origin}: not a move record's name")
        data = load_json(raw, origin, "move record")
        if (
            not isinstance(data, dict)
            or data.get("format") != FORMAT
            or data.get("version") != VERSION
        ):
            raise RepositoryError(f"{origin}: not a drkit move record of version {VERSION}")
        signers.verify(KIND, data, origin)
        if data.get("host") != self.host or data.get("set") != parts[2]:
            raise RepositoryError(
                f"{origin}: names host {data.get('host')!r} set {data.get('set')!r}"
            )
        created = _time(data.get("created"), origin)
        if created > latest:
            raise RepositoryError(f"{origin}: created {created.isoformat()} is later than now")
        moves = _moves(data.get("moves"), key, origin)
        for old, entries in moves.items():
            slot = self.by_pack.setdefault((parts[2], old), {})
            for move in entries:
                slot.setdefault(move.offset, move)  # two records for one chunk: either holds it
        self.records[key] = created

    def moved(self, rset: str, pack: str) -> bool:
        return (rset, pack) in self.by_pack

    def pieces(
        self, rset: str, pack: str, offset: int, length: int, used: set[str] | None = None
    ) -> list[Piece]:
        """Where ``length`` stored bytes at ``offset`` of ``pack`` are now, in order (one
        piece when nothing moved them). ``used`` collects the records followed. Raises
        IntegrityError when a moved pack's record does not cover the range."""
        out: list[Piece] = []
        for piece in self._follow(rset, Piece(pack, offset, length), used, 0):
            if (
                out
                and out[-1].pack == piece.pack
                and out[-1].offset + out[-1].length == piece.offset
            ):
                out[-1] = Piece(piece.pack, out[-1].offset, out[-1].length + piece.length)
            else:
                out.append(piece)
        return out

    def _follow(self, rset: str, piece: Piece, used: set[str] | None, hops: int) -> Iterable[Piece]:
        table = self.by_pack.get((rset, piece.pack))
        if table is None:
            yield piece
            return
        if hops >= MAX_HOPS:
            raise IntegrityError(f"pack {piece.pack}: moved more than {MAX_HOPS} times (a cycle?)")
        at, end = piece.offset, piece.offset + piece.length
        while at < end:
            move = table.get(at)
            if move is None or at + move.length > end:
                raise IntegrityError(
                    f"pack {piece.pack}: moved, but no trusted move record holds its bytes "
                    f"{at}-{end - 1}"
                )
            if used is not None:
                used.add(move.record)
            yield from self._follow(rset, Piece(move.pack, move.to, move.length), used, hops + 1)
            at += move.length


def _why(exc: DrkitError, origin: str) -> str:
    text = str(exc)
    return text[len(origin) + 2 :] if text.startswith(f"{origin}: ") else text


def _time(value: object, origin: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise RepositoryError(f"{origin}: created is not a time with a zone")
    return when


def _moves(value: object, key: str, origin: str) -> dict[str, list[Move]]:
    """The ``moves`` member, checked line by line (exact types, bounded numbers)."""
    if not isinstance(value, dict):
        raise RepositoryError(f"{origin}: moves is not an object")
    out: dict[str, list[Move]] = {}
    for old, entries in value.items():
        if not isinstance(old, str) or not _HEX64.fullmatch(old) or not isinstance(entries, list):
            raise RepositoryError(f"{origin}: bad moves of pack {str(old)[:70]!r}")
        for entry in entries:
            if not (
                isinstance(entry, list)
                and len(entry) == 4
                and all(
                    type(n) is int and 0 <= n < _MAX_NUMBER for n in (entry[0], entry[1], entry[3])
                )
                and entry[1] > 0
                and isinstance(entry[2], str)
                and _HEX64.fullmatch(entry[2])
                and entry[2] != old
            ):
                raise RepositoryError(f"{origin}: bad move of pack {old}: {str(entry)[:200]}")
            out.setdefault(old, []).append(Move(entry[0], entry[1], entry[2], entry[3], key))
    return out
