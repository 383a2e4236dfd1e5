"""drkit.retry: bounded attempts, backoff with jitter, which errors retry, the clock."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from drkit.retry import Backoff, Cancelled, retry, wait_until
from tests.clock import VirtualClock


class Busy(Exception):
    pass


def failing(times: int, error: Exception) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return calls, call


def test_retries_until_it_works_waiting_the_backoff() -> None:
    clock = VirtualClock()
    calls, call = failing(3, Busy("busy"))
    got = retry(
        call, backoff=Backoff(attempts=5, base=0.5, cap=1.5), retryable=lambda e: True, clock=clock
    )
    assert got == "done" and len(calls) == 4
    assert clock.sleeps == [0.5, 1.0, 1.5]  # 2^n, capped


def test_the_last_error_propagates_unchanged_after_the_attempts() -> None:
    clock = VirtualClock()
    error = Busy("still busy")
    calls, call = failing(10, error)
    with pytest.raises(Busy) as info:
        retry(call, backoff=Backoff(attempts=3), retryable=lambda e: True, clock=clock)
    assert info.value is error and len(calls) == 3 and len(clock.sleeps) == 2


def test_an_error_not_retryable_propagates_at_once() -> None:
    clock = VirtualClock()
    calls, call = failing(10, ValueError("bad request"))
    with pytest.raises(ValueError, match="bad request"):
        retry(call, backoff=Backoff(), retryable=lambda e: isinstance(e, Busy), clock=clock)
    assert len(calls) == 1 and clock.sleeps == []


def test_jitter_draws_below_the_backoff_and_delay_overrides_it() -> None:
    jittered = Backoff(base=0.5, cap=20.0, jitter=True)
    assert all(
        0 <= jittered.delay(n) <= min(20.0, 0.5 * 2**n) for n in range(12) for _ in range(20)
    )
    clock = VirtualClock()
    _, call = failing(2, Busy("x"))
    retry(
        call, backoff=jittered, retryable=lambda e: True, clock=clock, delay=lambda exc, n: 7.0 + n
    )
    assert clock.sleeps == [7.0, 8.0]


def test_a_stop_set_while_waiting_cancels() -> None:
    stop = threading.Event()
    stop.set()
    error = Busy("busy")
    _, call = failing(10, error)
    with pytest.raises(Cancelled) as info:
        retry(call, backoff=Backoff(), retryable=lambda e: True, clock=VirtualClock(), stop=stop)
    assert info.value.last is error and info.value.attempts == 1


def test_wait_until_sleeps_a_poll_at_most_and_not_past_the_deadline() -> None:
    clock = VirtualClock()
    while wait_until(10.0, 4.0, clock):
        pass
    assert clock.sleeps == [4.0, 4.0, 2.0] and clock.t == 10.0
