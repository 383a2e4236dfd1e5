"""Retry delays and pagination (pure), and an API that cannot be reached at all."""

from __future__ import annotations

import socket

import pytest

from drkit.providers.base import ProviderError
from drkit.providers.factory import open_provider
from drkit.providers.retry import PagingError, Transient, delay, paginate, with_retries
from drkit.retry import Backoff
from tests.providers.conftest import HOST, SOURCE, VirtualClock, make_policy, snapshot_source

NOW = 1_750_000_000.0


@pytest.mark.parametrize(
    ("headers", "attempt", "expected"),
    [
        ({"retry-after": "3"}, 0, 3.0),
        ({"ratelimit-reset": str(int(NOW) + 12)}, 0, 12.0),  # a Unix time (DO, Hetzner)
        ({"ratelimit-reset": "5"}, 0, 5.0),  # seconds from now (IETF draft)
        ({"ratelimit-reset": str(int(NOW) - 5)}, 0, 0.0),  # already passed
        ({"ratelimit-reset": str(int(NOW) + 3600)}, 0, 60.0),  # capped
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 2, 4.0),  # a date: backoff
        ({}, 0, 1.0),
        ({}, 3, 8.0),
        ({}, 10, 60.0),
    ],
)
def test_delay_follows_the_headers_else_backs_off(
    headers: dict[str, str], attempt: int, expected: float
) -> None:
    assert delay(Backoff(attempts=6, base=1.0, cap=60.0), attempt, headers, NOW) == expected


def test_with_retries_is_bounded_and_names_the_last_answer() -> None:
    clock = VirtualClock()
    calls = []

    def refuse() -> None:
        calls.append(1)
        raise Transient("HTTP 503: busy", {"Retry-After": "2"})

    with pytest.raises(Exception, match=r"HTTP 503: busy \(gave up after 3 attempts\)"):
        with_retries(refuse, backoff=Backoff(attempts=3), clock=clock)
    assert len(calls) == 3 and clock.sleeps == [2.0, 2.0]


def test_paginate_follows_cursors_and_refuses_loops() -> None:
    pages = {None: ([1, 2], "b"), "b": ([3], "c"), "c": ([4], "")}
    assert paginate(lambda c: pages[c]) == [1, 2, 3, 4]
    looping = {None: ([1], "x"), "x": ([2], "x")}
    with pytest.raises(PagingError, match="repeats"):
        paginate(lambda c: looping[c])
    with pytest.raises(PagingError, match="more than 3 pages"):
        paginate(lambda c: ([c], (c or 0) + 1), max_pages=3)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connections are refused


@pytest.mark.parametrize("kind", ["digitalocean", "vultr", "hetzner"])
def test_an_unreachable_api_is_retried_then_named(kind: str, token: str) -> None:
    policy = make_policy(kind)
    url = f"http://127.0.0.1:{_closed_port()}" + ("/v1" if kind == "hetzner" else "")
    clock = VirtualClock()
    provider = open_provider(
        policy, snapshot_source(policy), endpoint=url, clock=clock, backoff=Backoff(attempts=3)
    )
    with pytest.raises(ProviderError) as err:
        provider.list_all()
    text = str(err.value)
    assert text.startswith(f"host {HOST}: source {SOURCE}: {kind} ")
    assert f"list snapshots: cannot reach {url}" in text and "gave up after 3 attempts" in text
    assert clock.sleeps == [1.0, 2.0]
    assert token not in text
