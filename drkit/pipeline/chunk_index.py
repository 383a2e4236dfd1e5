"""The index of a chunked (``cdc+zstd+age``) artifact, written and read as a stream.

A text object, one line each, so that neither side ever holds the chunk
list in memory (a 100 GB dump has ~200 000 chunks). Version 2 (packs,
docs/dedup.md) names where each chunk is stored::

    drkit-chunk-index 2 <codec> <recipient set>
    <chunk id, 64 hex> <plain size> <pack, 64 hex> <offset> <length> <sha256 of the stored bytes>
    ...
    end <plain size> <tree digest>

Version 1 (one object per chunk, still read) has only the first two fields.
Version 3 (written since issue 20) is version 2's lines, after the same
header line naming version 3, as one zstd frame: the hex ids and digests
compress to their 32 bytes of entropy each and repeated pack names to a few
bytes, ~0.45 -> ~0.2 MB per GB of dump stored anew by every snapshot.
Version 2 is still read.
The stored sha256 lets anyone holding the index (it is covered by the signed
manifest's digest) check a chunk's bytes in its pack without the identity.

The tree digest is the sha256 of the chunk ids' 32-byte values in order:
each id is the sha256 of its chunk, so it commits to every plain byte in
order without hashing the data a second time. It is what the manifest
records as the artifact's ``plain_sha256``. The index is plain (not
encrypted) so that prune can tell which chunks are referenced without the
identity.
"""

from __future__ import annotations

import hashlib
import io
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import zstandard

from drkit.errors import IntegrityError
from drkit.pipeline.streams import HashingReader

MAGIC = "drkit-chunk-index"
VERSION = 3  # written; 1 and 2 are still read
VERSION_2 = 2  # version 3's lines, uncompressed
VERSION_1 = 1
_KNOWN = (str(VERSION), str(VERSION_2), str(VERSION_1))
# zstd level of version 3's lines: hex and repeated pack names, the level matters little.
_LEVEL = 9
# The largest chunk a line may claim: the chunker's maximum (pipeline/chunked.py
# MAX_CHUNK, a test keeps them equal). A larger claim would make the reader size
# a decompression buffer by it.
MAX_CHUNK_SIZE = 1 << 20
# A sealed chunk is its compressed bytes (zstd adds at most ~0.4%) plus age's
# framing (16 bytes per 64 KiB, a header of a few hundred per recipient): a bound
# that keeps a ranged read from being sized by a forged claim.
MAX_STORED_SIZE = 2 * MAX_CHUNK_SIZE
_MAX_LINE = 256  # a packed line is at most ~240
# Exactly what IndexWriter writes: lower-case hex, decimal without sign or leading zeros
# (int() alone would take "-1", "+1", "1_0", "0x..").
_RSET = re.compile(r"[0-9a-f]{1,64}")
_NUM = r"(0|[1-9][0-9]{0,18})"
_HEX = r"([0-9a-f]{64})"
_CHUNK_LINE = re.compile(rf"{_HEX} {_NUM}")
_PACKED_LINE = re.compile(rf"{_HEX} {_NUM} {_HEX} {_NUM} {_NUM} {_HEX}")
_END_LINE = re.compile(r"end (0|[1-9][0-9]{0,18}) ([0-9a-f]{64})")


@dataclass(frozen=True)
class Packed:
    """Where a chunk is stored: ``length`` bytes at ``offset`` of pack ``pack`` (hex)."""

    pack: str
    offset: int
    length: int
    digest: bytes  # sha256 of those stored (sealed) bytes


@dataclass(frozen=True)
class ChunkRef:
    id: bytes  # keyed id of the plain chunk (v1: its sha256)
    size: int  # plain bytes
    at: Packed | None = None  # None: an object of its own (index version 1)


@dataclass(frozen=True)
class WrittenIndex:
    """A finished index: the file to store (at its start) and its digests."""

    file: BinaryIO
    stored_size: int
    stored_sha256: str
    plain_size: int
    tree_digest: str
    chunks: int


class IndexWriter:
    """Lines go to an unlinked temporary file as chunks are cut."""

    def __init__(self, codec: str, rset: str, *, packed: bool = False) -> None:
        version = VERSION if packed else VERSION_1
        self.version = version
        self._file = tempfile.TemporaryFile(prefix="drkit-index-")  # noqa: SIM115 (returned)
        self._sha = hashlib.sha256()
        self._tree = hashlib.sha256()
        self._size = 0
        self.plain_size = 0
        self.chunks = 0
        self._stored(f"{MAGIC} {version} {codec} {rset}\n".encode("ascii"))
        # Version 3: the lines after the header go through one zstd frame. Its checksum
        # (4 bytes) makes a damaged frame fail where it is read, not only against the
        # manifest's digest: a changed pack or offset does not change the tree digest.
        self._zstd = (
            zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True).compressobj()
            if version == VERSION
            else None
        )

    def _stored(self, data: bytes) -> None:
        self._sha.update(data)
        self._size += len(data)
        self._file.write(data)

    def _line(self, text: str) -> None:
        data = text.encode("ascii")
        if self._zstd is None:
            self._stored(data)
        else:
            self._stored(self._zstd.compress(data))

    def add(self, chunk_id: bytes, size: int, at: Packed | None = None) -> None:
        if (at is None) != (self.version == VERSION_1):
            raise ValueError(f"index version {self.version}: chunk location {at!r}")
        self._tree.update(chunk_id)
        self.plain_size += size
        self.chunks += 1
        where = "" if at is None else f" {at.pack} {at.offset} {at.length} {at.digest.hex()}"
        self._line(f"{chunk_id.hex()} {size}{where}\n")

    def finish(self) -> WrittenIndex:
        tree = self._tree.hexdigest()
        self._line(f"end {self.plain_size} {tree}\n")
        if self._zstd is not None:
            self._stored(self._zstd.flush())
        self._file.flush()
        self._file.seek(0)
        return WrittenIndex(
            self._file,
            self._size,
            self._sha.hexdigest(),
            self.plain_size,
            tree,
            self.chunks,
        )

    def discard(self) -> None:
        self._file.close()


