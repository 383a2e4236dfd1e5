"""How a command shows the progress meters of its long work (``drkit.logs.meter``).

On a terminal: ``rich.progress`` bars on stderr (per source of a backup: bytes read,
rate, bytes stored; per step of a restore, verify or drill). rich is imported only
then: a backup from cron loads none of it (tests/e2e/test_backup_lean.py).

Elsewhere (cron, a pipe, a journal): ``drkit.logs.LineProgress``, a timestamped line
per running source or step every ``$DRKIT_PROGRESS_INTERVAL`` seconds (default 15)
and a final line with bytes, rate and duration.

None under ``-q`` (warnings and errors only), nor with ``--json`` unless ``-v``; never
on stdout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from drkit.errors import UsageError
from drkit.logs import LineProgress, Meter, get_logger, set_progress, size

INTERVAL_ENV = "DRKIT_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 15.0
_REFRESH = 0.25  # seconds between two updates of the bars from the meters


def interval() -> float:
    """Seconds between two progress lines off a terminal. Raises UsageError."""
    text = os.environ.get(INTERVAL_ENV)
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise UsageError(f"${INTERVAL_ENV}: not a positive number of seconds: {text!r}")
    return value


@contextlib.contextmanager
def show_progress() -> Iterator[None]:
    """Show the meters started inside, as the log level and stderr allow (see module)."""
    if get_logger().getEffectiveLevel() > logging.INFO:
        yield
        return
    sink: LineProgress | BarProgress
    sink = BarProgress() if sys.stderr.isatty() else LineProgress(interval())
    before = set_progress(sink)
    try:
        yield
    finally:
        set_progress(before)
        sink.close()


class BarProgress:
    """rich bars on stderr, one task per meter, refreshed from its counters; log lines
    print above them (stderr is redirected through the display while it is live)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):  # the meter's mean rate, in the units of the plain lines
            def render(self, task: Any) -> Text:
                return Text(task.fields.get("rate", ""), style="progress.data.speed")

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),  # not rich's: none for work without bytes
            Rate(),
            TextColumn("{task.fields[stored]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            redirect_stdout=False,  # stdout is the command's (a --json document)
            redirect_stderr=True,
        )
        self._tasks: dict[int, tuple[Meter, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def started(self, meter: Meter) -> None:
        with self._lock:
            if self._thread is None:
                self.progress.start()
                self._thread = threading.Thread(
                    target=self._refresh, name="drkit-progress", daemon=True
                )
                self._thread.start()
            task = self.progress.add_task(
                meter.label, total=meter.total, amount=_amount(meter), stored="", rate=""
            )
            self._tasks[id(meter)] = (meter, task)

    def ended(self, meter: Meter) -> None:
        with self._lock:
            found = self._tasks.pop(id(meter), None)
        if found is None:
            return
        _m, task = found
        state = "FAILED" if meter.failed else "done"
        self.progress.update(
            task,
            description=f"{meter.label}: {state}",
            total=meter.total or meter.read or 1,
            completed=meter.total if meter.total and not meter.failed else meter.read or 1,
            amount=_amount(meter),
            stored=_stored(meter),
            rate=_rate(meter),
        )
        self.progress.stop_task(task)

    def _update(self) -> None:
        with self._lock:
            running = list(self._tasks.values())
        for meter, task in running:
            self.progress.update(
                task,
                completed=meter.read,
                amount=_amount(meter),
                stored=_stored(meter),
                rate=_rate(meter),
            )

    def _refresh(self) -> None:
        while not self._stop.wait(_REFRESH):
            self._update()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._update()
            self.progress.stop()


def _amount(meter: Meter) -> str:
    """Bytes so far (of the total): nothing for work that moves no bytes (a drill's
    container start)."""
    if not meter.read and not meter.total:
        return ""
    return size(meter.read) + (f"/{size(meter.total)}" if meter.total else "")


def _rate(meter: Meter) -> str:
    return f"{size(meter.read / meter.seconds)}/s" if meter.read and meter.seconds else ""


def _stored(meter: Meter) -> str:
    return f"{size(meter.stored)} stored" if meter.stored else ""
