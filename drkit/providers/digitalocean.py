"""DigitalOcean droplet snapshots through the official client, ``pydo``.

Snapshot: ``POST /v2/droplets/{id}/actions {"type": "snapshot", "name"}``,
then ``GET /v2/actions/{id}`` until completed or errored. The action does not
name the snapshot it made, so the snapshot is found by its (unique) name in
``GET /v2/droplets/{id}/snapshots``. When the droplet is gone (the case a
restore is for) listing falls back to ``GET /v2/snapshots?resource_type=droplet``.
Pages follow ``links.pages.next``. pydo's own retry policy is switched off:
429s are retried here, honouring ``ratelimit-reset``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pydo
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import RetryPolicy

from drkit.providers.base import (
    CreatedInstance,
    Pending,
    PendingSnapshot,
    Provider,
    ProviderSnapshot,
    parse_time,
)
from drkit.providers.retry import Transient

PER_PAGE = 200  # the API's maximum


class DigitalOceanProvider(Provider):
    kind = "digitalocean"
    noun = "droplet"
    default_endpoint = "https://api.digitalocean.com"
    default_poll_interval = 10.0

    def _connect(self, token: str) -> None:
        if not self.resource_id.isdigit():
            raise self.error("configuration", "a droplet id is a number")
        self._droplet = int(self.resource_id)
        self._client = pydo.Client(
            token, endpoint=self.endpoint, retry_policy=RetryPolicy.no_retries(), timeout=60
        )
        # azure-core refuses bearer tokens over plain http; check_endpoint has
        # already limited plain http to loopback (tests, local proxies).
        self._options: dict[str, Any] = {"enforce_https": False} if self.plain_http else {}

    def create_snapshot(self, name: str, labels: Mapping[str, str]) -> PendingSnapshot:
        # Droplet snapshot actions take a name only: ownership is in the name.
        body = {"type": "snapshot", "name": name}
        what = f"snapshot {name}"
        answer = self._call(
            what,
            lambda: self._client.droplet_actions.post(self._droplet, body, **self._options),
            idempotent=False,
        )
        action = _field(answer, "action", what, self)
        return PendingSnapshot(name=name, action_id=str(action["id"]))

    def poll(self, handle: PendingSnapshot) -> ProviderSnapshot | Pending:
        what = f"snapshot {handle.name}"
        action_id = int(handle.action_id or 0)
        answer = self._call(what, lambda: self._client.actions.get(action_id, **self._options))
        action = _field(answer, "action", what, self)
        status = str(action.get("status"))
        if status == "in-progress":
            return Pending(status)
        if status != "completed":
            raise self.error(what, f"action {action_id} {status}")
        for snap in self.list_all():
            if snap.name == handle.name:
                return snap
        # The listing can lag the action by a moment: keep polling until the timeout.
        return Pending("completed, snapshot not listed yet")

    def list_all(self) -> list[ProviderSnapshot]:
        what = "list snapshots"

        def droplet_page(page: int | None) -> tuple[list[ProviderSnapshot], int | None]:
            answer = self._call(
                what,
                lambda: self._client.droplets.list_snapshots(
                    self._droplet, per_page=PER_PAGE, page=page or 1, **self._options
                ),
            )
            if _not_found(answer) and page is None:
                raise _DropletGone
            rows = _field(answer, "snapshots", what, self)
            return [_snapshot(s) for s in rows], self._next(what, answer)

        try:
            return self.paginate(what, droplet_page)
        except _DropletGone:
            pass  # the droplet is gone; its snapshots are not

        def account_page(page: int | None) -> tuple[list[ProviderSnapshot], int | None]:
            answer = self._call(
                what,
                lambda: self._client.snapshots.list(
                    per_page=PER_PAGE, page=page or 1, resource_type="droplet", **self._options
                ),
            )
            rows = _field(answer, "snapshots", what, self)
            mine = [s for s in rows if str(s.get("resource_id")) == self.resource_id]
            return [_snapshot(s) for s in mine], self._next(what, answer)

        return self.paginate(what, account_page)

    def delete(self, snapshot_id: str) -> None:
        what = f"delete snapshot {snapshot_id}"
        key: int | str = int(snapshot_id) if snapshot_id.isdigit() else snapshot_id
        # pydo types snapshot_id as a JSON object; the API takes the id itself.
        answer = self._call(
            what, lambda: self._client.snapshots.delete(cast(Any, key), **self._options)
        )
        if isinstance(answer, dict) and "message" in answer:  # a 400/404 body
            raise self.error(what, _message(answer))

    def start_instance(self, snapshot_id: str, region: str, size: str, name: str) -> str:
        what = f"create droplet {name}"
        image: int | str = int(snapshot_id) if snapshot_id.isdigit() else snapshot_id
        body = {"name": name, "region": region, "size": size, "image": image}
        answer = self._call(
            what,
            lambda: self._client.droplets.create(body, **self._options),
            idempotent=False,
        )
        return str(_field(answer, "droplet", what, self)["id"])

    def poll_instance(self, instance_id: str, name: str) -> CreatedInstance | Pending:
        what = f"new droplet {instance_id} ({name})"
        answer = self._call(
            what, lambda: self._client.droplets.get(int(instance_id), **self._options)
        )
        droplet = _field(answer, "droplet", what, self)
        status = str(droplet.get("status"))
        v4 = (droplet.get("networks") or {}).get("v4") or []
        address = next((n["ip_address"] for n in v4 if n.get("type") == "public"), None)
        if status == "active" and address:
            return CreatedInstance(instance_id, name, str(address), status)
        if status in ("new", "active"):
            return Pending(status if address else f"{status}, no public address yet")
        raise self.error(what, f"status {status}")

    def close(self) -> None:
        self._client.close()

    def _next(self, what: str, answer: dict[str, Any]) -> int | None:
        """The page number in ``links.pages.next`` (None on the last page)."""
        url = ((answer.get("links") or {}).get("pages") or {}).get("next")
        if not url:
            return None
        page = parse_qs(urlsplit(str(url)).query).get("page", [""])[0]
        if not page.isdigit():
            raise self.error(what, f"unreadable next-page link {url!r}")
        return int(page)

    def _call(self, what: str, request: Callable[[], Any], idempotent: bool = True) -> Any:
        """Run one pydo call: 429 (and, for reads, 5xx) retried; errors named, token scrubbed."""

        def attempt() -> Any:
            try:
                answer = request()
            except HttpResponseError as exc:
                status = exc.status_code or 0
                detail = f"HTTP {status}: {_response_message(exc)}"
                if status == 429 or (idempotent and status >= 500):
                    headers = dict(getattr(exc.response, "headers", None) or {})
                    raise Transient(detail, headers) from None
                raise self.error(what, detail) from None
            except (ServiceRequestError, ServiceResponseError) as exc:  # refused, timeouts
                detail = f"cannot reach {self.endpoint}: {type(exc).__name__}"
                if idempotent:
                    raise Transient(detail) from None
                raise self.error(what, detail) from None
            except AzureError as exc:  # anything else the SDK raises: named, final
                raise self.error(what, f"{type(exc).__name__}: {exc.message}") from None
            return answer

        return self.retried(what, attempt)


class _DropletGone(Exception):
    """The droplet's snapshot listing answered 404: list the account's instead."""


def _not_found(answer: Any) -> bool:
    # pydo returns 404 (and some 400) bodies instead of raising.
    return isinstance(answer, dict) and answer.get("id") == "not_found"


def _field(answer: Any, key: str, what: str, provider: Provider) -> Any:
    if not isinstance(answer, dict) or key not in answer:
        text = _message(answer) if isinstance(answer, dict) else "empty answer"
        raise provider.error(what, f"unexpected answer: {text}")
    return answer[key]


def _message(answer: dict[str, Any]) -> str:
    return f"{answer.get('id', 'error')}: {answer.get('message', '(no message)')}"


def _response_message(exc: HttpResponseError) -> str:
    try:
        body = exc.response.json() if exc.response is not None else None  # type: ignore[attr-defined]
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        return _message(body)
    return str(exc.reason or "error")


def _snapshot(s: dict[str, Any]) -> ProviderSnapshot:
    size = s.get("size_gigabytes")
    return ProviderSnapshot(
        id=str(s["id"]),
        name=str(s.get("name", "")),
        size_gb=float(size) if size is not None else None,
        created=parse_time(s.get("created_at")),
        status="complete",  # DigitalOcean lists only finished snapshots
        labels=None,
    )