class IndexReader:
    """Reads an index stream: ``rset`` and ``codec`` at once, chunks by iterating.

    After a complete iteration ``plain_size``, ``tree_digest``, ``stored_size``
    and ``stored_sha256`` hold what was read. A malformed index, one whose
    trailer disagrees with its lines, or one that ends early raises
    IntegrityError naming ``label``.
    """

    def __init__(self, stream: BinaryIO, label: str) -> None:
        self.label = label
        self._h = HashingReader(stream)
        self._in: BinaryIO = io.BufferedReader(self._h, buffer_size=1 << 16)
        head = self._read_line().split(" ")
        if len(head) != 4 or head[0] != MAGIC or head[1] not in _KNOWN:
            raise self._bad("not a drkit chunk index of a known version")
        self.version = int(head[1])
        if not head[2] or not _RSET.fullmatch(head[3]):
            raise self._bad("bad header")
        self.codec, self.rset = head[2], head[3]
        if self.version == VERSION:
            # The lines are a zstd frame after the header; the hash stays on the stored bytes.
            self._in = io.BufferedReader(_Frame(self._in, self._bad), buffer_size=1 << 16)
        self.plain_size = 0
        self.tree_digest = ""
        self.stored_size = 0
        self.stored_sha256 = ""

    def _bad(self, why: str) -> IntegrityError:
        return IntegrityError(f"{self.label}: unreadable chunk index ({why})")

    def _read_line(self) -> str:
        raw = self._in.readline(_MAX_LINE)
        if not raw.endswith(b"\n"):
            raise self._bad("truncated" if len(raw) < _MAX_LINE else "line too long")
        try:
            return raw[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise self._bad("not text") from None

    def __iter__(self) -> Iterator[ChunkRef]:
        tree = hashlib.sha256()
        total = 0
        count = 0
        while True:
            line = self._read_line()
            if line.startswith("end"):
                break
            count += 1
            packed = self.version != VERSION_1
            chunk = (_PACKED_LINE if packed else _CHUNK_LINE).fullmatch(line)
            if chunk is None:
                raise self._bad(f"bad chunk line {count}")
            chunk_id, size = bytes.fromhex(chunk[1]), int(chunk[2])
            if size > MAX_CHUNK_SIZE:
                raise self._bad(f"chunk {count} claims {size} bytes, over {MAX_CHUNK_SIZE}")
            at = None
            if packed:
                at = Packed(chunk[3], int(chunk[4]), int(chunk[5]), bytes.fromhex(chunk[6]))
                if not 0 < at.length <= MAX_STORED_SIZE:
                    raise self._bad(f"chunk {count} claims {at.length} stored bytes")
            tree.update(chunk_id)
            total += size
            yield ChunkRef(chunk_id, size, at)
        end = _END_LINE.fullmatch(line)
        if end is None or int(end[1]) != total or end[2] != tree.hexdigest():
            raise self._bad("its end line does not match its chunks")
        if self._in.read(1):
            raise self._bad("data after its end line")
        self.plain_size, self.tree_digest = total, end[2]
        self.stored_size, self.stored_sha256 = self._h.size, self._h.hexdigest()


class _Frame(io.RawIOBase):
    """The plain bytes of the one zstd frame that ``raw`` holds to its end: a frame
    cut short (its checksum included), damaged, or followed by anything is refused."""

    def __init__(self, raw: BinaryIO, bad: Callable[[str], IntegrityError]) -> None:
        self._raw, self._bad = raw, bad
        self._z = zstandard.ZstdDecompressor().decompressobj()
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            data = self._raw.read(1 << 16)
            if not data:
                if not self._z.eof:
                    raise self._bad("truncated")
                return 0
            if self._z.eof:
                raise self._bad("data after its end line")
            try:
                self._out = self._z.decompress(data)
            except zstandard.ZstdError:
                raise self._bad("damaged zstd frame") from None
            if self._z.unused_data:
                raise self._bad("data after its end line")
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def read_index(data: bytes, label: str) -> tuple[IndexReader, list[ChunkRef]]:
    """A whole stored index held in memory (tests, fault campaign): the reader
    (``rset``, ``version``, digests) and its chunks, checked as any read is."""
    reader = IndexReader(io.BytesIO(data), label)
    return reader, list(reader)
