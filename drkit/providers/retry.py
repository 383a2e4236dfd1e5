"""Bounded retries and pagination for provider APIs, independent of any SDK.

A request function raises ``Transient`` for an answer that says "try again
later" (429, Vultr's 503); ``with_retries`` waits as the answer's headers ask
(``Retry-After``, ``RateLimit-Reset``/``ratelimit-reset``), else backs off
exponentially, and gives up after a fixed number of attempts. ``paginate``
follows next-page links or cursors and refuses one that repeats.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=Hashable)

# A reset header below this is a delay in seconds (IETF RateLimit draft);
# above it, a Unix timestamp (DigitalOcean, Hetzner).
_EPOCH_THRESHOLD = 1_000_000_000


class Clock:
    """Time as the providers see it; tests pass one whose sleep only advances the time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> float:
        """Unix time, to compare with reset timestamps in rate-limit headers."""
        return time.time()

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Wait ``seconds``; return True at once if ``stop`` is set (the caller gives up)."""
        if stop is not None:
            return stop.wait(max(0.0, seconds))
        time.sleep(max(0.0, seconds))
        return False


class Transient(Exception):
    """An answer worth retrying; ``headers`` (lower-cased) may say how long to wait."""

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}


class RetriesExhausted(Exception):
    """Every attempt got a transient answer; ``detail`` is the last one."""

    def __init__(self, detail: str, attempts: int) -> None:
        super().__init__(f"{detail} (gave up after {attempts} attempts)")
        self.detail = detail
        self.attempts = attempts


class PagingError(Exception):
    """A listing's pagination does not end (a repeating cursor or too many pages)."""


@dataclass(frozen=True)
class Backoff:
    """How often and how long to retry: ``attempts`` tries in all, waits capped at ``cap``."""

    attempts: int = 6
    base: float = 1.0
    cap: float = 60.0

    def delay(self, attempt: int, headers: Mapping[str, str], now: float) -> float:
        """Seconds to wait before try ``attempt + 2``: what the server asked for, else 2^n."""
        wait = _header_delay(headers, now)
        if wait is None:
            wait = self.base * 2**attempt
        return min(max(wait, 0.0), self.cap)


def _header_delay(headers: Mapping[str, str], now: float) -> float | None:
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        try:
            return float(retry_after)
        except ValueError:
            pass  # an HTTP date: fall through to the reset header or backoff
    reset = headers.get("ratelimit-reset")
    if reset is not None:
        try:
            value = float(reset)
        except ValueError:
            return None
        return value - now if value > _EPOCH_THRESHOLD else value
    return None


def with_retries(
    call: Callable[[], T],
    *,
    backoff: Backoff,
    clock: Clock,
    stop: threading.Event | None = None,
    on_retry: Callable[[str, float], None] | None = None,
) -> T:
    """Return ``call()``, retrying it while it raises ``Transient``.

    Raises RetriesExhausted after ``backoff.attempts`` transient answers (or at
    once when ``stop`` is set while waiting); any other exception propagates.
    """
    attempt = 0
    while True:
        try:
            return call()
        except Transient as exc:
            attempt += 1
            if attempt >= backoff.attempts:
                raise RetriesExhausted(exc.detail, attempt) from None
            wait = backoff.delay(attempt - 1, exc.headers, clock.now())
            if on_retry is not None:
                on_retry(exc.detail, wait)
            if clock.sleep(wait, stop):
                raise RetriesExhausted(exc.detail + "; cancelled", attempt) from None


def paginate(
    fetch: Callable[[C | None], tuple[list[T], C | None]], max_pages: int = 1000
) -> list[T]:
    """Every item of a paginated listing.

    ``fetch(cursor)`` returns one page and the next cursor (page number, URL or
    opaque token; falsy at the end); the first call gets None. Raises
    PagingError if a cursor repeats or there are more than ``max_pages`` pages.
    """
    items: list[T] = []
    cursor: C | None = None
    seen: set[C] = set()
    for _ in range(max_pages):
        page, following = fetch(cursor)
        items.extend(page)
        if not following:
            return items
        if following in seen:
            raise PagingError(f"the next-page cursor {following!r} repeats")
        seen.add(following)
        cursor = following
    raise PagingError(f"more than {max_pages} pages")
