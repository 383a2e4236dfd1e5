"""What a database holds, named the way pg_dump names it: objects, privileges, matviews.

One set of catalog queries serves three moments of a Supabase restore:

- at backup, inside the exported snapshot, they become facts (``objects``,
  ``acls``, ``column_acls``, ``database_acl``, ``default_acls``, ``matviews``,
  ``role_settings``, ``definitions``);
- before the load, on the target, ``objects`` says which of the dump's entries
  already exist there (merged: left as the target has them), and
  ``definitions`` which of those the user edited in place on the source (their
  digests differ: the source's definition replaces the target's);
- after the load, the target's privileges (``acls``, ``column_acls``,
  ``database_acl``, ``default_acls``) are compared with the facts: any privilege
  the source did not have fails the restore; so are its ``definitions``.

``definitions`` holds digests, not text (SHA-256 in SQL): a routine's, view's,
trigger's and policy's definition as PostgreSQL prints it, a table's column
names and types in order.

Objects are named as pg_dump's entry headers do (``Type``, ``Schema``, tag:
``users on_auth_user_created`` for a trigger, ``foldername("text")`` for a
function), so the restore can match a dump entry against the target by name.
The queries run with ``search_path = ''`` and ``quote_all_identifiers``, as
pg_dump does, so both sides spell every name and type alike.

Privileges are stored as the effective ``aclitem`` texts (the owner's default
made explicit); comparing them ignores the grantor. Column privileges are only
those granted on the column itself (``attacl``; a column has no default), keyed
``column "schema"."table"<tab>"column"``; the database's are those of the
database the queries run in (``current_database()``).

Comparing and resetting privileges is drkit.sources.pgacl. This module stays just
over 400 lines: its SQL is the one set of catalog queries the three moments
share, kept beside the parsing of what they return.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from drkit.sources.pgsql import COLUMN_KEY, COLUMNS, SYSTEM, json_literal, quote_literal

# pg_dump's entry types that create an object, and so can collide with the target's.
CREATING = frozenset(
    (
        "SCHEMA",
        "EXTENSION",
        "TYPE",
        "DOMAIN",
        "FUNCTION",
        "PROCEDURE",
        "AGGREGATE",
        "TABLE",
        "VIEW",
        "MATERIALIZED VIEW",
        "SEQUENCE",
        "FOREIGN TABLE",
        "INDEX",
        "CONSTRAINT",
        "FK CONSTRAINT",
        "CHECK CONSTRAINT",
        "TRIGGER",
        "POLICY",
        "RULE",
        "PUBLICATION",
        "PUBLICATION TABLE",
        "EVENT TRIGGER",
    )
)

SESSION_SETTINGS = "SET LOCAL search_path = '';\nSET LOCAL quote_all_identifiers = on;\n"

# A routine's tag as pg_dump's entry header writes it: ``foldername("text")``.
_FUNCTION_TAG = """p.proname || '(' || coalesce((SELECT string_agg(
      pg_catalog.format_type(a.t, NULL), ', ' ORDER BY a.i)
      FROM unnest(p.proargtypes) WITH ORDINALITY a(t, i)), '') || ')'"""

# Every object pg_dump would write an entry for (and a few it leaves to extensions),
# as "TYPE<tab>schema<tab>tag"; schema "-" for database-wide objects.
_OBJECTS = f"""
SELECT 'SCHEMA' AS t, '-' AS s, n.nspname AS tag FROM pg_namespace n WHERE {SYSTEM}
UNION ALL SELECT 'EXTENSION', '-', extname FROM pg_extension
UNION ALL SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
    WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'i' THEN 'INDEX'
    WHEN 'I' THEN 'INDEX' ELSE 'TABLE' END, n.nspname, c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'i', 'I') AND {SYSTEM}
