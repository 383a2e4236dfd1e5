"""JetStream stream facts and names for the ``nats`` source: pure functions, no I/O
beyond the stream handed in (artifact names, restore order, state comparison,
the index artifact, a store directory's streams)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, BinaryIO

from drkit.errors import RestoreError, UsageError

INDEX = "streams.json"
_MAX_INDEX = 64 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_COMPARED = ("messages", "first_seq", "last_seq")


def auth_fields(value: str) -> dict[str, str]:
    """CONNECT fields for a resolved credential: ``USER:PASSWORD`` (as in a NATS URL's
    ``user:pass@``) or else a token. Raises UsageError for .creds / nkey material."""
    if "-----BEGIN" in value:
        raise UsageError(
            "NATS .creds (JWT + nkey) credentials are not supported by the drkit helper yet; "
            "use a token or USER:PASSWORD"
        )
    user, sep, password = value.partition(":")
    return {"user": user, "pass": password} if sep else {"auth_token": value}


def stream_kind(name: str) -> tuple[str, str | None]:
    """("kv" | "object_store" | "stream", bucket name or None) of a stream name."""
    if name.startswith("KV_"):
        return "kv", name[3:]
    if name.startswith("OBJ_"):
        return "object_store", name[4:]
    return "stream", None


def artifact_name(stream: str) -> str:
    """``<stream>.snapshot``; names outside [A-Za-z0-9_-] get a digest-based name."""
    if _SAFE_NAME.match(stream):
        return f"{stream}.snapshot"
    return f"stream-{hashlib.sha256(stream.encode()).hexdigest()[:16]}.snapshot"


def origins(entry: dict[str, Any]) -> list[str]:
    """Streams that ``entry`` mirrors or sources, from its config (index) or facts."""
    if "config" not in entry:
        return list(entry.get("origins", []))
    cfg = entry["config"] or {}
    names = [s.get("name") for s in (cfg.get("sources") or [])]
    if cfg.get("mirror"):
        names.append(cfg["mirror"].get("name"))
    return [n for n in names if n]


def restore_order(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streams ordered so a mirror or sourcing stream comes after the streams it reads
    (when those are in the backup too); otherwise by name. Cycles keep name order."""
    by_name = {e["name"]: e for e in entries}
    deps = {n: {o for o in origins(e) if o in by_name and o != n} for n, e in by_name.items()}
    ordered: list[dict[str, Any]] = []
    done: set[str] = set()
    while len(done) < len(by_name):
        ready = sorted(n for n in by_name if n not in done and deps[n] <= done)
        for name in ready or sorted(n for n in by_name if n not in done):  # else a cycle
            ordered.append(by_name[name])
            done.add(name)
    return ordered


def stream_facts(entry: dict[str, Any], snapshot_bytes: int | None = None) -> dict[str, Any]:
    """What a drill can check about one stream, from its config and state."""
    cfg, state = entry.get("config") or {}, entry.get("state") or {}
    kind, bucket = stream_kind(entry["name"])
    out = {
        "name": entry["name"],
        "type": kind,
        "kv": kind == "kv",
        "object_store": kind == "object_store",
        "bucket": bucket,
        "storage": cfg.get("storage"),
        "subjects": cfg.get("subjects") or [],
        "origins": origins(entry),
        "messages": state.get("messages", 0),
        "bytes": state.get("bytes", 0),
        "first_seq": state.get("first_seq", 0),
        "last_seq": state.get("last_seq", 0),
        "num_subjects": state.get("num_subjects", 0),
        "num_deleted": state.get("num_deleted", 0),
        "consumers": state.get("consumer_count", 0),
    }
    if snapshot_bytes is not None:
        out["snapshot_bytes"] = snapshot_bytes
    return out


def state_diff(expected: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """How a live stream ``state`` differs from a stream's facts (empty: it matches).

    Consumers are not compared: ephemeral ones (watchers, ordered consumers) come
    and go, and a snapshot's durable consumers are restored with it."""
    return [
        f"{key} {state.get(key, 0)}, expected {expected.get(key, 0)}"
        for key in _COMPARED
        if state.get(key, 0) != expected.get(key, 0)
    ]


def summary(s: dict[str, Any]) -> str:
    return (
        f"{s['messages']} messages, seq {s['first_seq']}-{s['last_seq']}, "
        f"{s['consumers']} consumer(s)"
    )


def read_index(stream: BinaryIO, label: str) -> dict[str, Any]:
    """The index artifact's JSON (read to its end: one read may return part of it)."""
    raw = b""
    while len(raw) <= _MAX_INDEX and (chunk := stream.read(1 << 20)):
        raw += chunk
    if len(raw) > _MAX_INDEX:
        raise RestoreError(f"{label}: {INDEX} is larger than 64 MiB; refusing")
    try:
        index: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise RestoreError(f"{label}: {INDEX} is not JSON") from None
    if index.get("format") != "drkit-nats-index" or index.get("version") != 1:
        raise RestoreError(f"{label}: {INDEX} has an unknown format")
    return index


_STORE_PATH = re.compile(r"/jetstream/([^/]+)/streams/([^/]+)/")


def store_streams(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streams found in a store dir's tar listing: account, name, files and bytes."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        m = _STORE_PATH.search(e["path"])
        if not m:
            continue
        item = found.setdefault(
            (m.group(1), m.group(2)),
            {"account": m.group(1), "name": m.group(2), "files": 0, "bytes": 0},
        )
        if e.get("type") == "file":
            item["files"] += 1
            item["bytes"] += e.get("size", 0)
    for item in found.values():
        kind, bucket = stream_kind(item["name"])
        item.update(type=kind, bucket=bucket)
    return sorted(found.values(), key=lambda i: (i["account"], i["name"]))
