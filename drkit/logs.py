"""drkit's one logger, the ``Log`` callable actions take, and progress meters.

Everything drkit says while it works goes to the stdlib logger ``drkit`` (its
children: ``drkit.backup``...), never to stdout, so ``--json`` stays a clean
document. The CLI configures it once (``setup``): on a terminal a line is the
message alone (``warning: `` before a warning); elsewhere (cron mail, a
journal) every line carries an ISO 8601 UTC time, the host and source it is
about and the level::

    2026-12-08T01:29:41Z host=web source=db warning: pg_dump: ...

Host and source come from context variables that the actions set around a host
and a source (``context``), added by a filter: library code does not thread
host names through every call.

Actions, sources and notifications still take a ``log`` of type ``Log`` (one
line): the CLI passes a ``LogTo`` (which writes records; a line starting
``warning: `` or ``error: `` becomes a record of that level), tests pass a
list's ``append``. ``warn(log, text)`` says a warning through either.

Progress: an action wraps a long piece of work (a source of a backup, a step of
a restore) in ``meter(...)`` and adds the bytes its existing stream taps see.
What shows them is the CLI's business (``set_progress``): bars on a terminal,
a line every ~15 s elsewhere (``LineProgress``). Without one, meters cost two
integer additions per block.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TextIO

Log = Callable[[str], None]

ROOT = "drkit"

_host: contextvars.ContextVar[str | None] = contextvars.ContextVar("drkit_host", default=None)
_source: contextvars.ContextVar[str | None] = contextvars.ContextVar("drkit_source", default=None)


def quiet(_line: str) -> None:
    """A log that drops every line: the default where a caller asked for none."""


def get_logger(name: str = "") -> logging.Logger:
    """``drkit`` or its child ``drkit.<name>``."""
    return logging.getLogger(f"{ROOT}.{name}" if name else ROOT)


@contextlib.contextmanager
def context(host: str | None = None, source: str | None = None) -> Iterator[None]:
    """Records logged inside name ``host`` (and ``source``; a new host clears the
    source). Per thread: a pool's worker sets its own."""
    tokens = []
    if host is not None:
        tokens.append((_host, _host.set(host)))
        tokens.append((_source, _source.set(source)))
    elif source is not None:
        tokens.append((_source, _source.set(source)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current() -> tuple[str | None, str | None]:
    """The host and source of the current context."""
    return _host.get(), _source.get()


_PREFIXES = (("warning: ", logging.WARNING), ("error: ", logging.ERROR))


class LogTo:
    """A ``Log`` writing records to a logger: INFO, or the level its line's ``warning: ``
    / ``error: `` prefix names (the prefix is then dropped: the level says it)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or get_logger()

    def __call__(self, line: str) -> None:
        for prefix, level in _PREFIXES:
            if line.startswith(prefix):
                self.logger.log(level, line[len(prefix) :])
                return
        self.logger.info(line)

    def warning(self, text: str) -> None:
        self.logger.warning(text)

    def debug(self, text: str) -> None:
        self.logger.debug(text)


def warn(log: Log, text: str) -> None:
    """A warning through ``log``: a WARNING record for a ``LogTo``, else the line
    ``warning: text`` (what a wrapper such as the notification tail passes on, and a
    ``LogTo`` further down turns back into a WARNING record)."""
    method = getattr(log, "warning", None)
    if callable(method):
        method(text)
    else:
        log(f"warning: {text}")


def debug(log: Log, text: str) -> None:
    """Detail for ``-v``: a DEBUG record for a ``LogTo``; dropped by any other log."""
    method = getattr(log, "debug", None)
    if callable(method):
        method(text)


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        host, source = current()
        if not hasattr(record, "host"):
            record.host = host
        if not hasattr(record, "source"):
            record.source = source
        return True


class _Scrub(logging.Filter):
    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self.scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.scrub(record.getMessage()), None
        return True


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is at the time (the CLI's scrubbing wrapper, a
    live progress display's redirect, a test's capture)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def utc_stamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))


class PlainFormatter(logging.Formatter):
    """Off a terminal: ``TIME host=H source=S level: message``, one line per record.

    The level comes right before the message (``warning: ...``, as on a terminal), so
    a line matched by its ``warning: `` or ``error: `` text is matched here too."""

    def format(self, record: logging.LogRecord) -> str:
        where = ""
        host, source = getattr(record, "host", None), getattr(record, "source", None)
        if host:
            where += f" host={host}"
        if source:
            where += f" source={source}"
        text = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            text += " (" + self.formatException(record.exc_info).splitlines()[-1] + ")"
        text = text.replace("\n", "\n    ")  # a multi-line message stays one record
        level = record.levelname.lower()
        return f"{utc_stamp(record.created)}{where} {level}: {text}"


class TerminalFormatter(logging.Formatter):
    """On a terminal: the message, ``warning: `` / ``error: `` before those levels."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        if record.levelno >= logging.WARNING:
            return f"warning: {text}"
        return text


_handler: logging.Handler | None = None


def setup(
    level: int = logging.INFO,
    *,
    tty: bool | None = None,
    scrub: Callable[[str], str] | None = None,
) -> logging.Logger:
    """Send the ``drkit`` logger's records of ``level`` and above to stderr, formatted for
    a terminal or not (``tty``; default: whether stderr is one). Called again, it
    replaces its own handler (a command's ``-q`` after the root group's ``-v``)."""
    global _handler
    logger = get_logger()
    if _handler is not None:
        logger.removeHandler(_handler)
    handler = _Stderr()
    on_tty = sys.stderr.isatty() if tty is None else tty
    handler.setFormatter(TerminalFormatter() if on_tty else PlainFormatter())
    handler.addFilter(_Context())
    if scrub is not None:
        handler.addFilter(_Scrub(scrub))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    _handler = handler
    return logger


# --- progress ---------------------------------------------------------------------


@dataclass
class Meter:
    """One piece of long work: a source of a backup, a step of a restore, verify or
    drill. ``read`` and ``stored`` are bytes, added by the stream taps already there."""

    what: str  # "backup", "restore", "verify", "drill"
    name: str  # the source or the step, as the plan names it
    host: str | None = None
    source: str | None = None  # the source it is about, when it is about one
    total: int | None = None  # bytes expected, when known (a restore step's artifacts)
    read: int = 0
    stored: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    failed: bool = False

    def add_read(self, n: int) -> None:
        self.read += n

    def add_stored(self, n: int) -> None:
        self.stored += n

    def counting(self, data: bytes) -> None:
        """A ``TeeReader`` observer adding to ``read``."""
        self.read += len(data)

    def counting_stored(self, data: bytes) -> None:
        """A ``TeeReader`` observer adding to ``stored``."""
        self.stored += len(data)

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def label(self) -> str:
        return f"{self.host}: {self.name}" if self.host else self.name


class ProgressSink(Protocol):
    """What shows meters: told when one starts and ends, reads their counters itself."""

    def started(self, meter: Meter) -> None: ...

    def ended(self, meter: Meter) -> None: ...


_sink: ProgressSink | None = None
_meter: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("drkit_meter", default=None)


def current_meter() -> Meter | None:
    """The meter of the work this thread is inside (for a tap further down)."""
    return _meter.get()


def set_progress(sink: ProgressSink | None) -> ProgressSink | None:
    """Install ``sink`` (None: no progress shown); returns the one it replaces."""
    global _sink
    before, _sink = _sink, sink
    return before


@contextlib.contextmanager
def meter(what: str, name: str, *, total: int | None = None) -> Iterator[Meter]:
    """A ``Meter`` for the work inside, of the current context's host, shown by the
    installed sink from start to end (also when the work fails)."""
    host, source = current()
    m = Meter(what, name, host, source, total)
    sink = _sink
    if sink is not None:
        sink.started(m)
    token = _meter.set(m)
    try:
        yield m
    except BaseException:
        m.failed = True
        raise
    finally:
        _meter.reset(token)
        m.ended = time.monotonic()
        if sink is not None:
            sink.ended(m)


def size(n: float) -> str:
    """Bytes for people: ``512 B``, ``3.4 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover - the loop returns


def describe(m: Meter, *, final: bool = False) -> str:
    """One progress line: bytes read (of the total), rate, bytes stored, time."""
    seconds = max(m.seconds, 1e-6)
    parts = [size(m.read) + (f" of {size(m.total)}" if m.total else "")]
    parts.append(f"{size(m.read / seconds)}/s")
    if m.stored:
        parts.append(f"{size(m.stored)} stored")
    parts.append(f"{m.seconds:.1f}s")
    if final:
        state = "FAILED after" if m.failed else "done:"
        return f"{m.what} {m.name}: {state} " + ", ".join(parts)
    return f"{m.what} {m.name}: " + ", ".join(parts)


class LineProgress:
    """Off a terminal: one INFO line per running meter every ``interval`` seconds (only
    for work that outlasts it), and a final line with bytes, rate and duration."""

    def __init__(self, interval: float, logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self.logger = logger or get_logger("progress")
        self._running: list[Meter] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def started(self, meter: Meter) -> None:
        with self._lock:
            self._running.append(meter)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._tick, name="drkit-progress", daemon=True
                )
                self._thread.start()

    def ended(self, meter: Meter) -> None:
        with self._lock:
            if meter in self._running:
                self._running.remove(meter)
        self._emit(meter, final=True)

    def _emit(self, meter: Meter, *, final: bool = False) -> None:
        extra = {"host": meter.host, "source": meter.source}
        self.logger.info(describe(meter, final=final), extra=extra)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                running = list(self._running)
            for m in running:
                self._emit(m)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