UNION ALL SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE'
    ELSE 'FUNCTION' END, n.nspname, {_FUNCTION_TAG}
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {SYSTEM}
UNION ALL SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname, t.typname
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE {SYSTEM} AND t.typtype IN ('b', 'd', 'e', 'r', 'm', 'c')
    AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)
    AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
UNION ALL SELECT CASE o.contype WHEN 'f' THEN 'FK CONSTRAINT' WHEN 'c' THEN 'CHECK CONSTRAINT'
    ELSE 'CONSTRAINT' END, n.nspname, c.relname || ' ' || o.conname
  FROM pg_constraint o JOIN pg_class c ON c.oid = o.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {SYSTEM}
UNION ALL SELECT 'TRIGGER', n.nspname, c.relname || ' ' || g.tgname
  FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT g.tgisinternal AND {SYSTEM}
UNION ALL SELECT 'POLICY', n.nspname, c.relname || ' ' || p.polname
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {SYSTEM}
UNION ALL SELECT 'RULE', n.nspname, c.relname || ' ' || r.rulename
  FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.rulename <> '_RETURN' AND {SYSTEM}
UNION ALL SELECT 'PUBLICATION', '-', pubname FROM pg_publication
UNION ALL SELECT 'PUBLICATION TABLE', n.nspname, p.pubname || ' ' || c.relname
  FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
  JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
UNION ALL SELECT 'EVENT TRIGGER', '-', evtname FROM pg_event_trigger
"""

# Effective privileges of schemas, relations and routines: "kind identity" -> aclitems.
_ACLS = f"""
SELECT 'schema ' || quote_ident(n.nspname) AS k,
       coalesce(n.nspacl, acldefault('n', n.nspowner))::text[] AS acl
  FROM pg_namespace n WHERE {SYSTEM}
UNION ALL SELECT CASE c.relkind WHEN 'S' THEN 'sequence ' ELSE 'table ' END
    || quote_ident(n.nspname) || '.' || quote_ident(c.relname),
    coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char",
                                  c.relowner))::text[]
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {SYSTEM}
UNION ALL SELECT 'function ' || p.oid::regprocedure::text,
    coalesce(p.proacl, acldefault('f', p.proowner))::text[]
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {SYSTEM}
"""

# Column privileges granted on the column itself: "column table<tab>column" -> aclitems.
_COLUMN_ACLS = f"""
SELECT {COLUMN_KEY} AS k, a.attacl::text[] AS acl
  FROM {COLUMNS} AND cardinality(a.attacl) > 0
"""

# The effective privileges of the database the query runs in (CONNECT, CREATE, TEMPORARY).
_DATABASE_ACL = """
SELECT coalesce(d.datacl, acldefault('d', d.datdba))::text[] AS acl
  FROM pg_database d WHERE d.datname = current_database()
"""

# Default privileges: "role schema-or-- objtype" -> aclitems.
_DEFAULT_ACLS = """
SELECT quote_ident(pg_get_userbyid(d.defaclrole)) || E'\t'
    || coalesce(quote_ident(n.nspname), '-') || E'\t' || d.defaclobjtype::text AS k,
    d.defaclacl::text[] AS acl
  FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
"""

# Materialized views, whether populated, and the views/matviews each one reads.
_MATVIEWS = f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name, c.relkind AS kind,
    c.relispopulated AS populated, coalesce((SELECT json_agg(DISTINCT
      quote_ident(n2.nspname) || '.' || quote_ident(c2.relname))
      FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass
        AND d.objid = r.oid JOIN pg_class c2 ON c2.oid = d.refobjid
        JOIN pg_namespace n2 ON n2.oid = c2.relnamespace
      WHERE r.ev_class = c.oid AND c2.oid <> c.oid AND c2.relkind IN ('v', 'm')),
      '[]') AS reads
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('v', 'm') AND {SYSTEM}
"""

# Role settings that apply in every database (ALTER ROLE ... SET), per role.
_ROLE_SETTINGS = """
SELECT r.rolname AS role, s.setconfig AS settings
  FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = 0
"""


