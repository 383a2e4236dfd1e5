"""Version 3 of the chunk index (version 2's lines as one zstd frame) is written,
read back whole, refused when damaged, and version 2 text still reads."""

from __future__ import annotations

import hashlib
import random

import pytest

from drkit.errors import IntegrityError
from drkit.pipeline.chunk_index import ChunkRef, IndexWriter, Packed, read_index

RSET = "0123456789abcdef"
CODEC = "cdc+zstd+age/v1"


def refs(n: int) -> list[ChunkRef]:
    rnd = random.Random(n)  # the same bytes every run: a damaged byte lands in the same place
    packs = [rnd.randbytes(32).hex() for _ in range(n // 50 + 1)]
    return [
        ChunkRef(
            rnd.randbytes(32),
            400_000 + i,
            Packed(packs[i // 50], (i % 50) * 300_000, 200_000 + i, rnd.randbytes(32)),
        )
        for i in range(n)
    ]


def written(chunks: list[ChunkRef]) -> bytes:
    writer = IndexWriter(CODEC, RSET, packed=True)
    for ref in chunks:
        writer.add(ref.id, ref.size, ref.at)
    done = writer.finish()
    raw = done.file.read()
    done.file.close()
    assert done.stored_size == len(raw)
    assert done.stored_sha256 == hashlib.sha256(raw).hexdigest()
    return raw


def v2_text(chunks: list[ChunkRef]) -> bytes:
    tree = hashlib.sha256(b"".join(r.id for r in chunks)).hexdigest()
    lines = [f"drkit-chunk-index 2 {CODEC} {RSET}"]
    for r in chunks:
        assert r.at is not None
        at = r.at
        lines.append(f"{r.id.hex()} {r.size} {at.pack} {at.offset} {at.length} {at.digest.hex()}")
    lines.append(f"end {sum(r.size for r in chunks)} {tree}")
    return ("\n".join(lines) + "\n").encode()


def test_version_3_round_trips_and_is_under_half_of_version_2() -> None:
    chunks = refs(1000)
    raw = written(chunks)
    reader, read = read_index(raw, "idx")
    assert (reader.version, reader.rset, reader.codec) == (3, RSET, CODEC)
    assert read == chunks
    assert reader.stored_sha256 == hashlib.sha256(raw).hexdigest()
    assert reader.stored_size == len(raw)
    # The header stays readable text: a person (or grep) can tell the version and set.
    assert raw.startswith(f"drkit-chunk-index 3 {CODEC} {RSET}\n".encode())
    # ids and digests are 32 random bytes each: ~80 bytes a chunk against ~210 as text.
    assert len(raw) < 0.45 * len(v2_text(chunks))


def test_version_2_text_still_reads() -> None:
    chunks = refs(120)
    reader, read = read_index(v2_text(chunks), "idx")
    assert reader.version == 2 and read == chunks


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda raw: raw[:-3], "truncated|damaged zstd"),
        (lambda raw: raw[: len(raw) // 2], "truncated|damaged zstd"),
        (lambda raw: raw + b"junk", "damaged zstd frame, or data after it|after its end"),
        (lambda raw: raw + raw[raw.index(b"\n") + 1 :], "after its end line"),
        # A changed pack name changes no tree digest: the frame's checksum catches it.
        *(
            (lambda raw, at=at: raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :], "damaged|bad")
            for at in (100, 2000, 9000, -6)
        ),
    ],
)
def test_damaged_version_3_is_refused_naming_it(damage, why: str) -> None:  # type: ignore[no-untyped-def]
    raw = written(refs(200))
    with pytest.raises(IntegrityError, match=f"s3://b/idx: unreadable chunk index .*({why})"):
        read_index(damage(raw), "s3://b/idx")
