"""Resolved secrets are scrubbed from errors and stderr tails, even a tail cut inside one."""

from collections.abc import Iterator

import pytest

from drkit import redact, secrets
from drkit.errors import SourceError
from drkit.remote.base import TailBuffer, tail_text

VALUE = "tok-5e1f0c9a7b2d"


@pytest.fixture(autouse=True)
def remembered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("T_SECRET", VALUE)
    assert secrets.resolve("env:T_SECRET") == VALUE
    yield
    redact.forget_all()


def test_errors_and_tails_are_scrubbed() -> None:
    assert str(SourceError(f"host h: source s: curl said {VALUE}")) == (
        "host h: source s: curl said ***"
    )
    assert tail_text(f"\n401 for {VALUE}\n") == ": 401 for ***"
    assert redact.scrub(f'{{"error": "{VALUE}"}}') == '{"error": "***"}'


@pytest.mark.parametrize("cut", range(len(VALUE) + 1))
def test_a_tail_cut_inside_a_secret_shows_none_of_it(cut: int) -> None:
    tail = TailBuffer(limit=40)
    tail.add(b"x" * 100 + VALUE[:cut].encode())
    tail.add(VALUE[cut:].encode() + b" " + b"y" * (40 - len(VALUE) + cut))
    text = tail.text()
    assert all(VALUE[k:] not in text for k in range(len(VALUE) - 1)), text


def test_short_values_are_not_remembered() -> None:
    redact.remember("ab1")
    assert redact.scrub("ab1 cd") == "ab1 cd"