# What the user can edit in place of an object a merge may keep, as a digest per
# ``objects`` key: a routine's pg_get_functiondef (aggregates have none), a view's or
# materialized view's pg_get_viewdef and options, a trigger's pg_get_triggerdef and
# whether it is enabled, a policy's command, kind, roles and expressions. A table's
# (and foreign table's) value is its columns in order, each an 8-hex digest of
# ``"name" type`` (space-separated): equal lists are equal columns, and a target's
# columns can be told apart by digest (``column_diff``). Extension members are left
# out: never in a dump, so never merged from one.
_COLUMN_TEXT = "quote_ident(a.attname) || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)"
_OWN_COLUMNS = "a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"


def _digest(text: str, chars: int = 32) -> str:
    """SQL: the first ``chars`` hex digits of the SHA-256 of ``text`` (an expression) in
    UTF-8 (sha256, not md5: md5() fails on a server in FIPS mode)."""
    return f"left(encode(sha256(convert_to({text}, 'UTF8')), 'hex'), {chars})"


def _not_member(catalog: str, oid: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
        f"AND e.objid = {oid} AND e.deptype = 'e')"
    )


_VIEW_TEXT = "pg_get_viewdef(c.oid) || E'\\n' || coalesce(c.reloptions::text, '')"
_TRIGGER_TEXT = "pg_get_triggerdef(g.oid) || E'\\n' || g.tgenabled::text"
_POLICY_TEXT = """concat_ws(E'\\n', p.polcmd::text, p.polpermissive::text,
      (SELECT string_agg(r.name, ',' ORDER BY r.name) FROM (SELECT CASE u.id WHEN 0
         THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(u.id)) END AS name
         FROM unnest(p.polroles) u(id)) r),
      coalesce(pg_get_expr(p.polqual, p.polrelid), '-'),
      coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '-'))"""

_DEFINITIONS = f"""
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END AS t, n.nspname AS s,
    {_FUNCTION_TAG} AS tag, {_digest("pg_get_functiondef(p.oid)")} AS d
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE p.prokind <> 'a' AND {SYSTEM} AND {_not_member("pg_proc", "p.oid")}
UNION ALL SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' ELSE 'MATERIALIZED VIEW' END,
    n.nspname, c.relname,
    {_digest(_VIEW_TEXT)}
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('v', 'm') AND {SYSTEM} AND {_not_member("pg_class", "c.oid")}
UNION ALL SELECT CASE c.relkind WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
    n.nspname, c.relname, coalesce((SELECT string_agg({_digest(_COLUMN_TEXT, 8)}, ' '
      ORDER BY a.attnum) FROM pg_attribute a WHERE {_OWN_COLUMNS}), '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'f') AND {SYSTEM} AND {_not_member("pg_class", "c.oid")}
UNION ALL SELECT 'TRIGGER', n.nspname, c.relname || ' ' || g.tgname,
    {_digest(_TRIGGER_TEXT)}
  FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT g.tgisinternal AND {SYSTEM}
UNION ALL SELECT 'POLICY', n.nspname, c.relname || ' ' || p.polname,
    {_digest(_POLICY_TEXT)}
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {SYSTEM}
"""

# Read from a target only (never a fact): each table's columns in order, as
# [digest, "name" type] pairs, to say how a table's columns differ from the source's.
_TABLE_COLUMNS = f"""
SELECT CASE c.relkind WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END || E'\\t' || n.nspname
    || E'\\t' || c.relname AS k, jsonb_agg(jsonb_build_array({_digest(_COLUMN_TEXT, 8)},
      {_COLUMN_TEXT}) ORDER BY a.attnum) AS cols
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON {_OWN_COLUMNS}
  WHERE c.relkind IN ('r', 'p', 'f') AND {SYSTEM} GROUP BY c.relkind, n.nspname, c.relname
"""

# As the backup's facts have it (``server_version``, from the postgres source).
_SERVER_VERSION = "SELECT current_setting('server_version') AS v"

