"""Trying again: bounded retries with backoff, and the clock every wait goes through.

One helper for every loop in drkit that tries again: the S3 client (connection
errors, 5xx, throttling; botocore "standard" mode's jittered backoff), the
provider APIs (429/503, waiting as the answer's headers ask) and the host lock's
wait (``locks.py``: polls until a deadline). Time comes from a ``Clock`` the
caller may pass, so a test hands in one whose ``sleep`` only advances its time
(``tests/helpers.py`` ``FakeClock``): nothing then waits for real.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class Clock:
    """Time as drkit's waits see it: the system's."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> float:
        """Unix time, to compare with timestamps servers send (rate-limit resets)."""
        return time.time()

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Wait ``seconds``; return True at once if ``stop`` is set (the caller gives up)."""
        if stop is not None:
            return stop.wait(max(0.0, seconds))
        time.sleep(max(0.0, seconds))
        return False


SYSTEM_CLOCK = Clock()


@dataclass(frozen=True)
class Backoff:
    """``attempts`` tries in all; before try n+2, ``base * 2**n`` seconds capped at
    ``cap``, or with ``jitter`` a uniform draw below that ("full jitter")."""

    attempts: int = 6
    base: float = 1.0
    cap: float = 60.0
    jitter: bool = False

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first)."""
        wait = min(self.base * 2**retry, self.cap)
        return random.uniform(0, wait) if self.jitter else wait


class Cancelled(Exception):
    """``stop`` was set while waiting to try again; ``last`` is the error that came before."""

    def __init__(self, last: Exception, attempts: int) -> None:
        super().__init__(f"cancelled after {attempts} attempts: {last}")
        self.last = last
        self.attempts = attempts


def retry(
    call: Callable[[], T],
    *,
    backoff: Backoff,
    retryable: Callable[[Exception], bool],
    clock: Clock = SYSTEM_CLOCK,
    delay: Callable[[Exception, int], float] | None = None,
    stop: threading.Event | None = None,
) -> T:
    """Return ``call()``, trying again while it raises an error ``retryable`` accepts.

    Before retry number n (0 for the first) it waits ``backoff.delay(n)``, or
    ``delay(error, n)`` when given (a server's Retry-After). After
    ``backoff.attempts`` tries the last error propagates unchanged, as does at
    once any error ``retryable`` refuses. Raises Cancelled
    (from the last error) when ``stop`` is set during a wait.
    """
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            attempt += 1
            if attempt >= backoff.attempts or not retryable(exc):
                raise
            wait = backoff.delay(attempt - 1) if delay is None else delay(exc, attempt - 1)
            if clock.sleep(wait, stop):
                raise Cancelled(exc, attempt) from exc


def wait_until(
    deadline: float,
    poll: float,
    clock: Clock = SYSTEM_CLOCK,
) -> bool:
    """Sleep one ``poll`` interval (less if the deadline is nearer); False, without
    sleeping, once ``deadline`` (on ``clock.monotonic``) has passed."""
    remaining = deadline - clock.monotonic()
    if remaining <= 0:
        return False
    clock.sleep(min(poll, remaining))
    return True
