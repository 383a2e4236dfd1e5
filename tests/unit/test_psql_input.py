"""RestrictedInput: drkit's \\restrict first, pg_dump's own guard lines dropped only where
pg_dump puts them, the rest byte for byte, however the stream is read."""

import io

import pytest

from drkit.sources.psqlinput import FOOTER_MAX, RestrictedInput

HEAD = b"--\n-- PostgreSQL database dump\n--\n\n\\restrict ABC123\n\n-- Dumped from 15\n\n"
BODY = b"SET x = 1;\nCOPY t (a) FROM stdin;\n\\restrict inside\n\\unrestrict ABC123\n\\.\n"
FOOT = b"\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict ABC123\n\n"


def read_all(data: bytes, size: int) -> bytes:
    reader = RestrictedInput(io.BytesIO(data), b"\\restrict OURS\n")
    out = b""
    while chunk := reader.read(size):
        out += chunk
    return out


@pytest.mark.parametrize("size", [1, 5, 4096, 1 << 20])
@pytest.mark.parametrize("filler", [0, 3 * FOOTER_MAX + 17])
def test_guard_lines_dropped_in_header_and_footer_only(size: int, filler: int) -> None:
    body = BODY + b"x" * filler + b"\n"
    out = read_all(HEAD + body + FOOT, size)
    assert out == (
        b"\\restrict OURS\n"
        + HEAD.replace(b"\\restrict ABC123\n", b"")
        + body
        + FOOT.replace(b"\\unrestrict ABC123\n", b"")
    )


def test_guard_lines_anywhere_else_pass_and_fail_the_load() -> None:
    # A dump that lifts the guard before its last statement keeps that line: psql
    # then refuses it (wrong key) and ON_ERROR_STOP ends the load.
    dump = b"SELECT 1;\n\\unrestrict ABC123\n\\! id\nSELECT 2;\n"
    assert read_all(dump, 7) == b"\\restrict OURS\n" + dump
    late = b"SELECT 1;\n\\restrict K\nSELECT 2;\n"
    assert read_all(late, 3) == b"\\restrict OURS\n" + late
