"""Loading a Supabase schema dump into a fresh Supabase: merge, never re-create.

A fresh self-hosted Supabase already has its reserved roles, its schemas
(``auth``, ``storage``, ``realtime``, ``extensions``, ...) with their own
tables and functions, the ``supabase_realtime`` publication and its event
triggers. The backup's schema dump covers those schemas too, because the
user's own objects live there as well (a trigger on ``auth.users``, policies
on ``storage.objects``, grants). So the dump is read entry by entry (pg_dump's
``-- Name: ...; Type: ...; Schema: ...`` headers) and an entry that creates an
object the target already has is left out: the target's object is kept
(merged); everything else is loaded. Publications thus get their member
tables added, not created; existing event triggers and extensions are kept.

``Target`` is what a restore learns of the target before it applies anything
(the plan shows the same): its roles, objects and role settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from drkit.pipeline.streams import CHUNK
from drkit.sources.pgcatalog import CREATING

_HEADER = re.compile(r"^-- Name: (.*?); Type: ([A-Z ]+); Schema: (.*?); Owner: ")

# Supabase's own schemas: present on every fresh instance (merged, never created) and
# where its own default privileges are left as the target has them.
SUPABASE_SCHEMAS = (
    "auth", "storage", "realtime", "extensions", "graphql", "graphql_public", "pgbouncer",
    "supabase_functions", "supabase_migrations", "vault", "pgsodium", "pgsodium_masks",
    "net", "cron", "_realtime", "_analytics", "_supavisor",
)  # fmt: skip
# Without these a target is not a Supabase (GoTrue and the storage API own them).
REQUIRED_SCHEMAS = ("auth", "storage")


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class MergeFilter:
    """Called with each line of a plain schema dump; returns the line, or "" for the
    lines of an entry creating an object ``existing`` already has (``TYPE\\tschema\\t
    tag`` strings). ``merged`` collects the entries left out."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.merged: list[str] = []
        self._skip = False

    def __call__(self, line: str) -> str:
        m = _HEADER.match(line)
        if m:
            tag, kind, schema = m.group(1), m.group(2), m.group(3)
            key = f"{kind}\t{schema}\t{tag}"
            self._skip = kind in CREATING and key in self.existing
            if self._skip:
                self.merged.append(key)
            return line
        return "" if self._skip else line


class LineFilter:
    """A reader that applies ``fn`` to each text line of ``raw`` (streaming, bounded)."""

    def __init__(self, raw: BinaryIO, fn: Callable[[str], str]) -> None:
        self._raw = raw
        self._fn = fn
        self._pending = b""
        self._out = b""
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while chunk := self.read(CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        while len(self._out) < n and not self._eof:
            data = self._raw.read(CHUNK)
            if not data:
                self._eof = True
                lines, self._pending = [self._pending] if self._pending else [], b""
            else:
                *lines, self._pending = (self._pending + data).split(b"\n")
                lines = [ln + b"\n" for ln in lines]
            for ln in lines:
                text = ln.decode("utf-8", "surrogateescape")
                self._out += self._fn(text).encode("utf-8", "surrogateescape")
        out, self._out = self._out[:n], self._out[n:]
        return out

    def readable(self) -> bool:
        return True


@dataclass
class Target:
    """What a restore learns of the target database before applying anything."""

    exists: bool
    roles: set[str] = field(default_factory=set)
    objects: set[str] = field(default_factory=set)
    role_settings: dict[str, list[str]] = field(default_factory=dict)

    def schemas(self) -> set[str]:
        return {o.split("\t")[2] for o in self.objects if o.startswith("SCHEMA\t")}


def missing_base(facts: dict[str, Any], target: Target) -> list[str]:
    """What a Supabase target must have for this backup and lacks: the reserved roles
    the source had, Supabase's schemas ``auth``/``storage``, the publication."""
    from drkit.sources.pgroles import RESERVED_ROLES

    source_roles = set(facts.get("all_roles", []))
    roles = sorted((source_roles & RESERVED_ROLES) - target.roles)
    source_schemas = {
        o.split("\t")[2] for o in facts.get("objects", []) if o.startswith("SCHEMA\t")
    }
    schemas = sorted(
        s for s in REQUIRED_SCHEMAS if s in source_schemas and s not in target.schemas()
    )
    missing = []
    if roles:
        missing.append(f"reserved role(s) {', '.join(roles)}")
    if schemas:
        missing.append(f"schema(s) {', '.join(schemas)}")
    pub = "PUBLICATION\t-\tsupabase_realtime"
    if pub in facts.get("objects", []) and pub not in target.objects:
        missing.append("publication supabase_realtime")
    return missing


def object_text(entry: str) -> str:
    """``TYPE\\tschema\\ttag`` as a plan line names it."""
    kind, schema, tag = entry.split("\t", 2)
    where = "" if schema == "-" else f"{schema}."
    return f"{kind.lower()} {where}{tag}"


def merge_lines(facts: dict[str, Any], target: Target) -> list[str]:
    """Plan lines: which of the backup's objects are merged with the target's and which
    are created (the user's objects in Supabase's schemas named one by one)."""
    objects = [o for o in facts.get("objects", []) if o.split("\t", 1)[0] in CREATING]
    merged = [o for o in objects if o in target.objects]
    created = [o for o in objects if o not in target.objects]
    lines = []
    kept_schemas = sorted(o.split("\t")[2] for o in merged if o.startswith("SCHEMA\t"))
    events = sorted(o.split("\t")[2] for o in merged if o.startswith("EVENT TRIGGER\t"))
    text = f"merge: {len(merged)} object(s) the target already has are kept as it has them"
    if kept_schemas:
        text += f" (schemas {', '.join(kept_schemas)}"
        text += f"; event trigger(s) {', '.join(events)})" if events else ")"
    lines.append(text)
    members = [o for o in created if o.startswith("PUBLICATION TABLE\t")]
    for o in members:
        _, schema, tag = o.split("\t", 2)
        pub, _, table = tag.partition(" ")
        lines.append(f"publication {pub}: add member {schema}.{table}")
    inside = [
        o for o in created
        if o.split("\t")[1] in SUPABASE_SCHEMAS and not o.startswith("PUBLICATION TABLE\t")
    ]  # fmt: skip
    text = f"create: {len(created)} object(s)"
    if inside:
        text += " - the user's own in Supabase's schemas: " + ", ".join(
            object_text(o) for o in inside
        )
    lines.append(text)
    return lines


def settings_differ(facts: dict[str, Any], target: Target, roles: set[str]) -> list[str]:
    """For each of ``roles``: its settings (ALTER ROLE ... SET) on the source and on the
    target when they differ, as text."""
    source = facts.get("role_settings", {})
    out = []
    for role in sorted(roles):
        want, have = sorted(source.get(role) or []), sorted(target.role_settings.get(role) or [])
        if want != have:
            out.append(
                f"{role}: {', '.join(want) or 'none'} on the source, "
                f"{', '.join(have) or 'none'} on the target"
            )
    return out
