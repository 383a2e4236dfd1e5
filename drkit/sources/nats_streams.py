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
# What a snapshot guarantees (nats-server records the state first, then streams the
# blocks: messages stored meanwhile may be in it, none are removed from it).
GUARANTEE = (
    "each stream's state as the snapshot started: a restored stream holds at least these "
    "messages and sequences; messages written while the snapshot ran may be in it too"
)


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


def artifact_name(stream: str, suffix: str = "snapshot") -> str:
    """``<stream>.snapshot`` (``.export``); names outside [A-Za-z0-9_-] get a digest-based
    name."""
    if _SAFE_NAME.match(stream):
        return f"{stream}.{suffix}"
    return f"stream-{hashlib.sha256(stream.encode()).hexdigest()[:16]}.{suffix}"


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
        # Limits that remove old messages (KV history too) may move first_seq on.
        "discards_old": discards_old(cfg),
    }
    if snapshot_bytes is not None:
        out["snapshot_bytes"] = snapshot_bytes
    if entry.get("artifact"):
        out["artifact"] = entry["artifact"]
    if entry.get("how") == "export":
        out.update(how="export", exported=int(entry.get("exported", 0)))
    return out


def export_compare(expected: dict[str, Any], state: dict[str, Any]) -> tuple[list[str], str]:
    """A republished export: sequence numbers are new, so only the count is compared."""
    want = int(expected.get("exported", 0))
    got = int(state.get("messages") or 0)
    if got < want:
        return [f"messages {got}, expected at least the {want} exported"], ""
    return [], f"{got - want} message(s) more than exported" if got > want else ""


def discards_old(cfg: dict[str, Any]) -> bool:
    """Whether a stream's limits remove messages on their own (max_msgs, max_bytes,
    max_age, per-subject history) rather than refusing new ones."""
    if cfg.get("discard", "old") != "old":
        return False
    return any(
        int(cfg.get(k) or 0) > 0
        for k in ("max_msgs", "max_bytes", "max_age", "max_msgs_per_subject")
    )


def state_compare(expected: dict[str, Any], state: dict[str, Any]) -> tuple[list[str], str]:
    """(what is wrong, what is extra) of a live stream ``state`` against the facts.

    The facts are the state as the snapshot started (GUARANTEE): the stream must hold
    at least that many messages up to at least that last sequence, from the same first
    sequence (a later one only when the stream's own limits discard old messages);
    messages beyond are reported as extra, not as a failure. Consumers are not
    compared: ephemeral ones come and go, and a snapshot's durable consumers are
    restored with it."""
    exp = {k: int(expected.get(k) or 0) for k in ("messages", "first_seq", "last_seq")}
    got = {k: int(state.get(k) or 0) for k in ("messages", "first_seq", "last_seq")}
    wrong = [
        f"{key} {got[key]}, expected at least {exp[key]}"
        for key in ("messages", "last_seq")
        if got[key] < exp[key]
    ]
    moved = got["first_seq"] != exp["first_seq"]
    if moved and (got["first_seq"] < exp["first_seq"] or not expected.get("discards_old")):
        wrong.append(f"first_seq {got['first_seq']}, expected {exp['first_seq']}")
    extra = []
    if not wrong and got["messages"] > exp["messages"]:
        extra.append(f"{got['messages'] - exp['messages']} message(s) more than recorded")
    if not wrong and got["last_seq"] > exp["last_seq"]:
        extra.append(f"last_seq {got['last_seq']} beyond the recorded {exp['last_seq']}")
    if not wrong and moved:
        extra.append(f"first_seq {got['first_seq']} (the stream's limits discarded older ones)")
    return wrong, "; ".join(extra)


def memory_warnings(memory: list[dict[str, Any]], url: str) -> list[str]:
    """The backup's warnings about memory streams (JetStream cannot snapshot them)."""
    return [
        f"memory stream {m['name']} at {url} ({m['messages']} messages) is NOT in the backup: "
        'JetStream cannot snapshot memory storage; memory_streams = "export" copies its messages'
        for m in memory
        if not m.get("exported")
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
    if index.get("format") != "drkit-nats-index" or index.get("version") not in (1, 2):
        raise RestoreError(f"{label}: {INDEX} has an unknown format")
    check_index(index, label)
    return index


def check_index(index: dict[str, Any], label: str) -> None:
    """Every entry names its stream, artifact, config (same name) and state; raises
    RestoreError naming the first that does not (nothing was restored yet)."""
    streams = index.get("streams")
    if not isinstance(streams, list):
        raise RestoreError(f"{label}: {INDEX} lists no streams")
    seen: set[str] = set()
    for n, e in enumerate(streams):
        name = e.get("name") if isinstance(e, dict) else None
        what = f"{label}: {INDEX} entry {n + 1}" + (f" ({name})" if name else "")
        if not isinstance(name, str) or not name or name in seen:
            raise RestoreError(f"{what}: no name, or a name listed twice")
        seen.add(name)
        cfg, state = e.get("config"), e.get("state")
        if not isinstance(cfg, dict) or cfg.get("name") != name:
            raise RestoreError(f"{what}: its config does not name the stream")
        if not isinstance(state, dict) or not all(
            isinstance(state.get(k, 0), int) for k in ("messages", "first_seq", "last_seq")
        ):
            raise RestoreError(f"{what}: its state is not a stream state")
        if not isinstance(e.get("artifact"), str) or e.get("how", "snapshot") not in HOW:
            raise RestoreError(f"{what}: no artifact, or an unknown way to restore it")


# How an index entry is restored: the server's snapshot, or an export republished.
HOW = ("snapshot", "export")


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


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both filters (``*``: one token, ``>``: one or more
    at the end), as JetStream decides that two streams' subjects overlap."""
    ta, tb = a.split("."), b.split(".")
    for i, x in enumerate(ta):
        if i >= len(tb):
            return False
        y = tb[i]
        if x == ">" or y == ">":
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(ta) == len(tb)


def overlaps(restoring: list[dict[str, Any]], target: list[dict[str, Any]]) -> list[str]:
    """Streams on the target (``info`` entries) that take subjects of a stream being
    restored under another name (facts): the server refuses that stream at load time.
    One line per pair; a target stream of the same name is replaced, so it is none."""
    names = {s["name"] for s in restoring}
    found = []
    for t in target:
        cfg = t.get("config") or {}
        if cfg.get("name") in names:
            continue
        for s in restoring:
            pairs = [
                (x, y)
                for x in cfg.get("subjects") or []
                for y in s.get("subjects") or []
                if subjects_overlap(x, y)
            ]
            if pairs:
                took = ", ".join(f"{x} (needs {y})" if x != y else x for x, y in pairs)
                found.append(
                    f"stream {cfg.get('name')} on the target takes subjects {took} of "
                    f"stream {s['name']}"
                )
    return found
