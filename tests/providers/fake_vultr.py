"""A fake Vultr API v2: snapshots (create, get, list with cursor, delete) and instances.

Shapes follow the API reference: ``{"snapshot": {id, date_created,
description, size, compressed_size, status, os_id, app_id}}`` with status
``pending`` then ``complete``; lists carry ``meta.total`` and
``meta.links.next``/``prev`` cursors (empty at the end); errors are
``{"error": "...", "status": N}``.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

from tests.providers.fake_http import FakeApi, Reply


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _error(status: int, message: str) -> Reply:
    return status, {}, {"error": message, "status": status}


class FakeVultr(FakeApi):
    def __init__(self, token: str, page_size: int = 2) -> None:
        super().__init__(token)
        self.page_size = page_size  # the real maximum is 500
        self.instances: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.snapshot_polls = 2  # answers "pending" this many times
        self.snapshot_result = "complete"  # or e.g. "failed", or "pending" (never ends)
        self.route("POST", r"/v2/snapshots", self._create_snapshot)
        self.route("GET", r"/v2/snapshots/([0-9a-f-]+)", self._get_snapshot)
        self.route("GET", r"/v2/snapshots", self._list_snapshots)
        self.route("DELETE", r"/v2/snapshots/([0-9a-f-]+)", self._delete_snapshot)
        self.route("POST", r"/v2/instances", self._create_instance)
        self.route("GET", r"/v2/instances/([0-9a-f-]+)", self._get_instance)

    def add_instance(self, instance_id: str) -> None:
        self.instances[instance_id] = {
            "id": instance_id,
            "status": "active",
            "main_ip": "192.0.2.9",
        }

    def add_snapshot(self, description: str, created: dt.datetime, size: int = 40 * 1024**3) -> str:
        sid = str(uuid.uuid4())
        self.snapshots[sid] = {
            "id": sid,
            "date_created": iso(created),
            "description": description,
            "size": size,
            "compressed_size": size // 4,
            "status": "complete",
            "os_id": 1743,
            "app_id": 0,
        }
        return sid

    def unauthorized(self) -> Reply:
        return _error(401, "Invalid API token.")

    def not_found(self) -> Reply:
        return _error(404, "Not found")

    def _create_snapshot(self, *, query: Any, body: Any) -> Reply:
        if not isinstance(body, dict) or body.get("instance_id") not in self.instances:
            return _error(404, "Invalid instance-id.")
        sid = self.add_snapshot(str(body.get("description", "")), dt.datetime.now(dt.UTC))
        self.snapshots[sid].update(status="pending", size=0, compressed_size=0, _polls=0)
        return 201, {}, {"snapshot": _public(self.snapshots[sid])}

    def _get_snapshot(self, sid: str, *, query: Any, body: Any) -> Reply:
        s = self.snapshots.get(sid)
        if s is None:
            return _error(404, "Snapshot not found.")
        if s["status"] == "pending":
            s["_polls"] += 1
            if s["_polls"] > self.snapshot_polls:
                s.update(
                    status=self.snapshot_result, size=25 * 1024**3, compressed_size=6 * 1024**3
                )
        return 200, {}, {"snapshot": _public(s)}

    def _list_snapshots(self, *, query: Any, body: Any) -> Reply:
        rows = [_public(s) for s in self.snapshots.values()]
        per_page = min(int(query.get("per_page", ["100"])[0]), self.page_size)
        cursor = query.get("cursor", [""])[0]
        start = int(base64.b64decode(cursor).decode().split(":")[1]) if cursor else 0
        end = start + per_page

        def token(offset: int) -> str:
            return base64.b64encode(f"next:{offset}".encode()).decode()

        links = {
            "next": token(end) if end < len(rows) else "",
            "prev": token(max(0, start - per_page)) if start else "",
        }
        return 200, {}, {"snapshots": rows[start:end], "meta": {"total": len(rows), "links": links}}

    def _delete_snapshot(self, sid: str, *, query: Any, body: Any) -> Reply:
        if self.snapshots.pop(sid, None) is None:
            return _error(404, "Snapshot not found.")
        return 204, {}, None

    def _create_instance(self, *, query: Any, body: Any) -> Reply:
        if not isinstance(body, dict) or body.get("snapshot_id") not in self.snapshots:
            return _error(400, "Invalid snapshot_id.")
        iid = str(uuid.uuid4())
        self.instances[iid] = {
            "id": iid,
            "label": body.get("label", ""),
            "region": body.get("region"),
            "plan": body.get("plan"),
            "status": "pending",
            "main_ip": "0.0.0.0",
            "default_password": "not-for-logs",
            "_polls": 0,
        }
        return 202, {}, {"instance": _public(self.instances[iid])}

    def _get_instance(self, iid: str, *, query: Any, body: Any) -> Reply:
        inst = self.instances.get(iid)
        if inst is None:
            return _error(404, "Invalid instance-id.")
        inst["_polls"] = inst.get("_polls", 0) + 1
        if inst["status"] == "pending" and inst["_polls"] > 1:
            inst.update(status="active", main_ip="192.0.2.77")
        return 200, {}, {"instance": _public(inst)}


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}
