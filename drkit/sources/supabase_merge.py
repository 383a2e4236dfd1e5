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

Kept, unless the user edited it in place on the source: a function, procedure,
view, trigger or policy the target has whose definition digest (the
``definitions`` fact) differs from the target's is not left out but applied so
that it replaces the target's -- the dump's ``CREATE FUNCTION``/``PROCEDURE``/
``VIEW`` line (pg_dump writes it at the start of a line, first in the entry)
becomes ``CREATE OR REPLACE``, and a trigger's or policy's entry is preceded by
a drop of the target's (``pgcatalog.drop_sql``). A table whose columns differ,
or a materialized view whose query does, is kept as the target has it and
reported (``definition_changes``).

``Target`` is what a restore learns of the target before it applies anything
(the plan shows the same): its roles, objects, role settings and definitions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from drkit.pipeline.streams import CHUNK
from drkit.sources.pgcatalog import CREATING, column_diff, drop_sql, major_version

_HEADER = re.compile(r"^-- Name: (.*?); Type: ([A-Z ]+); Schema: (.*?); Owner: ")

# Supabase's own schemas: present on every fresh instance (merged, never created) and
# where its own default privileges are left as the target has them.
SUPABASE_SCHEMAS = (
    "auth",
    "storage",
    "realtime",
    "extensions",
    "graphql",
    "graphql_public",
    "pgbouncer",
    "supabase_functions",
    "supabase_migrations",
    "vault",
    "pgsodium",
    "pgsodium_masks",
    "net",
    "cron",
    "_realtime",
    "_analytics",
    "_supavisor",
)
# Without these a target is not a Supabase (GoTrue and the storage API own them).
REQUIRED_SCHEMAS = ("auth", "storage")

# Entries whose definition replaces the target's when the user edited it on the source:
# the CREATE line pg_dump starts the entry's statement with, made CREATE OR REPLACE;
# None: the target's is dropped first (DROP TRIGGER / DROP POLICY have no OR REPLACE).
REPLACEABLE: dict[str, str | None] = {
    "FUNCTION": "CREATE FUNCTION ",
    "PROCEDURE": "CREATE PROCEDURE ",
    "VIEW": "CREATE VIEW ",
    "TRIGGER": None,
    "POLICY": None,
}
# Kept as the target has them when they differ (reported): altering a table's columns,
# or re-creating a materialized view (its dependents), is not a restore's to do.
COLUMNS = ("TABLE", "FOREIGN TABLE")


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class MergeFilter:
    """Called with each line of a plain schema dump; returns the line, or "" for the
    lines of an entry creating an object ``existing`` already has (``TYPE\\tschema\\t
    tag`` strings). ``merged`` collects the entries left out.

    An entry whose key is in ``replace`` (a function, procedure, view, trigger or
    policy the target has with another definition than the source's) is applied
    instead, made to replace the target's: its first ``CREATE FUNCTION``/
    ``PROCEDURE``/``VIEW`` line becomes ``CREATE OR REPLACE``, or the target's
    trigger/policy is dropped just before the entry. ``replaced`` collects them."""

    def __init__(self, existing: set[str], replace: Iterable[str] = ()) -> None:
        self.existing = existing
        self.replace = set(replace)
        self.merged: list[str] = []
        self.replaced: list[str] = []
        self._skip = False
        self._create: str | None = None  # the entry's CREATE line still to rewrite

    def __call__(self, line: str) -> str:
        m = _HEADER.match(line)
        if m:
            tag, kind, schema = m.group(1), m.group(2), m.group(3)
            key = f"{kind}\t{schema}\t{tag}"
            self._skip = kind in CREATING and key in self.existing
            self._create = None
            if self._skip and key in self.replace and kind in REPLACEABLE:
                self._skip = False
                self.replaced.append(key)
                self._create = REPLACEABLE[kind]
                if self._create is None:
                    return drop_sql(key) + line
                return line
            if self._skip:
                self.merged.append(key)
            return line
        if self._skip:
            return ""
        if self._create is not None and line.startswith(self._create):
            self._create = None
            return "CREATE OR REPLACE " + line[len("CREATE ") :]
        return line


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
    # Digests per object (``definitions``), and each table's columns ([digest, text]).
    definitions: dict[str, str] = field(default_factory=dict)
    columns: dict[str, list[list[str]]] = field(default_factory=dict)
    version: str = ""  # its server_version

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


