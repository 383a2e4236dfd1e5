"""The provider interface: snapshot a machine, await it, list, delete, and boot a copy.

A provider is built for one owner (host + source) and one resource (droplet,
instance or server). Every snapshot drkit makes is named
``drkit:host=<host>:source=<source>:<UTC stamp>`` (and, where the provider has
labels, labelled ``drkit/host`` and ``drkit/source``): ``Owner.owns`` decides
from that alone which snapshots retention may ever delete.

Errors are ``ProviderError`` naming host, source, provider and resource; the
API token is scrubbed from every message, and never kept in a repr.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from drkit.durations import format_duration
from drkit.errors import DrkitError
from drkit.policy.checks import check_endpoint
from drkit.providers.retry import PagingError, RetriesExhausted, paginate, with_retries
from drkit.retry import SYSTEM_CLOCK, Backoff, Clock

T = TypeVar("T")
C = TypeVar("C", bound=Hashable)

LABEL_HOST = "drkit/host"
LABEL_SOURCE = "drkit/source"
_STAMP = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(
    r"^drkit:host=(?P<host>[^:\s]+):source=(?P<source>[^:\s]+):(?P<stamp>\d{8}T\d{6}Z)$"
)


class ProviderError(DrkitError):
    """A provider call, snapshot or instance failed. Names host, source, provider, resource."""


class ProviderTimeout(ProviderError):
    """Waiting exceeded its timeout; the provider may still finish the work later."""


@dataclass(frozen=True)
class ProviderSnapshot:
    """One snapshot as the provider lists it.

    ``status`` is ``complete`` or ``pending``, else the provider's own word (a
    failure); ``labels`` is None where the provider has no labels.
    """

    id: str
    name: str
    size_gb: float | None
    created: dt.datetime | None
    status: str
    labels: Mapping[str, str] | None = None

    def facts(self) -> dict[str, Any]:
        """What a manifest records about it (no secrets: ids, name, size, time)."""
        return {
            "id": self.id,
            "name": self.name,
            "size_gb": self.size_gb,
            "created": self.created.isoformat() if self.created else None,
            "status": self.status,
        }


@dataclass(frozen=True)
class PendingSnapshot:
    """What ``create_snapshot`` returns: enough to poll the work until it ends."""

    name: str
    snapshot_id: str | None = None
    action_id: str | None = None


@dataclass(frozen=True)
class CreatedInstance:
    """A machine created from a snapshot; ``address`` is its public IPv4 once known."""

    id: str
    name: str
    address: str | None
    status: str


@dataclass(frozen=True)
class Pending:
    """A poll's answer while work goes on: the provider's own word for it."""

    status: str


@dataclass(frozen=True)
class Owner:
    """Whose snapshots these are: drkit's host and source names."""

    host: str
    source: str

    def snapshot_name(self, when: dt.datetime) -> str:
        stamp = when.astimezone(dt.UTC).strftime(_STAMP)
        return f"drkit:host={self.host}:source={self.source}:{stamp}"

    def labels(self) -> dict[str, str]:
        return {LABEL_HOST: self.host, LABEL_SOURCE: self.source}

    def owns(self, snapshot: ProviderSnapshot) -> bool:
        """True only for a snapshot drkit made for this host and source.

        The name must match exactly; where the provider has labels they must
        match too, so a hand-renamed snapshot is never taken for drkit's.
        """
        m = _NAME.match(snapshot.name)
        if not m or m["host"] != self.host or m["source"] != self.source:
            return False
        if snapshot.labels is None:
            return True
        return all(snapshot.labels.get(k) == v for k, v in self.labels().items())


def name_time(name: str) -> dt.datetime | None:
    """The UTC time in a drkit snapshot name, or None for any other name."""
    m = _NAME.match(name)
    if not m:
        return None
    return dt.datetime.strptime(m["stamp"], _STAMP).replace(tzinfo=dt.UTC)


