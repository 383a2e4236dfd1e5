"""Checks of the ``nats`` source's artifacts that need no server: the framing of a
snapshot (an S2 stream in nats-server 2.9) and of an export (records written by the
helper's ``export``). Both read incrementally, so a backup can count an export's
messages as it streams and a restore can check every artifact before it replaces
the first stream."""

from __future__ import annotations

import struct
from typing import BinaryIO

from drkit.errors import RestoreError
from drkit.sources.jetstream import EXPORT_END, EXPORT_RECORD

# S2 (and Snappy) framing: a 4-byte chunk header, type then a 24-bit little-endian length.
_S2_MAGICS = (b"S2sTwO", b"sNaPpY")
_READ = 1 << 20


class FramingError(Exception):
    pass


class S2Frames:
    """Walks an S2/Snappy framed stream: the stream identifier first, then data chunks
    (each with its CRC), padding or skippable chunks; reserved chunk types, a missing
    identifier or a stream ending inside a chunk are errors."""

    def __init__(self) -> None:
        self._head = b""
        self._skip = 0  # bytes left of the current chunk's body
        self._body = b""  # the identifier chunk's body, collected
        self._collect = 0
        self.started = False
        self.data_chunks = 0
        self.size = 0

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        view = memoryview(data)
        while view:
            if self._collect:
                take = bytes(view[: self._collect])
                self._body += take
                self._collect -= len(take)
                view = view[len(take) :]
                if not self._collect:
                    if self._body not in _S2_MAGICS:
                        raise FramingError("the stream identifier is not S2's")
                    self._body = b""
                continue
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            need = 4 - len(self._head)
            self._head += bytes(view[:need])
            view = view[need:]
            if len(self._head) == 4:
                self._chunk(self._head[0], int.from_bytes(self._head[1:], "little"))
                self._head = b""

    def _chunk(self, kind: int, length: int) -> None:
        if kind == 0xFF:
            if length != 6:
                raise FramingError("a stream identifier chunk of the wrong length")
            self.started, self._collect = True, 6
            return
        if not self.started:
            raise FramingError("it does not start with an S2 stream identifier")
        if kind in (0x00, 0x01):
            if length < 4:
                raise FramingError("a data chunk too short for its checksum")
            self.data_chunks += 1
        elif kind < 0x80:
            raise FramingError(f"a reserved chunk type 0x{kind:02x}")
        self._skip = length

    def finish(self) -> None:
        if self._head or self._skip or self._collect:
            raise FramingError("it ends inside a chunk (truncated)")
        if not self.data_chunks:
            raise FramingError("it holds no data")


class ExportRecords:
    """Walks an export's records: counts messages, checks the end record's count and
    that nothing follows it."""

    def __init__(self) -> None:
        self._buf = b""
        self._skip = 0
        self.messages = 0
        self.ended = False
        self.size = 0

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        view = memoryview(data)
        while view:
            if self.ended:
                raise FramingError("data after the end record")
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            kind = self._buf[0] if self._buf else view[0]
            need = (EXPORT_RECORD.size if kind == 1 else EXPORT_END.size) - len(self._buf)
            if kind not in (0, 1):
                raise FramingError(f"an unknown record type {kind}")
            self._buf += bytes(view[:need])
            view = view[need:]
            if kind == 1 and len(self._buf) == EXPORT_RECORD.size:
                _, _seq, _ts, slen, hlen, dlen = EXPORT_RECORD.unpack(self._buf)
                self._skip, self._buf = slen + hlen + dlen, b""
                self.messages += 1
            elif kind == 0 and len(self._buf) == EXPORT_END.size:
                count = EXPORT_END.unpack(self._buf)[1]
                if count != self.messages:
                    raise FramingError(
                        f"it holds {self.messages} message(s), its end record says {count}"
                    )
                self.ended, self._buf = True, b""

    def finish(self) -> None:
        if not self.ended:
            raise FramingError("it ends without its end record (truncated)")


def check_artifact(stream: BinaryIO, how: str, what: str) -> int:
    """Read an artifact to its end, checking its framing; returns its size. The feed
    around it decrypts and checks the digests (IntegrityError at the end)."""
    walker: S2Frames | ExportRecords = S2Frames() if how == "snapshot" else ExportRecords()
    try:
        while chunk := stream.read(_READ):
            walker.feed(chunk)
        walker.finish()
    except (FramingError, struct.error) as exc:
        kind = "snapshot" if how == "snapshot" else "export"
        raise RestoreError(f"{what}: the {kind} is not readable: {exc}") from None
    return walker.size