_OBJECTS_AGG = "jsonb_agg(q.t || E'\\t' || q.s || E'\\t' || q.tag ORDER BY q.t, q.s, q.tag)"
_DEFINITIONS_AGG = "jsonb_object_agg(q.t || E'\\t' || q.s || E'\\t' || q.tag, q.d)"


def fact_sql(name: str, select: str, value: str) -> str:
    """SQL printing ``{"fact": name, "value": value}`` over the rows of ``select`` (an
    aggregate of ``q``; none: an empty list or object)."""
    empty = "{}" if "object_agg" in value else "[]"
    return (
        f"SELECT json_build_object('fact', {quote_literal(name)}, 'value', "
        f"coalesce({value}, '{empty}'::jsonb)) FROM ({select}) q;\n"
    )


def facts_sql() -> str:
    """SQL printing one ``{"fact": name, "value": ...}`` JSON line per fact; runs last in
    the backup's snapshot transaction (its SET LOCALs end with it)."""
    return (
        SESSION_SETTINGS
        + fact_sql("objects", _OBJECTS, _OBJECTS_AGG)
        + fact_sql("acls", _ACLS, "jsonb_object_agg(q.k, q.acl)")
        + fact_sql("column_acls", _COLUMN_ACLS, "jsonb_object_agg(q.k, q.acl)")
        + fact_sql("database_acl", _DATABASE_ACL, "jsonb_agg(q.acl) -> 0")
        + fact_sql("default_acls", _DEFAULT_ACLS, "jsonb_object_agg(q.k, q.acl)")
        + fact_sql("matviews", _MATVIEWS, "jsonb_agg(q)")
        + fact_sql("role_settings", _ROLE_SETTINGS, "jsonb_object_agg(q.role, q.settings)")
        + fact_sql("definitions", _DEFINITIONS, _DEFINITIONS_AGG)
    )


def target_sql(*names: str) -> str:
    """The same facts read from a target (its own transaction), only ``names``."""
    parts = {
        "objects": (_OBJECTS, _OBJECTS_AGG),
        "acls": (_ACLS, "jsonb_object_agg(q.k, q.acl)"),
        "column_acls": (_COLUMN_ACLS, "jsonb_object_agg(q.k, q.acl)"),
        "database_acl": (_DATABASE_ACL, "jsonb_agg(q.acl) -> 0"),
        "default_acls": (_DEFAULT_ACLS, "jsonb_object_agg(q.k, q.acl)"),
        "role_settings": (_ROLE_SETTINGS, "jsonb_object_agg(q.role, q.settings)"),
        "definitions": (_DEFINITIONS, _DEFINITIONS_AGG),
        "table_columns": (_TABLE_COLUMNS, "jsonb_object_agg(q.k, q.cols)"),
        "server_version": (_SERVER_VERSION, "jsonb_agg(q.v) -> 0"),
    }
    body = "".join(fact_sql(n, *parts[n]) for n in names)
    return "BEGIN READ ONLY;\n" + SESSION_SETTINGS + body + "COMMIT;\n"


def parse_facts(out: str) -> dict[str, Any]:
    """The ``{"fact": ..., "value": ...}`` lines of ``out`` as a dict."""
    found: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith('{"fact"'):
            row = json.loads(line)
            found[row["fact"]] = row["value"]
    return found


# ---- materialized views --------------------------------------------------------


def refresh_order(matviews: list[dict[str, Any]]) -> list[str]:
    """The populated materialized views, each after every matview it reads (through
    views too): the order to refresh them in."""
    reads = {m["name"]: m.get("reads", []) for m in matviews}
    kind = {m["name"]: m["kind"] for m in matviews}
    populated = [m["name"] for m in matviews if m["kind"] == "m" and m["populated"]]
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: frozenset[str]) -> None:
        if name in seen or name in path:
            return
        for dep in reads.get(name, []):
            visit(dep, path | {name})
        seen.add(name)
        if kind.get(name) == "m" and name in populated:
            order.append(name)

    for name in sorted(populated):
        visit(name, frozenset())
    return order


