"""A fake DigitalOcean API v2: droplet snapshot actions, action polling, snapshots, droplets.

Shapes follow the API reference: ``{"action": {...}}`` with status
``in-progress``/``completed``/``errored``; droplet snapshots with integer ids,
account snapshots (``/v2/snapshots``) with string ids and ``resource_id``;
``links.pages.next`` for pagination; ``{"id", "message"}`` errors; every
answer carries ``ratelimit-*`` headers.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from typing import Any

from tests.providers.fake_http import FakeApi, Reply

NOT_FOUND = {"id": "not_found", "message": "The resource you were accessing could not be found."}


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeDigitalOcean(FakeApi):
    def __init__(self, token: str, page_size: int = 2) -> None:
        super().__init__(token)
        # The real cap is 200; a small one makes a few snapshots span pages.
        self.page_size = page_size
        self.ids = itertools.count(5000)
        self.droplets: dict[int, dict[str, Any]] = {}
        self.snapshots: dict[int, dict[str, Any]] = {}  # id -> droplet snapshot + "droplet_id"
        self.actions: dict[int, dict[str, Any]] = {}
        self.action_polls = 2  # answers "in-progress" this many times, then finishes
        self.action_result = "completed"  # or "errored", or "in-progress" (never ends)
        self.snapshot_size = 12.34
        self.list_lag = 0  # listings that do not show a new snapshot yet
        self.route("POST", r"/v2/droplets/(\d+)/actions", self._post_action)
        self.route("GET", r"/v2/actions/(\d+)", self._get_action)
        self.route("GET", r"/v2/droplets/(\d+)/snapshots", self._droplet_snapshots)
        self.route("GET", r"/v2/snapshots", self._account_snapshots)
        self.route("DELETE", r"/v2/snapshots/(\d+)", self._delete_snapshot)
        self.route("POST", r"/v2/droplets", self._create_droplet)
        self.route("GET", r"/v2/droplets/(\d+)", self._get_droplet)

    # -- seeding ------------------------------------------------------------
    def add_droplet(self, droplet_id: int, name: str = "web") -> None:
        self.droplets[droplet_id] = {
            "id": droplet_id,
            "name": name,
            "status": "active",
            "networks": {"v4": [{"ip_address": "192.0.2.1", "type": "public"}], "v6": []},
        }

    def add_snapshot(
        self, droplet_id: int, name: str, created: dt.datetime, size: float = 1.5
    ) -> int:
        sid = next(self.ids)
        self.snapshots[sid] = {
            "id": sid,
            "name": name,
            "distribution": "Ubuntu",
            "slug": None,
            "public": False,
            "regions": ["nyc3"],
            "created_at": iso(created),
            "min_disk_size": 25,
            "type": "snapshot",
            "size_gigabytes": size,
            "droplet_id": droplet_id,
        }
        return sid

    # -- API ----------------------------------------------------------------
    def unauthorized(self) -> Reply:
        return 401, {}, {"id": "Unauthorized", "message": "Unable to authenticate you."}

    def not_found(self) -> Reply:
        return 404, {}, NOT_FOUND

    def common_headers(self) -> dict[str, str]:
        return {
            "ratelimit-limit": "5000",
            "ratelimit-remaining": "4999",
            "ratelimit-reset": str(int(time.time()) + 60),
        }

    def _post_action(self, droplet: str, *, query: Any, body: Any) -> Reply:
        if int(droplet) not in self.droplets:
            return 404, {}, NOT_FOUND
        if not isinstance(body, dict) or body.get("type") != "snapshot":
            return 422, {}, {"id": "unprocessable_entity", "message": "type is invalid"}
        aid = next(self.ids)
        self.actions[aid] = {
            "id": aid,
            "status": "in-progress",
            "type": "snapshot",
            "started_at": iso(dt.datetime.now(dt.UTC)),
            "completed_at": None,
            "resource_id": int(droplet),
            "resource_type": "droplet",
            "region_slug": "nyc3",
            "_name": body.get("name"),
            "_polls": 0,
        }
        return 201, {}, {"action": _public(self.actions[aid])}

    def _get_action(self, action: str, *, query: Any, body: Any) -> Reply:
        a = self.actions.get(int(action))
        if a is None:
            return 404, {}, NOT_FOUND
        a["_polls"] += 1
        if a["status"] == "in-progress" and a["_polls"] > self.action_polls:
            a["status"] = self.action_result
            if self.action_result == "completed":
                a["completed_at"] = iso(dt.datetime.now(dt.UTC))
                sid = self.add_snapshot(
                    a["resource_id"], a["_name"], dt.datetime.now(dt.UTC), self.snapshot_size
                )
                self.snapshots[sid]["_hidden_for"] = self.list_lag
        return 200, {}, {"action": _public(a)}

    def _droplet_snapshots(self, droplet: str, *, query: Any, body: Any) -> Reply:
        if int(droplet) not in self.droplets:
            return 404, {}, NOT_FOUND
        mine = [s for s in self.snapshots.values() if s["droplet_id"] == int(droplet)]
        if query.get("page", ["1"]) == ["1"]:
            for s in mine:
                s["_hidden_for"] = s.get("_hidden_for", 0) - 1
        rows = [_public(s) for s in mine if s.get("_hidden_for", 0) < 0]
        return self._page(f"/v2/droplets/{droplet}/snapshots", rows, query, {})

    def _account_snapshots(self, *, query: Any, body: Any) -> Reply:
        rows = [
            {
                **{k: s[k] for k in ("name", "created_at", "regions", "min_disk_size")},
                "id": str(s["id"]),
                "resource_id": str(s["droplet_id"]),
                "resource_type": "droplet",
                "size_gigabytes": s["size_gigabytes"],
                "tags": [],
            }
            for s in self.snapshots.values()
        ]
        return self._page("/v2/snapshots", rows, query, {"resource_type": "droplet"})

    def _page(self, path: str, rows: list[Any], query: Any, keep: dict[str, str]) -> Reply:
        page = int(query.get("page", ["1"])[0])
        per_page = min(int(query.get("per_page", ["20"])[0]), self.page_size)
        last = max(1, -(-len(rows) // per_page))
        start = (page - 1) * per_page
        extra = "".join(f"&{k}={v}" for k, v in keep.items())
        pages: dict[str, str] = {}
        if page < last:
            pages["next"] = f"{self.url}{path}?page={page + 1}&per_page={per_page}{extra}"
            pages["last"] = f"{self.url}{path}?page={last}&per_page={per_page}{extra}"
        if page > 1:
            pages["first"] = f"{self.url}{path}?page=1&per_page={per_page}{extra}"
            pages["prev"] = f"{self.url}{path}?page={page - 1}&per_page={per_page}{extra}"
        return (
            200,
            {},
            {
                "snapshots": rows[start : start + per_page],
                "links": {"pages": pages} if pages else {},
                "meta": {"total": len(rows)},
            },
        )

    def _delete_snapshot(self, sid: str, *, query: Any, body: Any) -> Reply:
        if self.snapshots.pop(int(sid), None) is None:
            return 404, {}, NOT_FOUND
        return 204, {}, None

    def _create_droplet(self, *, query: Any, body: Any) -> Reply:
        image = body.get("image") if isinstance(body, dict) else None
        if image not in self.snapshots:
            return (
                422,
                {},
                {
                    "id": "unprocessable_entity",
                    "message": "You specified an invalid image for Droplet creation.",
                },
            )
        did = next(self.ids)
        self.droplets[did] = {
            "id": did,
            "name": body["name"],
            "status": "new",
            "size_slug": body["size"],
            "region": {"slug": body["region"]},
            "networks": {"v4": [], "v6": []},
            "_polls": 0,
        }
        action = {"id": next(self.ids), "rel": "create", "href": f"{self.url}/v2/actions/1"}
        return 202, {}, {"droplet": _public(self.droplets[did]), "links": {"actions": [action]}}

    def _get_droplet(self, did: str, *, query: Any, body: Any) -> Reply:
        d = self.droplets.get(int(did))
        if d is None:
            return 404, {}, NOT_FOUND
        d["_polls"] = d.get("_polls", 0) + 1
        if d["status"] == "new" and d["_polls"] > 1:
            d["status"] = "active"
            d["networks"]["v4"] = [
                {"ip_address": "10.0.0.5", "type": "private"},
                {"ip_address": "192.0.2.55", "type": "public"},
            ]
        return 200, {}, {"droplet": _public(d)}


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop the fake's own bookkeeping keys (``_*`` and ``droplet_id``)."""
    return {k: v for k, v in obj.items() if not k.startswith("_") and k != "droplet_id"}
