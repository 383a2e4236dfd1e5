"""A fake Hetzner Cloud API v1: create_image, actions, images (labels, pages), servers.

Shapes follow the API reference: ``POST /servers/{id}/actions/create_image``
answers ``{"image", "action"}``; actions go ``running`` -> ``success`` or
``error`` (with ``{"code", "message"}``); image lists filter by ``type`` and
``label_selector`` and page with ``meta.pagination``; errors are
``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from typing import Any

from tests.providers.fake_http import FakeApi, Reply


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def error(status: int, code: str, message: str) -> Reply:
    return status, {}, {"error": {"code": code, "message": message, "details": {}}}


def rate_limited(reset_in: int = 1) -> Reply:
    import time

    status, _, body = error(429, "rate_limit_exceeded", "limit of 3600 requests per hour reached")
    headers = {
        "RateLimit-Limit": "3600",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": str(int(time.time()) + reset_in),
    }
    return status, headers, body


class FakeHetzner(FakeApi):
    def __init__(self, token: str, page_size: int = 2) -> None:
        super().__init__(token)
        self.page_size = page_size  # the real maximum is 50
        self.ids = itertools.count(700)
        self.servers: dict[int, dict[str, Any]] = {}
        self.images: dict[int, dict[str, Any]] = {}
        self.actions: dict[int, dict[str, Any]] = {}
        self.action_polls = 2
        self.action_result = "success"  # or "error", or "running" (never ends)
        self.route("POST", r"/v1/servers/(\d+)/actions/create_image", self._create_image)
        self.route("GET", r"/v1/actions/(\d+)", self._get_action)
        self.route("GET", r"/v1/images/(\d+)", self._get_image)
        self.route("GET", r"/v1/images", self._list_images)
        self.route("DELETE", r"/v1/images/(\d+)", self._delete_image)
        self.route("POST", r"/v1/servers", self._create_server)
        self.route("GET", r"/v1/servers/(\d+)", self._get_server)

    def add_server(self, server_id: int, name: str = "web") -> None:
        self.servers[server_id] = _server(server_id, name, "running", "cx22", "fsn1")

    def add_image(
        self,
        server_id: int,
        description: str,
        created: dt.datetime,
        labels: dict[str, str] | None = None,
        size: float = 3.2,
    ) -> int:
        iid = next(self.ids)
        self.images[iid] = {
            "id": iid,
            "type": "snapshot",
            "status": "available",
            "name": None,
            "description": description,
            "image_size": size,
            "disk_size": 40,
            "created": iso(created),
            "created_from": {"id": server_id, "name": "web"},
            "bound_to": None,
            "os_flavor": "debian",
            "os_version": "12",
            "rapid_deploy": False,
            "protection": {"delete": False},
            "deprecated": None,
            "deleted": None,
            "labels": dict(labels or {}),
            "architecture": "x86",
        }
        return iid

    def unauthorized(self) -> Reply:
        return error(401, "unauthorized", "unable to authenticate")

    def not_found(self) -> Reply:
        return error(404, "not_found", "resource not found")

    def _action(self, command: str, resource: int, kind: str) -> dict[str, Any]:
        aid = next(self.ids)
        self.actions[aid] = {
            "id": aid,
            "command": command,
            "status": "running",
            "progress": 0,
            "started": iso(dt.datetime.now(dt.UTC)),
            "finished": None,
            "resources": [{"id": resource, "type": kind}],
            "error": None,
            "_polls": 0,
            "_image": None,
        }
        return self.actions[aid]

    def _create_image(self, server: str, *, query: Any, body: Any) -> Reply:
        sid = int(server)
        if sid not in self.servers:
            return error(404, "not_found", f"server with ID '{sid}' not found")
        iid = self.add_image(sid, body.get("description", ""), dt.datetime.now(dt.UTC))
        self.images[iid].update(status="creating", image_size=None, labels=body.get("labels", {}))
        action = self._action("create_image", sid, "server")
        action["_image"] = iid
        return 201, {}, {"image": self.images[iid], "action": _public(action)}

    def _get_action(self, aid: str, *, query: Any, body: Any) -> Reply:
        a = self.actions.get(int(aid))
        if a is None:
            return error(404, "not_found", f"action with ID '{aid}' not found")
        a["_polls"] += 1
        if a["status"] == "running":
            a["progress"] = min(99, a["_polls"] * 30)
            if a["_polls"] > self.action_polls:
                a["status"] = self.action_result
                if self.action_result == "success":
                    a.update(progress=100, finished=iso(dt.datetime.now(dt.UTC)))
                    if a["_image"] is not None:
                        self.images[a["_image"]].update(status="available", image_size=2.5)
                elif self.action_result == "error":
                    a["error"] = {"code": "action_failed", "message": "Action failed"}
        return 200, {}, {"action": _public(a)}

    def _get_image(self, iid: str, *, query: Any, body: Any) -> Reply:
        image = self.images.get(int(iid))
        if image is None:
            return error(404, "not_found", f"image with ID '{iid}' not found")
        return 200, {}, {"image": image}

    def _list_images(self, *, query: Any, body: Any) -> Reply:
        rows = list(self.images.values())
        if "type" in query:
            rows = [i for i in rows if i["type"] in query["type"]]
        for selector in query.get("label_selector", []):
            rows = [i for i in rows if _selects(selector, i["labels"])]
        page = int(query.get("page", ["1"])[0])
        per_page = min(int(query.get("per_page", ["25"])[0]), self.page_size)
        last = max(1, -(-len(rows) // per_page))
        start = (page - 1) * per_page
        pagination = {
            "page": page,
            "per_page": per_page,
            "previous_page": page - 1 if page > 1 else None,
            "next_page": page + 1 if page < last else None,
            "last_page": last,
            "total_entries": len(rows),
        }
        return (
            200,
            {},
            {"images": rows[start : start + per_page], "meta": {"pagination": pagination}},
        )

    def _delete_image(self, iid: str, *, query: Any, body: Any) -> Reply:
        if self.images.pop(int(iid), None) is None:
            return error(404, "not_found", f"image with ID '{iid}' not found")
        return 204, {}, None

    def _create_server(self, *, query: Any, body: Any) -> Reply:
        image = body.get("image") if isinstance(body, dict) else None
        if image not in self.images:
            return error(400, "invalid_input", "invalid input in field 'image'")
        sid = next(self.ids)
        self.servers[sid] = _server(
            sid, body["name"], "initializing", body["server_type"], body.get("location", "fsn1")
        )
        action = _public(self._action("create_server", sid, "server"))
        start = _public(self._action("start_server", sid, "server"))
        answer = {
            "server": self.servers[sid],
            "action": action,
            "next_actions": [start],
            "root_password": "not-for-logs",
        }
        return 201, {}, answer

    def _get_server(self, sid: str, *, query: Any, body: Any) -> Reply:
        server = self.servers.get(int(sid))
        if server is None:
            return error(404, "not_found", f"server with ID '{sid}' not found")
        if server["status"] == "initializing":
            server["status"] = "starting"
        elif server["status"] == "starting":
            server["status"] = "running"
        return 200, {}, {"server": server}


def _selects(selector: str, labels: dict[str, str]) -> bool:
    """Hetzner label selectors: comma-separated ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        m = re.fullmatch(r"([^!=]+)(==|=|!=)(.*)", term)
        if m:
            key, op, value = m.groups()
            if (labels.get(key) == value) != (op != "!="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _server(sid: int, name: str, status: str, server_type: str, location: str) -> dict[str, Any]:
    return {
        "id": sid,
        "name": name,
        "status": status,
        "created": iso(dt.datetime.now(dt.UTC)),
        "public_net": {
            "ipv4": {"id": sid + 1, "ip": f"192.0.2.{sid % 250}", "blocked": False, "dns_ptr": ""},
            "ipv6": None,
            "floating_ips": [],
            "firewalls": [],
        },
        "private_net": [],
        "server_type": {"id": 22, "name": server_type},
        "location": {"id": 1, "name": location},
        "image": None,
        "iso": None,
        "rescue_enabled": False,
        "locked": False,
        "backup_window": None,
        "outgoing_traffic": 0,
        "ingoing_traffic": 0,
        "included_traffic": 21990232555520,
        "protection": {"delete": False, "rebuild": False},
        "labels": {},
        "volumes": [],
        "load_balancers": [],
        "primary_disk_size": 40,
        "placement_group": None,
    }


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}
