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
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from drkit.sources.pgsql import quote_literal

# pg_dump's entry types that create an object, and so can collide with the target's.
CREATING = frozenset((
    "SCHEMA", "EXTENSION", "TYPE", "DOMAIN", "FUNCTION", "PROCEDURE", "AGGREGATE", "TABLE",
    "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "FOREIGN TABLE", "INDEX", "CONSTRAINT",
    "FK CONSTRAINT", "CHECK CONSTRAINT", "TRIGGER", "POLICY", "RULE", "PUBLICATION",
    "PUBLICATION TABLE", "EVENT TRIGGER",
))  # fmt: skip

_SYSTEM = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'"
)

SESSION_SETTINGS = "SET LOCAL search_path = '';\nSET LOCAL quote_all_identifiers = on;\n"

# A routine's tag as pg_dump's entry header writes it: ``foldername("text")``.
_FUNCTION_TAG = """p.proname || '(' || coalesce((SELECT string_agg(
      pg_catalog.format_type(a.t, NULL), ', ' ORDER BY a.i)
      FROM unnest(p.proargtypes) WITH ORDINALITY a(t, i)), '') || ')'"""

# Every object pg_dump would write an entry for (and a few it leaves to extensions),
# as "TYPE<tab>schema<tab>tag"; schema "-" for database-wide objects.
_OBJECTS = f"""
SELECT 'SCHEMA' AS t, '-' AS s, n.nspname AS tag FROM pg_namespace n WHERE {_SYSTEM}
UNION ALL SELECT 'EXTENSION', '-', extname FROM pg_extension
UNION ALL SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
    WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'i' THEN 'INDEX'
    WHEN 'I' THEN 'INDEX' ELSE 'TABLE' END, n.nspname, c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'i', 'I') AND {_SYSTEM}
UNION ALL SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE'
    ELSE 'FUNCTION' END, n.nspname, {_FUNCTION_TAG}
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_SYSTEM}
UNION ALL SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname, t.typname
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE {_SYSTEM} AND t.typtype IN ('b', 'd', 'e', 'r', 'm', 'c')
    AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)
    AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
UNION ALL SELECT CASE o.contype WHEN 'f' THEN 'FK CONSTRAINT' WHEN 'c' THEN 'CHECK CONSTRAINT'
    ELSE 'CONSTRAINT' END, n.nspname, c.relname || ' ' || o.conname
  FROM pg_constraint o JOIN pg_class c ON c.oid = o.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_SYSTEM}
UNION ALL SELECT 'TRIGGER', n.nspname, c.relname || ' ' || g.tgname
  FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT g.tgisinternal AND {_SYSTEM}
UNION ALL SELECT 'POLICY', n.nspname, c.relname || ' ' || p.polname
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_SYSTEM}
UNION ALL SELECT 'RULE', n.nspname, c.relname || ' ' || r.rulename
  FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.rulename <> '_RETURN' AND {_SYSTEM}
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
  FROM pg_namespace n WHERE {_SYSTEM}
UNION ALL SELECT CASE c.relkind WHEN 'S' THEN 'sequence ' ELSE 'table ' END
    || quote_ident(n.nspname) || '.' || quote_ident(c.relname),
    coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char",
                                  c.relowner))::text[]
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_SYSTEM}
UNION ALL SELECT 'function ' || p.oid::regprocedure::text,
    coalesce(p.proacl, acldefault('f', p.proowner))::text[]
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_SYSTEM}
"""

# The columns of non-system relations, and each one's key in ``column_acls`` (a tab
# between relation and column: names may hold spaces and dots).
_COLUMN_KEY = (
    "'column ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname) || E'\\t' "
    "|| quote_ident(a.attname)"
)
_COLUMNS = f"""pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
    AND {_SYSTEM}"""