def parse_time(value: object) -> dt.datetime | None:
    """An API's ISO 8601 timestamp as an aware datetime (None if absent or unreadable)."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class Provider(ABC):
    """One provider account, one resource. Subclasses implement the API calls.

    Not shared between threads: a background snapshot builds its own.
    """

    kind: ClassVar[str]  # digitalocean, vultr, hetzner
    noun: ClassVar[str]  # droplet, instance, server
    default_endpoint: ClassVar[str]
    default_poll_interval: ClassVar[float]

    def __init__(
        self,
        owner: Owner,
        resource_id: str,
        token: str,
        *,
        endpoint: str | None = None,
        clock: Clock | None = None,
        poll_interval: float | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.owner = owner
        self.resource_id = resource_id
        # Short values would mangle messages; real API tokens are long.
        self._scrub_values = tuple(v for v in {token, token.strip()} if len(v) >= 6)
        self.clock = clock or SYSTEM_CLOCK
        self.poll_interval = poll_interval or self.default_poll_interval
        self.backoff = backoff or Backoff()
        self.stop: threading.Event | None = None
        try:
            self.endpoint, self.plain_http = check_endpoint(endpoint or self.default_endpoint)
        except ValueError as exc:
            raise self.error("configuration", str(exc)) from None
        self._connect(token)

    @abstractmethod
    def _connect(self, token: str) -> None:
        """Build the provider's client; the token is used here and kept only inside it."""

    # -- what every provider implements ---------------------------------
    @abstractmethod
    def create_snapshot(self, name: str, labels: Mapping[str, str]) -> PendingSnapshot:
        """Start a snapshot of the resource. Raises ProviderError."""

    @abstractmethod
    def poll(self, handle: PendingSnapshot) -> ProviderSnapshot | Pending:
        """One look at a snapshot being made. Raises ProviderError if it failed."""

    @abstractmethod
    def list_all(self) -> list[ProviderSnapshot]:
        """Every snapshot of this resource the API lists, drkit's or not (all pages)."""

    @abstractmethod
    def delete(self, snapshot_id: str) -> None:
        """Delete one snapshot. Raises ProviderError (also when it does not exist)."""

    @abstractmethod
    def start_instance(self, snapshot_id: str, region: str, size: str, name: str) -> str:
        """Ask for a new machine booted from the snapshot; return its id."""

    @abstractmethod
    def poll_instance(self, instance_id: str, name: str) -> CreatedInstance | Pending:
        """One look at a new machine: done once it runs and has a public address."""

    def close(self) -> None:  # noqa: B027 - optional hook; most clients need nothing
        """Release connections (default: nothing to release)."""

    # -- shared behaviour ------------------------------------------------
    def list_snapshots(self) -> list[ProviderSnapshot]:
        """Only the snapshots drkit made for this owner, oldest first."""
        own = [s for s in self.list_all() if self.owner.owns(s)]
        return sorted(own, key=by_time)

    def wait(self, handle: PendingSnapshot, timeout: float) -> ProviderSnapshot:
        """Poll until the snapshot is complete. Raises ProviderTimeout or ProviderError."""
        return self._until(f"snapshot {handle.name}", timeout, lambda: self.poll(handle))

    def create_instance(
        self, snapshot_id: str, region: str, size: str, name: str, timeout: float = 900.0
    ) -> CreatedInstance:
        """Create a machine from a snapshot and wait until it has an address."""
        instance_id = self.start_instance(snapshot_id, region, size, name)
        return self._until(
            f"new {self.noun} {instance_id} ({name})",
            timeout,
            lambda: self.poll_instance(instance_id, name),
        )

    @property
    def label(self) -> str:
        return (
            f"host {self.owner.host}: source {self.owner.source}: "
            f"{self.kind} {self.noun} {self.resource_id}"
        )

    def scrub(self, text: str) -> str:
        """``text`` with the token replaced, whatever an SDK put in its message."""
        for value in self._scrub_values:
            text = text.replace(value, "***")
        return text

    def error(
        self, what: str, detail: str, cls: type[ProviderError] = ProviderError
    ) -> ProviderError:
        return cls(self.scrub(f"{self.label}: {what}: {detail}"))

    def retried(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, tried again while it raises ``Transient`` (``self.backoff``, on
        ``self.clock``); the last answer as a ProviderError naming ``what`` when the
        attempts run out or ``self.stop`` is set."""
        try:
            return with_retries(call, backoff=self.backoff, clock=self.clock, stop=self.stop)
        except RetriesExhausted as exc:
            raise self.error(what, str(exc)) from None

    def paginate(self, what: str, fetch: Callable[[C | None], tuple[list[T], C | None]]) -> list[T]:
        try:
            return paginate(fetch)
        except PagingError as exc:
            raise self.error(what, str(exc)) from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} via {self.endpoint}>"

    def _until(self, what: str, timeout: float, check: Callable[[], T | Pending]) -> T:
        deadline = self.clock.monotonic() + timeout
        while True:
            result = check()
            if not isinstance(result, Pending):
                return result
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                waited = format_duration(dt.timedelta(seconds=timeout))
                raise self.error(
                    what,
                    f"timed out after {waited} (last status: {result.status}); "
                    "the provider may still finish it",
                    ProviderTimeout,
                )
            if self.clock.sleep(min(self.poll_interval, remaining), self.stop):
                raise self.error(what, f"cancelled while {result.status}")


def by_time(s: ProviderSnapshot) -> tuple[dt.datetime, str]:
    """Sort key: creation time (else the time in a drkit name), then id."""
    when = s.created or name_time(s.name) or dt.datetime.min.replace(tzinfo=dt.UTC)
    return when, s.id