def refresh_sql(names: Iterable[str], known: Iterable[str]) -> str:
    """REFRESH statements for ``names`` (identities from the facts), each checked to be
    a materialized view name the facts' object list has (``known``)."""
    allowed = set(known)
    out = []
    for name in names:
        if name not in allowed:
            raise ValueError(f"materialized view {name!r} is not among the backup's objects")
        out.append(f"REFRESH MATERIALIZED VIEW {name};")
    return "\n".join(out) + "\n" if out else ""


def matview_identity(entry: str) -> str | None:
    """The quoted identity of an ``objects`` entry that is a materialized view."""
    t, schema, tag = entry.split("\t", 2)
    if t != "MATERIALIZED VIEW":
        return None
    return '"' + schema.replace('"', '""') + '"."' + tag.replace('"', '""') + '"'


# ---- definitions -----------------------------------------------------------------

# Drops the trigger or policy an ``objects`` key names on the target, before the dump's
# own CREATE of it (replacing the target's definition with the source's, in the load's
# transaction). The key is matched by the server against its own catalog, spelled as the
# ``objects`` query spells it; what is executed names what the catalog resolved. None
# found: nothing dropped (DROP ... IF EXISTS); more than one (a tag that splits two
# ways, like ``a b c``): the load stops rather than drop the wrong one.
_DROP = r"""
DO $drkit$
DECLARE
  k text := %s::jsonb #>> '{}';
  qs text[];
BEGIN
  qs := ARRAY(
    SELECT format('DROP TRIGGER %%I ON %%I.%%I', g.tgname, n.nspname, c.relname)
      FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE NOT g.tgisinternal
        AND 'TRIGGER' || E'\t' || n.nspname || E'\t' || c.relname || ' ' || g.tgname = k
    UNION ALL
    SELECT format('DROP POLICY %%I ON %%I.%%I', p.polname, n.nspname, c.relname)
      FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE 'POLICY' || E'\t' || n.nspname || E'\t' || c.relname || ' ' || p.polname = k);
  IF cardinality(qs) > 1 THEN
    RAISE EXCEPTION 'drkit: %% names %% objects on the target; not replacing any',
      replace(k, E'\t', ' '), cardinality(qs);
  END IF;
  FOR i IN 1 .. cardinality(qs) LOOP
    EXECUTE qs[i];
  END LOOP;
END $drkit$;
"""


def drop_sql(key: str) -> str:
    """SQL dropping the trigger or policy ``key`` (an ``objects`` entry) names on the
    target, if it has it."""
    if key.split("\t", 1)[0] not in ("TRIGGER", "POLICY"):
        raise ValueError(f"only a trigger or a policy is dropped to be replaced: {key!r}")
    return _DROP % json_literal(key)


def column_diff(want: str, have: list[list[str]]) -> str:
    """How a table's columns on the target (``have``: [digest, ``"name" type``] pairs
    in order) differ from the source's (``want``: its digests in order, as the
    ``definitions`` fact has them); "" when they are the same. The source's columns
    are digests only: those the target lacks are counted, the target's named."""
    source = want.split()
    target = [d for d, _ in have]
    if source == target:
        return ""
    parts = []
    extra = [text for d, text in have if d not in source]
    if extra:
        parts.append(f"the target's {', '.join(extra)} not on the source")
    missing = sum(1 for d in source if d not in target)
    if missing:
        parts.append(f"{missing} column(s) of the source not on the target (or of another type)")
    if not parts:
        parts.append("the same columns in another order")
    return "; ".join(parts)


def major_version(version: str) -> str:
    """The major version of a ``server_version`` text ("15.8 (Debian ...)": "15")."""
    m = re.match(r"\s*(\d+)", version or "")
    return m.group(1) if m else ""