# Column privileges granted on the column itself: "column table<tab>column" -> aclitems.
_COLUMN_ACLS = f"""
SELECT {_COLUMN_KEY} AS k, a.attacl::text[] AS acl
  FROM {_COLUMNS} AND cardinality(a.attacl) > 0
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
  WHERE c.relkind IN ('v', 'm') AND {_SYSTEM}
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
  WHERE p.prokind <> 'a' AND {_SYSTEM} AND {_not_member("pg_proc", "p.oid")}
UNION ALL SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' ELSE 'MATERIALIZED VIEW' END,
    n.nspname, c.relname,
    {_digest(_VIEW_TEXT)}
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('v', 'm') AND {_SYSTEM} AND {_not_member("pg_class", "c.oid")}
UNION ALL SELECT CASE c.relkind WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
    n.nspname, c.relname, coalesce((SELECT string_agg({_digest(_COLUMN_TEXT, 8)}, ' '
      ORDER BY a.attnum) FROM pg_attribute a WHERE {_OWN_COLUMNS}), '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'f') AND {_SYSTEM} AND {_not_member("pg_class", "c.oid")}
UNION ALL SELECT 'TRIGGER', n.nspname, c.relname || ' ' || g.tgname,
    {_digest(_TRIGGER_TEXT)}
  FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT g.tgisinternal AND {_SYSTEM}
UNION ALL SELECT 'POLICY', n.nspname, c.relname || ' ' || p.polname,
    {_digest(_POLICY_TEXT)}
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_SYSTEM}
"""

# Read from a target only (never a fact): each table's columns in order, as
# [digest, "name" type] pairs, to say how a table's columns differ from the source's.
_TABLE_COLUMNS = f"""
SELECT CASE c.relkind WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END || E'\\t' || n.nspname
    || E'\\t' || c.relname AS k, jsonb_agg(jsonb_build_array({_digest(_COLUMN_TEXT, 8)},
      {_COLUMN_TEXT}) ORDER BY a.attnum) AS cols
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON {_OWN_COLUMNS}
  WHERE c.relkind IN ('r', 'p', 'f') AND {_SYSTEM} GROUP BY c.relkind, n.nspname, c.relname
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


# ---- privileges ------------------------------------------------------------------

_ACLITEM = re.compile(r'^((?:"(?:[^"]|"")*")|[^=]*)=([A-Za-z*]*)/')
PRIVILEGES = {
    "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "D": "TRUNCATE",
    "x": "REFERENCES", "t": "TRIGGER", "X": "EXECUTE", "U": "USAGE", "C": "CREATE",
    "c": "CONNECT", "T": "TEMPORARY", "m": "MAINTAIN", "s": "SET", "A": "ALTER SYSTEM",
}  # fmt: skip


def grants(items: Iterable[str]) -> set[tuple[str, str]]:
    """``aclitem`` texts as (grantee, privilege) pairs, grantor ignored; a grant option
    is a privilege of its own (``SELECT WITH GRANT OPTION``). PUBLIC is ``PUBLIC``."""
    out: set[tuple[str, str]] = set()
    for item in items:
        m = _ACLITEM.match(item)
        if not m:
            raise ValueError(f"not an aclitem: {item!r}")
        who = m.group(1)
        grantee = "PUBLIC" if who == "" else unquote(who)
        letters = m.group(2)
        for k, ch in enumerate(letters):
            if ch == "*":
                continue
            name = PRIVILEGES.get(ch, ch)
            if k + 1 < len(letters) and letters[k + 1] == "*":
                name += " WITH GRANT OPTION"
            out.add((grantee, name))
    return out


def compare_acls(
    want: dict[str, list[str]], have: dict[str, list[str]], keys: Iterable[str]
) -> tuple[list[str], list[str]]:
    """(wider, narrower): one text per key whose privileges on the target (``have``)
    exceed, or fall short of, the source's (``want``); a key missing on one side counts
    as no privilege at all."""
    wider, narrower = [], []
    for key in sorted(keys):
        w, h = grants(want.get(key) or []), grants(have.get(key) or [])
        if h - w:
            wider.append(f"{key} ({_pairs(h - w)})")
        if w - h:
            narrower.append(f"{key} ({_pairs(w - h)})")
    return wider, narrower


def compare_column_acls(
    want: dict[str, list[str]], have: dict[str, list[str]]
) -> tuple[list[str], list[str]]:
    """(wider, narrower) of column privileges, over every column either side has any on
    (a column missing on one side has none), each named ``column "s"."t" "c"``."""
    wider, narrower = compare_acls(want, have, set(want) | set(have))
    return [w.replace("\t", " ") for w in wider], [n.replace("\t", " ") for n in narrower]


def compare_database_acl(
    want: list[str], have: list[str], database: str
) -> tuple[list[str], list[str]]:
    """(wider, narrower) of the database's privileges, named ``database "name"``."""
    key = 'database "' + database.replace('"', '""') + '"'
    return compare_acls({key: want}, {key: have}, [key])


