"""The zstd+age/v1 codec: round trips, the on-disk format, and failures in every stage."""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

import pyrage
import pytest
import zstandard

from drkit.errors import CryptoError, IntegrityError, SourceError
from drkit.pipeline.codec import Digests, decode, encode

MiB = 1 << 20
IDENTITY = pyrage.x25519.Identity.generate()
RECIPIENT = IDENTITY.to_public()


def sample(size: int, seed: int = 0) -> bytes:
    """Half text (compresses), half random (does not): exercises both zstd paths."""
    rng = random.Random(seed)
    words = [b"insert", b"into", b"conversations", b"values", b"agent", b"caller", b"\n"]
    text = b" ".join(rng.choice(words) for _ in range(size // 8))[: size // 2]
    return text + rng.randbytes(size - len(text))


def encode_bytes(data: bytes) -> tuple[bytes, Digests]:
    out = io.BytesIO()
    digests = encode(io.BytesIO(data), [RECIPIENT], lambda s: out.write(s.read()))
    return out.getvalue(), digests


def decode_bytes(stored: bytes, expected: Digests | None) -> bytes:
    got = io.BytesIO()
    decode(
        io.BytesIO(stored),
        [IDENTITY],
        lambda s: _copy(s, got),
        expected=expected,
        label="h/s/obj",
    )
    return got.getvalue()


def _copy(src: BinaryIO, dst: io.BytesIO, step: int = 100_003) -> None:
    while chunk := src.read(step):
        dst.write(chunk)


def no_stage_threads() -> bool:
    names = ("drkit-compress", "drkit-encrypt", "drkit-decrypt", "drkit-decompress")
    return not [t for t in threading.enumerate() if t.name in names]


@pytest.mark.parametrize("size", [0, 1, 1000, 3 * MiB + 17])
def test_round_trip_and_digests(size: int) -> None:
    import hashlib

    data = sample(size, seed=size)
    stored, digests = encode_bytes(data)
    assert digests.plain_size == size
    assert digests.plain_sha256 == hashlib.sha256(data).hexdigest()
    assert digests.stored_size == len(stored)
    assert digests.stored_sha256 == hashlib.sha256(stored).hexdigest()
    assert decode_bytes(stored, digests) == data
    assert no_stage_threads()


def test_format_is_one_zstd_stream_inside_one_age_file() -> None:
    """What old drkit versions (and `age -d | zstd -d`) read: the format is unchanged."""
    data = sample(2 * MiB + 5, seed=1)
    stored, _ = encode_bytes(data)
    compressed = pyrage.decrypt(stored, [IDENTITY])
    assert zstandard.ZstdDecompressor().decompressobj().decompress(compressed) == data


def test_zstd_worker_threads_write_the_same_format() -> None:
    """threads=1 (1 MiB jobs) still writes one zstd frame that any reader decodes."""
    data = sample(3 * MiB + 17, seed=3)
    out = io.BytesIO()
    digests = encode(io.BytesIO(data), [RECIPIENT], lambda s: out.write(s.read()), threads=1)
    compressed = pyrage.decrypt(out.getvalue(), [IDENTITY])
    assert zstandard.ZstdDecompressor().decompressobj().decompress(compressed) == data
    assert decode_bytes(out.getvalue(), digests) == data


def test_snapshots_written_by_the_previous_encoder_still_decode() -> None:
    """The encoder before issue 8 (zstd stream_reader inside pyrage.encrypt_io)."""
    data = sample(MiB + 3, seed=2)
    old_stream = zstandard.ZstdCompressor(level=3).stream_reader(io.BytesIO(data))
    out = io.BytesIO()
    pyrage.encrypt_io(io.BufferedReader(old_stream), out, [RECIPIENT])
    assert decode_bytes(out.getvalue(), None) == data
    # Several frames back to back (a possible future writer) decode as one stream.
    frames = b"".join(zstandard.ZstdCompressor().compress(p) for p in (data[:1000], data[1000:]))
    assert decode_bytes(pyrage.encrypt(frames, [RECIPIENT]), None) == data


class FailingSource(io.RawIOBase):
    def __init__(self, good: int) -> None:
        self._left = good

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            raise SourceError("host h: source db: pg_dump exited with status 1")
        n = min(self._left, n if n > 0 else self._left)
        self._left -= n
        return b"x" * n


def test_source_error_reaches_the_caller_unwrapped_and_the_sink_sees_it() -> None:
    seen: list[BaseException] = []

    def sink(stream: BinaryIO) -> None:
        try:
            while stream.read(64 << 10):
                pass
        except BaseException as exc:
            seen.append(exc)
            raise

    with pytest.raises(SourceError, match="pg_dump exited"):
        encode(FailingSource(3 * MiB), [RECIPIENT], sink)  # type: ignore[arg-type]
    assert seen and isinstance(seen[0], SourceError)
    assert no_stage_threads()


def test_sink_error_stops_every_stage() -> None:
    def sink(stream: BinaryIO) -> None:
        stream.read(1000)
        raise OSError("disk full")

    big = io.BytesIO(sample(8 * MiB, seed=3))
    with pytest.raises(OSError, match="disk full"):
        encode(big, [RECIPIENT], sink)
    assert no_stage_threads()


def test_store_returning_early_is_refused() -> None:
    with pytest.raises(IntegrityError, match="whole artifact"):
        encode(io.BytesIO(sample(3 * MiB)), [RECIPIENT], lambda s: s.read(10))
    assert no_stage_threads()


def _decode_error(stored: bytes, expected: Digests | None, **kw: Any) -> BaseException:
    with pytest.raises((IntegrityError, CryptoError)) as err:
        decode_bytes(stored, expected, **kw)
    assert no_stage_threads()
    return err.value


def test_flipped_byte_is_an_integrity_error_naming_the_object() -> None:
    data = sample(MiB, seed=4)
    stored, digests = encode_bytes(data)
    for pos in (len(stored) // 2, len(stored) - 5):
        bad = bytearray(stored)
        bad[pos] ^= 0x01
        err = _decode_error(bytes(bad), digests)
        assert isinstance(err, IntegrityError) and "h/s/obj" in str(err)


def test_wrong_identity_is_a_crypto_error() -> None:
    stored, digests = encode_bytes(b"secret rows")
    other = pyrage.x25519.Identity.generate()
    with pytest.raises(CryptoError, match="does not match any recipient"):
        decode(io.BytesIO(stored), [other], lambda s: s.read(), expected=digests, label="h/s/o")
    assert no_stage_threads()


def test_consumer_never_sees_eof_for_data_that_differs_from_the_manifest() -> None:
    stored, digests = encode_bytes(sample(MiB, seed=5))
    wrong = Digests(digests.plain_size, "0" * 64, digests.stored_size, digests.stored_sha256)
    reached_eof: list[bool] = []

    def consume(stream: BinaryIO) -> None:
        while stream.read(65536):
            pass
        reached_eof.append(True)

    with pytest.raises(IntegrityError, match="content digest"):
        decode(io.BytesIO(stored), [IDENTITY], consume, expected=wrong, label="h/s/o")
    assert reached_eof == []
    stored_wrong = Digests(digests.plain_size, digests.plain_sha256, digests.stored_size, "0" * 64)
    with pytest.raises(IntegrityError, match="stored digest"):
        decode_bytes(stored, stored_wrong)


@pytest.mark.parametrize("when", ["at once", "after a read"])
def test_failing_consumer_stops_every_stage(when: str) -> None:
    stored, digests = encode_bytes(sample(8 * MiB, seed=6))

    def consume(stream: BinaryIO) -> None:
        if when == "after a read":
            stream.read(1000)
        raise RuntimeError("pg_restore died")

    with pytest.raises(RuntimeError, match="pg_restore died"):
        decode(io.BytesIO(stored), [IDENTITY], consume, expected=digests, label="h/s/o")
    assert no_stage_threads()


def test_early_stopping_consumer_still_has_everything_checked() -> None:
    data = sample(2 * MiB, seed=7)
    stored, digests = encode_bytes(data)
    result = decode(
        io.BytesIO(stored), [IDENTITY], lambda s: s.read(10), expected=digests, label="h/s/o"
    )
    assert result == digests


def run_with_timeout(fn: Callable[[], object], seconds: float = 60) -> None:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "codec hung"


def test_large_stream_memory_stays_bounded() -> None:
    """64 MiB through encode holds a few MiB of Python buffers at most."""
    import tracemalloc

    class Endless(io.RawIOBase):
        def __init__(self, total: int) -> None:
            self.left = total
            self.block = sample(MiB, seed=8)

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            n = min(n if n > 0 else MiB, self.left, len(self.block))
            self.left -= n
            return self.block[:n]

    def go() -> None:
        tracemalloc.start()
        try:
            encode(Endless(64 * MiB), [RECIPIENT], lambda s: _drain(s))  # type: ignore[arg-type]
            _cur, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 * MiB

    run_with_timeout(go)


def _drain(stream: BinaryIO) -> None:
    while stream.read(5 * MiB):
        pass
