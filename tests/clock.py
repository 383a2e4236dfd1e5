"""A clock for drkit's waits (``drkit.retry.Clock``) on which no test waits for real."""

from __future__ import annotations

import threading
from collections.abc import Callable

from drkit.retry import Clock


class VirtualClock(Clock):
    """Time that passes only when drkit sleeps: waits are instant and recorded.

    ``epoch`` is the Unix time at 0 on the monotonic clock; ``on_sleep``, if set,
    runs at each sleep with its length, after the time has moved on (a test's way
    to act while drkit waits: a rival writes during a confirm delay).
    """

    def __init__(self, epoch: float = 0.0) -> None:
        self.t = 0.0
        self.epoch = epoch
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None

    def monotonic(self) -> float:
        return self.t

    def now(self) -> float:
        return self.epoch + self.t

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        self.sleeps.append(seconds)
        self.t += max(0.0, seconds)
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        return bool(stop is not None and stop.is_set())