def unquote(name: str) -> str:
    """A name as ``quote_ident`` or ``aclitem`` output writes it, unquoted."""
    if len(name) > 1 and name.startswith('"') and name.endswith('"'):
        return name[1:-1].replace('""', '"')
    return name


def global_default(key: str) -> list[str]:
    """The built-in privileges a global default-privilege key stands for when the
    catalog has no row for it (PostgreSQL's ``acldefault``), as aclitem texts."""
    role, _, kind = key.split("\t")
    owner = '"' + unquote(role).replace('"', '""') + '"'
    letters = {"r": "arwdDxt", "S": "rwU", "f": "X", "T": "U", "n": "UC"}.get(kind, "")
    public = {"f": ["=X/" + owner], "T": ["=U/" + owner]}.get(kind, [])
    return [f"{owner}={letters}/{owner}", *public]


def _pairs(pairs: set[tuple[str, str]]) -> str:
    by: dict[str, list[str]] = {}
    for grantee, priv in sorted(pairs):
        by.setdefault(grantee, []).append(priv)
    return "; ".join(f"{g}: {', '.join(p)}" for g, p in by.items())


def default_acl_keys(
    want: dict[str, list[str]], have: dict[str, list[str]], internal: Iterable[str]
) -> set[str]:
    """The default-privilege keys to make equal: the source's, and the target's that are
    global or in a schema that is not one of Supabase's own (``internal``, quoted)."""
    own = set(internal)
    return set(want) | {k for k in have if k.split("\t")[1] == "-" or k.split("\t")[1] not in own}


# The pieces every reset below repeats. An ACL is compared as the set of (grantee,
# privilege, grant option) it grants; PUBLIC is grantee 0.
def _grantee(var: str) -> str:
    return (
        f"CASE WHEN {var}.grantee = 0 THEN 'PUBLIC' "
        f"ELSE quote_ident(pg_get_userbyid({var}.grantee)) END"
    )


def _grants(acl: str) -> str:
    return (
        "ARRAY(SELECT DISTINCT (a.grantee, a.privilege_type, a.is_grantable)::text\n"
        f"                        FROM aclexplode({acl}) a ORDER BY 1)"
    )


def _same(cur: str, des: str) -> str:
    """SQL: the two ACLs grant the same."""
    return f"{_grants(cur)}\n                = {_grants(des)}"


def _nonempty(*names: str) -> str:
    """Assignments making each empty ACL NULL: aclexplode() rejects '{}'."""
    return "".join(f"    {n} := CASE WHEN cardinality({n}) > 0 THEN {n} END;\n" for n in names)


def _reapply(
    cur: str,
    des: str,
    revoke: str,
    revoke_args: str,
    grant: str,
    grant_args: str,
    var: str = "r",
    only: str = "",
) -> str:
    """PL/pgSQL revoking everything ``cur`` grants (each grantee once; ``only`` a WHERE
    on them) and granting what ``des`` does. ``revoke``/``grant`` are format() strings
    whose last ``%%s`` are the grantee (and the grant option); ``*_args`` the others."""
    return (
        f"    FOR {var} IN SELECT DISTINCT a.grantee FROM aclexplode({cur}) a{only} LOOP\n"
        f"      EXECUTE format('{revoke}', {revoke_args}, {_grantee(var)});\n"
        "    END LOOP;\n"
        f"    FOR {var} IN SELECT a.grantee, a.privilege_type, a.is_grantable"
        f" FROM aclexplode({des}) a LOOP\n"
        f"      EXECUTE format('{grant}%%s', {grant_args}, {_grantee(var)},\n"
        f"        CASE WHEN {var}.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);\n"
        "    END LOOP;\n"
    )  # fmt: skip


