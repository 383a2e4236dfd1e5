"""Hetzner Cloud server snapshots through the official client, ``hcloud``.

Snapshot: ``servers.create_image(server, type="snapshot", description=,
labels=)`` gives the image and its action; the action is polled by id (not
with ``wait_until_finished``, whose default ~2 minutes is far too short and
which cannot be cancelled). Listing uses ``images.get_all(type=["snapshot"],
label_selector=...)``, which follows ``meta.pagination``. hcloud itself
retries ``rate_limit_exceeded`` (and conflicts, 502/504) up to 5 times with
exponential backoff; what still fails is reported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import hcloud
import requests
from hcloud.images import BoundImage, Image
from hcloud.locations import Location
from hcloud.server_types import ServerType
from hcloud.servers import Server

from drkit import __version__
from drkit.providers.base import (
    LABEL_HOST,
    LABEL_SOURCE,
    CreatedInstance,
    Pending,
    PendingSnapshot,
    Provider,
    ProviderSnapshot,
    by_time,
    parse_time,
)
from drkit.providers.retry import Transient

T = TypeVar("T")
_STATUS = {"available": "complete", "creating": "pending"}  # drkit's words for image states


class HetznerProvider(Provider):
    kind = "hetzner"
    noun = "server"
    default_endpoint = "https://api.hetzner.cloud/v1"
    default_poll_interval = 5.0

    def _connect(self, token: str) -> None:
        if not self.resource_id.isdigit():
            raise self.error("configuration", "a server id is a number")
        self._server = int(self.resource_id)
        self._client = hcloud.Client(
            token,
            api_endpoint=self.endpoint,
            application_name="drkit",
            application_version=__version__,
            timeout=60,
        )

    def create_snapshot(self, name: str, labels: Mapping[str, str]) -> PendingSnapshot:
        answer = self._call(
            f"snapshot {name}",
            lambda: self._client.servers.create_image(
                Server(id=self._server), description=name, type="snapshot", labels=dict(labels)
            ),
            idempotent=False,
        )
        return PendingSnapshot(
            name=name, snapshot_id=str(answer.image.id), action_id=str(answer.action.id)
        )

    def poll(self, handle: PendingSnapshot) -> ProviderSnapshot | Pending:
        what = f"snapshot {handle.name}"
        action_id = int(handle.action_id or 0)
        action = self._call(what, lambda: self._client.actions.get_by_id(action_id))
        if action.status == "running":
            return Pending(f"running {action.progress or 0}%")
        if action.status != "success":
            error = action.error or {"code": "unknown", "message": "no error given"}
            raise self.error(
                what, f"action {action_id} {action.status}: {error['code']}: {error['message']}"
            )
        image_id = int(handle.snapshot_id or 0)
        return _snapshot(self._call(what, lambda: self._client.images.get_by_id(image_id)))

    def list_all(self) -> list[ProviderSnapshot]:
        """Snapshots made from this server, and drkit's own from any earlier server."""
        images = self._call(
            "list snapshots", lambda: self._client.images.get_all(type=["snapshot"])
        )
        pairs = [(_snapshot(i), self._from_this_server(i)) for i in images]
        return [s for s, here in pairs if here or self.owner.owns(s)]

    def list_snapshots(self) -> list[ProviderSnapshot]:
        # The label selector keeps the listing small; owns() still checks names.
        selector = f"{LABEL_HOST}={self.owner.host},{LABEL_SOURCE}={self.owner.source}"
        images = self._call(
            "list snapshots",
            lambda: self._client.images.get_all(type=["snapshot"], label_selector=selector),
        )
        own = [s for s in map(_snapshot, images) if self.owner.owns(s)]
        return sorted(own, key=by_time)

    def delete(self, snapshot_id: str) -> None:
        self._call(
            f"delete snapshot {snapshot_id}",
            lambda: self._client.images.delete(Image(id=int(snapshot_id))),
        )

    def start_instance(self, snapshot_id: str, region: str, size: str, name: str) -> str:
        answer = self._call(
            f"create server {name}",
            lambda: self._client.servers.create(
                name,
                server_type=ServerType(name=size),
                image=Image(id=int(snapshot_id)),
                location=Location(name=region),
            ),
            idempotent=False,
        )
        return str(answer.server.id)

    def poll_instance(self, instance_id: str, name: str) -> CreatedInstance | Pending:
        what = f"new server {instance_id} ({name})"
        server = self._call(what, lambda: self._client.servers.get_by_id(int(instance_id)))
        status = str(server.status)
        net = server.public_net
        address = net.ipv4.ip if net is not None and net.ipv4 is not None else None
        if status == "running" and address:
            return CreatedInstance(instance_id, name, address, status)
        if status in ("initializing", "starting", "running"):
            return Pending(status)
        raise self.error(what, f"status {status}")

    def _from_this_server(self, image: BoundImage) -> bool:
        origin = image.created_from
        return origin is not None and origin.id == self._server

    def _call(self, what: str, request: Callable[[], T], idempotent: bool = True) -> T:
        """Run one hcloud call; connection errors on reads retried, errors named and scrubbed."""

        def attempt() -> T:
            try:
                return request()
            except hcloud.APIException as exc:
                raise self.error(what, f"{exc.code}: {exc.message}") from None
            except requests.RequestException as exc:
                detail = f"cannot reach {self.endpoint}: {type(exc).__name__}"
                if idempotent:
                    raise Transient(detail) from None
                raise self.error(what, detail) from None

        return self.retried(what, attempt)


def _snapshot(image: BoundImage) -> ProviderSnapshot:
    size = image.image_size
    return ProviderSnapshot(
        id=str(image.id),
        name=str(image.description or ""),
        size_gb=float(size) if size is not None else None,
        created=parse_time(image.created),
        status=_STATUS.get(str(image.status), str(image.status)),
        labels=dict(image.labels or {}),
    )
