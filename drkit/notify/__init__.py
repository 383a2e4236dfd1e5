"""Tell someone how a run went: healthchecks pings, ntfy, a JSON webhook (metrics: prometheus.py).

The action layer builds a ``Notifier`` from a policy's ``[notify]`` table
(``Notifier.from_config``) and sends a ``RunEvent`` at the start and at the
end of each host's run. Sending never raises and never changes the run's
outcome: a failed delivery is one warning in the log.

Channels and the events they get by default:

- ``healthchecks``: start, success, fail (the log tail as the ping body);
- ``ntfy``: fail (``ntfy_events`` to change);
- ``webhook``: success, fail (``webhook_events`` to change).
"""

from __future__ import annotations

import collections
import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, Protocol

import httpx

from drkit import __version__
from drkit.durations import parse_duration
from drkit.errors import SecretError
from drkit.logs import Log, warn
from drkit.notify import http
from drkit.redact import scrub
from drkit.secrets import resolve

EventKind = Literal["start", "success", "fail"]
LOG_TAIL_LINES = 200


def new_run_id() -> str:
    """A UUID for one run: pairs its start and end pings."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class RunEvent:
    """One moment of one host's run (start, success or fail)."""

    event: EventKind
    host: str
    run_id: str
    operation: str = "backup"
    snapshot: str | None = None
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    stored_bytes: int | None = None
    sources: tuple[str, ...] = ()
    error: str | None = None
    log_tail: str = ""

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return (self.finished - self.started).total_seconds()

    def title(self) -> str:
        word = {"start": "started", "success": "succeeded", "fail": "FAILED"}[self.event]
        return f"drkit {self.operation} {self.host} {word}"

    def summary(self) -> str:
        """A few lines for humans (ntfy)."""
        lines = [self.title()]
        if self.snapshot:
            lines.append(f"snapshot {self.snapshot}")
        if self.stored_bytes is not None:
            lines.append(f"{self.stored_bytes} bytes stored")
        if self.seconds is not None:
            lines.append(f"{self.seconds:.0f} s")
        if self.error:
            lines.append(self.error)
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON body."""

        def stamp(t: dt.datetime | None) -> str | None:
            return t.astimezone(dt.UTC).isoformat(timespec="seconds") if t else None

        return {
            "source": "drkit",
            "drkit_version": __version__,
            "event": self.event,
            "operation": self.operation,
            "host": self.host,
            "run_id": self.run_id,
            "snapshot": self.snapshot,
            "started": stamp(self.started),
            "finished": stamp(self.finished),
            "seconds": self.seconds,
            "stored_bytes": self.stored_bytes,
            "sources": list(self.sources),
            "error": self.error,
            "log_tail": self.log_tail,
        }


class NotifyConfigLike(Protocol):
    """What ``Notifier.from_config`` reads (the policy's ``[notify]`` table)."""

    @property
    def healthchecks(self) -> str | None: ...
    @property
    def ntfy(self) -> str | None: ...
    @property
    def ntfy_token(self) -> str | None: ...
    @property
    def ntfy_events(self) -> Iterable[str]: ...
    @property
    def webhook(self) -> str | None: ...
    @property
    def webhook_events(self) -> Iterable[str]: ...
    @property
    def timeout(self) -> str: ...


@dataclass(frozen=True)
class Targets:
    """Resolved destinations (secret values: never printed, kept out of repr)."""

    healthchecks: str | None = field(default=None, repr=False)
    ntfy: str | None = field(default=None, repr=False)
    ntfy_token: str | None = field(default=None, repr=False)
    ntfy_events: frozenset[str] = frozenset({"fail"})
    webhook: str | None = field(default=None, repr=False)
    webhook_events: frozenset[str] = frozenset({"success", "fail"})
    timeout: float = http.DEFAULT_TIMEOUT

    @property
    def empty(self) -> bool:
        return not (self.healthchecks or self.ntfy or self.webhook)


def _resolve(ref: str | None, what: str, host: str, log: Log) -> str | None:
    if not ref:
        return None
    try:
        return resolve(ref)
    except SecretError as exc:  # names the reference, never a value
        warn(log, f"host {host}: notify {what} disabled: {exc}")
        return None


def resolve_targets(config: NotifyConfigLike, host: str, log: Log) -> Targets:
    """Resolve a ``[notify]`` table's secret references; an unresolvable one disables
    its channel with a warning (never an error: alerts must not break backups)."""
    try:
        timeout = parse_duration(config.timeout).total_seconds() or http.DEFAULT_TIMEOUT
    except ValueError:
        timeout = http.DEFAULT_TIMEOUT
    return Targets(
        healthchecks=_resolve(config.healthchecks, "healthchecks", host, log),
        ntfy=_resolve(config.ntfy, "ntfy", host, log),
        ntfy_token=_resolve(config.ntfy_token, "ntfy_token", host, log),
        ntfy_events=frozenset(config.ntfy_events),
        webhook=_resolve(config.webhook, "webhook", host, log),
        webhook_events=frozenset(config.webhook_events),
        timeout=timeout,
    )


class Notifier:
    """Sends RunEvents to every configured channel. Use as a context manager."""

    def __init__(self, targets: Targets, log: Log, *, client: httpx.Client | None = None):
        self.targets = targets
        self._log = log
        self._client = client
        self._own_client = client is None

    @classmethod
    def from_config(cls, config: NotifyConfigLike | None, host: str, log: Log) -> Notifier:
        targets = resolve_targets(config, host, log) if config is not None else Targets()
        return cls(targets, log)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = http.make_client(self.targets.timeout)
        return self._client

    def send(self, event: RunEvent) -> dict[str, bool]:
        """Deliver ``event``; returns channel -> delivered. Never raises."""
        t = self.targets
        results: dict[str, bool] = {}
        if t.empty:
            return results
        # Errors and the log tail quote commands' stderr: no resolved secret leaves here.
        event = replace(
            event,
            error=scrub(event.error) if event.error else event.error,
            log_tail=scrub(event.log_tail),
        )
        try:
            if t.healthchecks:
                body = event.log_tail if event.event != "start" else ""
                if event.event == "fail" and event.error and event.error not in body:
                    body = (body + "\n" + event.error).strip()
                results["healthchecks"] = http.healthchecks_ping(
                    self.client,
                    self._log,
                    t.healthchecks,
                    event.event,
                    body=body,
                    run_id=event.run_id,
                )
            if t.ntfy and event.event in t.ntfy_events:
                results["ntfy"] = http.ntfy_publish(
                    self.client,
                    self._log,
                    t.ntfy,
                    title=event.title(),
                    message=event.summary(),
                    priority="high" if event.event == "fail" else "default",
                    tags=["rotating_light"] if event.event == "fail" else ["floppy_disk"],
                    token=t.ntfy_token,
                )
            if t.webhook and event.event in t.webhook_events:
                results["webhook"] = http.webhook_post(
                    self.client, self._log, t.webhook, event.payload()
                )
        except Exception as exc:  # a notification must never fail the run
            warn(self._log, f"host {event.host}: notification failed: {type(exc).__name__}")
        return results

    def close(self) -> None:
        if self._client is not None and self._own_client:
            self._client.close()
            self._client = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LogTail:
    """A log callable that keeps the last ``lines`` messages and passes each one on.

    The backup action logs through it; the fail ping carries ``text()``.
    """

    def __init__(self, forward: Log | None = None, lines: int = LOG_TAIL_LINES) -> None:
        self._forward = forward
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)

    def __call__(self, message: str) -> None:
        self._lines.append(scrub(message))
        if self._forward is not None:
            self._forward(message)

    def text(self) -> str:
        return "\n".join(self._lines)