# Resets every object's privileges to the source's exactly, in the load's transaction:
# its inputs are names the server resolves itself (to_regclass, ...) and aclitem texts
# it parses itself; what it executes is built from what it resolved.
_RESET_ACLS = (
    r"""
DO $drkit$
DECLARE
  want jsonb := %s::jsonb;
  k text; items jsonb; kind text; ident text; target text; what text;
  cur aclitem[]; des aclitem[]; r record;
BEGIN
  FOR k, items IN SELECT * FROM jsonb_each(want) LOOP
    kind := split_part(k, ' ', 1);
    ident := substr(k, length(kind) + 2);
    target := NULL;
    IF kind IN ('table', 'sequence') THEN
      SELECT c.oid::regclass::text, coalesce(c.relacl, acldefault(
               (CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner)),
             CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END
        INTO target, cur, what FROM pg_class c WHERE c.oid = to_regclass(ident);
    ELSIF kind = 'function' THEN
      SELECT p.oid::regprocedure::text, coalesce(p.proacl, acldefault('f', p.proowner)),
             'ROUTINE'
        INTO target, cur, what FROM pg_proc p WHERE p.oid = to_regprocedure(ident);
    ELSIF kind = 'schema' THEN
      SELECT quote_ident(n.nspname), coalesce(n.nspacl, acldefault('n', n.nspowner)),
             'SCHEMA'
        INTO target, cur, what FROM pg_namespace n WHERE n.oid = to_regnamespace(ident);
    END IF;
    CONTINUE WHEN target IS NULL;  -- missing on the target: the check names it
    des := ARRAY(SELECT jsonb_array_elements_text(items))::aclitem[];
"""
    + _nonempty("cur", "des")
    + f"    CONTINUE WHEN {_same('cur', 'des')};\n"
    + _reapply(
        "cur", "des",
        "REVOKE ALL ON %%s %%s FROM %%s CASCADE", "what, target",
        "GRANT %%s ON %%s %%s TO %%s", "r.privilege_type, what, target",
    )
    + """  END LOOP;
END $drkit$;
"""
)  # fmt: skip

_RESET_DEFAULT_ACLS = (
    r"""
DO $drkit$
DECLARE
  want jsonb := %s::jsonb;
  own text[] := %s::text[];
  k text; role oid; ns oid; t "char"; word text; scope text;
  cur aclitem[]; des aclitem[]; dflt aclitem[]; r record;
BEGIN
  FOR k IN SELECT jsonb_object_keys(want) UNION
      SELECT quote_ident(pg_get_userbyid(d.defaclrole)) || E'\t'
             || coalesce(quote_ident(n.nspname), '-') || E'\t' || d.defaclobjtype::text
        FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
        WHERE n.nspname IS NULL OR NOT quote_ident(n.nspname) = ANY (own) LOOP
    role := to_regrole(split_part(k, E'\t', 1));
    ns := CASE split_part(k, E'\t', 2) WHEN '-' THEN 0
          ELSE to_regnamespace(split_part(k, E'\t', 2)) END;
    t := split_part(k, E'\t', 3);
    CONTINUE WHEN role IS NULL OR ns IS NULL;
    word := CASE t WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' WHEN 'f' THEN 'FUNCTIONS'
                   WHEN 'T' THEN 'TYPES' WHEN 'n' THEN 'SCHEMAS' END;
    CONTINUE WHEN word IS NULL;
    dflt := CASE WHEN ns = 0 THEN acldefault((CASE t WHEN 'S' THEN 's' ELSE t END)::"char", role)
                 ELSE '{}'::aclitem[] END;
    cur := coalesce((SELECT d.defaclacl FROM pg_default_acl d WHERE d.defaclrole = role
                     AND d.defaclnamespace = ns AND d.defaclobjtype = t), dflt);
    des := CASE WHEN want ? k THEN ARRAY(SELECT jsonb_array_elements_text(want -> k))::aclitem[]
                ELSE dflt END;
"""
    + _nonempty("cur", "des")
    + f"    CONTINUE WHEN {_same('cur', 'des')};\n"
    + r"""    scope := format('FOR ROLE %%I', pg_get_userbyid(role))
             || CASE WHEN ns = 0 THEN '' ELSE format(' IN SCHEMA %%I',
                  (SELECT nspname FROM pg_namespace WHERE oid = ns)) END;
"""
    + _reapply(
        "cur", "des",
        "ALTER DEFAULT PRIVILEGES %%s REVOKE ALL ON %%s FROM %%s", "scope, word",
        "ALTER DEFAULT PRIVILEGES %%s GRANT %%s ON %%s TO %%s", "scope, r.privilege_type, word",
    )
    + """  END LOOP;
END $drkit$;
"""
)  # fmt: skip


