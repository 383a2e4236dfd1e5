"""What a provider API's answer says about trying again, and pagination.

A request function raises ``Transient`` for an answer that says "try again
later" (429, Vultr's 503); ``with_retries`` runs it through ``drkit.retry``
(bounded attempts, exponential backoff, the injectable clock), waiting as the
answer's headers ask (``Retry-After``, ``RateLimit-Reset``/``ratelimit-reset``)
when they do. ``paginate`` follows next-page links or cursors and refuses one
that repeats.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

from drkit.retry import Backoff, Cancelled, Clock, retry

T = TypeVar("T")
C = TypeVar("C", bound=Hashable)

# A reset header below this is a delay in seconds (IETF RateLimit draft);
# above it, a Unix timestamp (DigitalOcean, Hetzner).
_EPOCH_THRESHOLD = 1_000_000_000


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


def delay(backoff: Backoff, retry: int, headers: Mapping[str, str], now: float) -> float:
    """Seconds to wait before retry number ``retry``: what the server asked for
    (capped at ``backoff.cap``), else the backoff's."""
    wait = _header_delay(headers, now)
    return backoff.delay(retry) if wait is None else min(max(wait, 0.0), backoff.cap)


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
) -> T:
    """Return ``call()``, retrying it while it raises ``Transient``.

    Raises RetriesExhausted after ``backoff.attempts`` transient answers (or at
    once when ``stop`` is set while waiting); any other exception propagates.
    """

    def wait(exc: Exception, n: int) -> float:
        assert isinstance(exc, Transient)
        return delay(backoff, n, exc.headers, clock.now())

    try:
        return retry(
            call,
            backoff=backoff,
            retryable=lambda exc: isinstance(exc, Transient),
            clock=clock,
            delay=wait,
            stop=stop,
        )
    except Transient as exc:
        raise RetriesExhausted(exc.detail, max(backoff.attempts, 1)) from None
    except Cancelled as exc:
        assert isinstance(exc.last, Transient)
        raise RetriesExhausted(exc.last.detail + "; cancelled", exc.attempts) from None


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