@dataclass
class Changes:
    """Objects of the source the target has with another definition: ``replace``, the
    keys whose source definition replaces the target's; ``kept``, (key, why) of those
    kept as the target has them (tables' columns, materialized views' queries).
    ``recorded`` False: the snapshot has no definitions, nothing was compared."""

    replace: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    recorded: bool = True
    # Not "" when the source's and the target's PostgreSQL major versions differ: views,
    # policies and triggers are printed by the server, and may print differently.
    versions: str = ""


def definition_changes(facts: dict[str, Any], target: Target) -> Changes:
    """Which objects of the source that ``target`` has (a merge would keep them) differ
    in definition from the source's, by the two sides' digests. An object the target
    lacks is not compared (the dump creates it; the objects check names a missing
    one), nor one without a digest on either side."""
    want = facts.get("definitions")
    if want is None:
        return Changes(recorded=False)
    out = Changes()
    mine, theirs = major_version(facts.get("server_version", "")), major_version(target.version)
    if mine and theirs and mine != theirs:
        out.versions = f"the source's PostgreSQL {mine}, the target's {theirs}"
    for key in sorted(want):
        kind = key.split("\t", 1)[0]
        have = target.definitions.get(key)
        if kind not in CREATING or key not in target.objects or have in (None, want[key]):
            continue
        if kind in REPLACEABLE:
            out.replace.append(key)
        elif kind in COLUMNS:
            diff = column_diff(want[key], target.columns.get(key, []))
            out.kept.append((key, f"columns differ from the source's: {diff}"))
        else:
            out.kept.append((key, "definition differs from the source's"))
    return out


# Kinds whose definition the server prints from its parse tree (a view's query, a
# policy's or trigger's expressions): between major versions the print may differ.
PRINTED_KINDS = ("VIEW", "MATERIALIZED VIEW", "POLICY", "TRIGGER")
PRINTED = (
    "a view's, policy's or trigger's definition may print differently between major "
    "versions: one replaced may not have been edited (the source's is applied all the same)"
)

UNRECORDED = (
    "definitions not recorded (a snapshot taken before drkit recorded them): objects the "
    "target has keep its definitions, not compared with the source's"
)


def merge_lines(facts: dict[str, Any], target: Target) -> list[str]:
    """Plan lines: which of the backup's objects are merged with the target's, which
    replace the target's definition (edited on the source), which differ and are kept,
    and which are created (the user's objects in Supabase's schemas named one by one)."""
    changes = definition_changes(facts, target)
    replace = set(changes.replace)
    objects = [o for o in facts.get("objects", []) if o.split("\t", 1)[0] in CREATING]
    merged = [o for o in objects if o in target.objects and o not in replace]
    created = [o for o in objects if o not in target.objects]
    lines = []
    kept_schemas = sorted(o.split("\t")[2] for o in merged if o.startswith("SCHEMA\t"))
    events = sorted(o.split("\t")[2] for o in merged if o.startswith("EVENT TRIGGER\t"))
    text = f"merge: {len(merged)} object(s) the target already has are kept as it has them"
    if kept_schemas:
        text += f" (schemas {', '.join(kept_schemas)}"
        text += f"; event trigger(s) {', '.join(events)})" if events else ")"
    lines.append(text)
    for o in changes.replace:
        lines.append(f"replaces the target's definition of {object_text(o)} (edited on the source)")
    for o, why in changes.kept:
        what = (
            "the data load may fail"
            if o.split("\t", 1)[0] in COLUMNS
            else "kept as the target has it"
        )
        lines.append(f"warn: {object_text(o)}: {why}; {what}")
    if changes.replace and changes.versions:
        lines.append(f"{changes.versions}: {PRINTED}")
    if not changes.recorded:
        lines.append(UNRECORDED)
    members = [o for o in created if o.startswith("PUBLICATION TABLE\t")]
    for o in members:
        _, schema, tag = o.split("\t", 2)
        pub, _, table = tag.partition(" ")
        lines.append(f"publication {pub}: add member {schema}.{table}")
    inside = [
        o
        for o in created
        if o.split("\t")[1] in SUPABASE_SCHEMAS and not o.startswith("PUBLICATION TABLE\t")
    ]
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
