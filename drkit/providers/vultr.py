"""Vultr instance snapshots through its v2 REST API (a small client over httpx).

Vultr has no official Python client. Snapshot: ``POST /v2/snapshots
{"instance_id", "description"}``, then ``GET /v2/snapshots/{id}`` until its
status leaves ``pending`` (``complete``; can take 30 minutes). Lists page with
``per_page``/``cursor`` and ``meta.links.next``. More than 30 requests a second
are refused with 429 or 503: both are retried with backoff. Vultr snapshots
have no labels, so drkit's name goes in ``description``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from drkit import __version__
from drkit.providers.base import (
    CreatedInstance,
    Pending,
    PendingSnapshot,
    Provider,
    ProviderSnapshot,
    parse_time,
)
from drkit.providers.retry import Transient

PER_PAGE = 100
_GB = 1024**3
_NO_ADDRESS = ("", "0.0.0.0")  # noqa: S104 (the API's answer for none, compared, never bound)


class VultrProvider(Provider):
    kind = "vultr"
    noun = "instance"
    default_endpoint = "https://api.vultr.com"
    default_poll_interval = 20.0

    def _connect(self, token: str) -> None:
        # httpx masks the Authorization header in its reprs.
        self._http = httpx.Client(
            base_url=self.endpoint,
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"drkit/{__version__}"},
            timeout=60.0,
        )

    def create_snapshot(self, name: str, labels: Mapping[str, str]) -> PendingSnapshot:
        body = {"instance_id": self.resource_id, "description": name}
        # A 429/503 from Vultr's limiter means the request was not taken, so
        # even this POST is safe to repeat.
        answer = self._request("POST", "/v2/snapshots", f"snapshot {name}", json=body)
        snap = self._field(answer, "snapshot", f"snapshot {name}")
        return PendingSnapshot(name=name, snapshot_id=str(snap["id"]))

    def poll(self, handle: PendingSnapshot) -> ProviderSnapshot | Pending:
        what = f"snapshot {handle.name}"
        answer = self._request("GET", f"/v2/snapshots/{handle.snapshot_id}", what)
        snap = _snapshot(self._field(answer, "snapshot", what))
        if snap.status == "pending":
            return Pending(snap.status)
        if snap.status != "complete":
            raise self.error(what, f"snapshot {snap.id} status {snap.status}")
        return snap

    def list_all(self) -> list[ProviderSnapshot]:
        # Vultr lists the account's snapshots: no filter by instance exists.
        what = "list snapshots"

        def page(cursor: str | None) -> tuple[list[ProviderSnapshot], str | None]:
            params: dict[str, Any] = {"per_page": PER_PAGE}
            if cursor:
                params["cursor"] = cursor
            answer = self._request("GET", "/v2/snapshots", what, params=params)
            rows = answer.get("snapshots")
            if not isinstance(rows, list):
                raise self.error(what, "unexpected answer: no 'snapshots'")
            following = ((answer.get("meta") or {}).get("links") or {}).get("next") or None
            return [_snapshot(s) for s in rows], following

        return self.paginate(what, page)

    def delete(self, snapshot_id: str) -> None:
        self._request("DELETE", f"/v2/snapshots/{snapshot_id}", f"delete snapshot {snapshot_id}")

    def start_instance(self, snapshot_id: str, region: str, size: str, name: str) -> str:
        what = f"create instance {name}"
        body = {"region": region, "plan": size, "snapshot_id": snapshot_id, "label": name}
        answer = self._request("POST", "/v2/instances", what, json=body)
        return str(self._field(answer, "instance", what)["id"])

    def poll_instance(self, instance_id: str, name: str) -> CreatedInstance | Pending:
        what = f"new instance {instance_id} ({name})"
        answer = self._request("GET", f"/v2/instances/{instance_id}", what)
        inst = self._field(answer, "instance", what)
        status = str(inst.get("status"))
        address = str(inst.get("main_ip") or "")
        if status == "active" and address not in _NO_ADDRESS:
            return CreatedInstance(instance_id, name, address, status)
        if status in ("pending", "active"):
            return Pending(status if address not in _NO_ADDRESS else f"{status}, no address yet")
        raise self.error(what, f"status {status}")

    def close(self) -> None:
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One API call: 429/503 (and 5xx for reads and deletes) retried, other errors
        raised naming ``what``; {} for 204."""
        idempotent = method in ("GET", "DELETE")

        def attempt() -> httpx.Response:
            try:
                response = self._http.request(method, path, json=json, params=params)
            except httpx.TransportError as exc:
                detail = f"cannot reach {self.endpoint}: {type(exc).__name__}"
                if idempotent:
                    raise Transient(detail) from None
                raise self.error(what, detail) from None
            status = response.status_code
            if status in (429, 503) or (idempotent and status in (500, 502, 504)):
                raise Transient(_detail(response), response.headers)
            return response

        response = self.retried(what, attempt)
        if response.status_code >= 400:
            raise self.error(what, _detail(response))
        if response.status_code == 204 or not response.content:
            return {}
        try:
            body = response.json()
        except ValueError:
            raise self.error(what, f"HTTP {response.status_code}: answer is not JSON") from None
        if not isinstance(body, dict):
            raise self.error(what, f"HTTP {response.status_code}: unexpected answer")
        return body

    def _field(self, answer: dict[str, Any], key: str, what: str) -> dict[str, Any]:
        value = answer.get(key)
        if not isinstance(value, dict):
            raise self.error(what, f"unexpected answer: no {key!r}")
        return value


def _detail(response: httpx.Response) -> str:
    """``HTTP 404: instance not found`` from Vultr's ``{"error": ..., "status": ...}``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get("error") if isinstance(body, dict) else None
    return f"HTTP {response.status_code}: {message or response.reason_phrase}"


def _snapshot(s: dict[str, Any]) -> ProviderSnapshot:
    size = s.get("size")
    return ProviderSnapshot(
        id=str(s["id"]),
        name=str(s.get("description") or ""),
        size_gb=round(int(size) / _GB, 2) if size is not None else None,
        created=parse_time(s.get("date_created")),
        status=str(s.get("status")),
        labels=None,
    )
