"""The chunk index streams both ways and refuses anything but a whole, consistent index."""

from __future__ import annotations

import hashlib
import io

import pytest

from drkit.errors import IntegrityError
from drkit.pipeline.chunk_index import ChunkRef, IndexReader, IndexWriter

RSET = "0123456789abcdef"


def written(sizes: list[int]) -> tuple[bytes, list[ChunkRef], str]:
    writer = IndexWriter("cdc+zstd+age/v1", RSET)
    refs = [ChunkRef(hashlib.sha256(str(i).encode()).digest(), n) for i, n in enumerate(sizes)]
    for ref in refs:
        writer.add(ref.id, ref.size)
    done = writer.finish()
    raw = done.file.read()
    done.file.close()
    assert done.stored_size == len(raw)
    assert done.stored_sha256 == hashlib.sha256(raw).hexdigest()
    tree = hashlib.sha256(b"".join(r.id for r in refs)).hexdigest()
    assert done.tree_digest == tree and done.plain_size == sum(sizes)
    return raw, refs, tree


def test_round_trip_reports_digests_after_the_last_chunk() -> None:
    raw, refs, tree = written([5, 0, 1 << 20])
    reader = IndexReader(io.BytesIO(raw), "idx")
    assert (reader.rset, reader.codec) == (RSET, "cdc+zstd+age/v1")
    assert list(reader) == refs
    assert (reader.plain_size, reader.tree_digest) == ((1 << 20) + 5, tree)
    assert reader.stored_sha256 == hashlib.sha256(raw).hexdigest()


def test_an_empty_artifact_has_an_index_too() -> None:
    raw, refs, _tree = written([])
    assert refs == [] and list(IndexReader(io.BytesIO(raw), "idx")) == []


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda raw: raw[: len(raw) // 2], "truncated|bad chunk"),
        (lambda raw: raw[: raw.rindex(b"end ")], "truncated"),
        (lambda raw: raw + b"extra\n", "after its end line"),
        (lambda raw: raw.replace(b" 5\n", b" 6\n", 1), "does not match its chunks"),
        (lambda raw: raw.replace(b"drkit-chunk-index 1", b"drkit-chunk-index 9"), "known version"),
        (lambda raw: b"x" * 300, "line too long|known version"),
    ],
)
def test_damaged_index_is_refused_naming_it(damage, why: str) -> None:  # type: ignore[no-untyped-def]
    raw, _refs, _tree = written([5, 7, 9])
    with pytest.raises(IntegrityError, match=f"s3://b/idx: unreadable chunk index .*({why})"):
        list(IndexReader(io.BytesIO(damage(raw)), "s3://b/idx"))