# Then every column's privileges: those of each column the source had privileges on
# and of each column of the target that has any (none for a column the source did not
# name). Run after the objects' reset: a REVOKE on a table revokes its columns' too.
# A key is matched against the target's own spelling of its columns (same settings),
# and what is executed names the column as the target's catalog does. An empty ACL is
# NULL here: aclexplode() rejects an empty (zero-dimensional) array.
_RESET_COLUMN_ACLS = (
    r"""
DO $drkit$
DECLARE
  want jsonb := %s::jsonb;
  des aclitem[]; r record; g record;
BEGIN
  FOR r IN SELECT c.oid::regclass::text AS target, a.attname,
                  CASE WHEN cardinality(a.attacl) > 0 THEN a.attacl END AS cur,
                  want -> ("""
    + _COLUMN_KEY
    + r""") AS items
      FROM """
    + _COLUMNS
    + r"""
        AND (cardinality(a.attacl) > 0 OR want ? ("""
    + _COLUMN_KEY
    + r""")) LOOP
    des := ARRAY(SELECT jsonb_array_elements_text(coalesce(r.items, '[]')))::aclitem[];
"""
    + _nonempty("des")
    + f"    CONTINUE WHEN {_same('r.cur', 'des')};\n"
    + _reapply(
        "r.cur", "des",
        "REVOKE ALL (%%I) ON TABLE %%s FROM %%s CASCADE", "r.attname, r.target",
        "GRANT %%s (%%I) ON TABLE %%s TO %%s", "g.privilege_type, r.attname, r.target",
        var="g",
    )
    + """  END LOOP;
END $drkit$;
"""
)  # fmt: skip

# The privileges of the database restored into (current_database()). Its owner's own
# entry is revoked only when the source's names that role: a target whose database has
# another owner than the source's keeps its owner's privileges (the check names them).
_RESET_DATABASE_ACL = (
    r"""
DO $drkit$
DECLARE
  des aclitem[] := ARRAY(SELECT jsonb_array_elements_text(%s::jsonb))::aclitem[];
  db text := quote_ident(current_database());
  cur aclitem[]; dba oid; r record;
BEGIN
  SELECT coalesce(d.datacl, acldefault('d', d.datdba)), d.datdba INTO cur, dba
    FROM pg_database d WHERE d.datname = current_database();
"""
    + _nonempty("cur", "des")
    + f"    IF {_same('cur', 'des')} THEN\n      RETURN;\n    END IF;\n"
    + _reapply(
        "cur", "des",
        "REVOKE ALL ON DATABASE %%s FROM %%s CASCADE", "db",
        "GRANT %%s ON DATABASE %%s TO %%s", "r.privilege_type, db",
        only="\n      WHERE a.grantee <> dba"
        " OR a.grantee IN (SELECT b.grantee FROM aclexplode(des) b)",
    )
    + """END $drkit$;
"""
)  # fmt: skip


def reset_sql(
    acls: dict[str, list[str]],
    default_acls: dict[str, list[str]],
    internal: Iterable[str],
    column_acls: dict[str, list[str]] | None = None,
    database_acl: list[str] | None = None,
) -> str:
    """SQL that sets the privileges of every object in ``acls``, the default privileges,
    the columns' and the database's to the source's exactly (run after the load, in its
    transaction). ``column_acls`` or ``database_acl`` None: not recorded (a snapshot
    from before drkit recorded them), so not reset: the target's are left as they are."""
    own = "ARRAY[" + ", ".join(quote_literal(s) for s in internal) + "]"
    sql = (
        "SET search_path = '';\nSET quote_all_identifiers = on;\n"
        + _RESET_DEFAULT_ACLS % (_json_literal(default_acls), own)
        + _RESET_ACLS % _json_literal(acls)
    )
    if column_acls is not None:
        sql += _RESET_COLUMN_ACLS % _json_literal(column_acls)
    if database_acl is not None:
        sql += _RESET_DATABASE_ACL % _json_literal(database_acl)
    return sql


def _json_literal(value: object) -> str:
    """``value`` as a JSON string literal that cannot end the ``$drkit$`` body it sits in
    (names in the facts may hold ``$``: JSON spells it ``\\u0024``)."""
    return quote_literal(json.dumps(value).replace("$", "\\u0024"))


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
    return _DROP % _json_literal(key)


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
