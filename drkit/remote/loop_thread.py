"""A private asyncio event loop in a daemon thread, for synchronous callers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from typing import Any, TypeVar

T = TypeVar("T")

STOP_WAIT = 5.0  # for tasks still pending at stop to finish cancelling, and for the thread


class LoopStopped(RuntimeError):
    """The loop was stopped (its runner closed): nothing more runs on it."""


class LoopThread:
    """A private event loop running in a daemon thread.

    Once ``stop`` began, ``call`` refuses at once (closing the coroutine it was
    given, so none is left "never awaited"), and tasks still pending are cancelled
    before the loop stops: their callers get an error instead of waiting forever.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (TimeoutError after ``timeout``).

        Raises LoopStopped if the loop was stopped."""
        with self._lock:
            if self._stopped:
                coro.close()
                raise LoopStopped(f"{self._thread.name}: the connection was closed")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop, unless the loop was stopped (then nothing happens)."""
        with self._lock:
            if not self._stopped:
                self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        with self._lock:
            if self._stopped or self.loop.is_closed():
                return
            self._stopped = True
        # Every call scheduled before this point runs (and is cancelled) first.
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_pending(), self.loop).result(2 * STOP_WAIT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=STOP_WAIT)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_pending() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=STOP_WAIT)
