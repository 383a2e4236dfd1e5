"""Privileges as pg_catalog holds them: compared between source and target, and reset.

``aclitem`` texts (the facts drkit.sources.pgcatalog's queries record: ``acls``,
``column_acls``, ``database_acl``, ``default_acls``) read as (grantee, privilege)
pairs, grantor ignored; the comparisons say which privileges the target has beyond
the source's, or lacks; ``reset_sql`` makes the target's equal to the source's in
the load's transaction (PL/pgSQL whose inputs the server resolves itself).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from drkit.sources.pgsql import COLUMN_KEY, COLUMNS, json_literal, quote_literal

_ACLITEM = re.compile(r'^((?:"(?:[^"]|"")*")|[^=]*)=([A-Za-z*]*)/')
PRIVILEGES = {
    "r": "SELECT",
    "a": "INSERT",
    "w": "UPDATE",
    "d": "DELETE",
    "D": "TRUNCATE",
    "x": "REFERENCES",
    "t": "TRIGGER",
    "X": "EXECUTE",
    "U": "USAGE",
    "C": "CREATE",
    "c": "CONNECT",
    "T": "TEMPORARY",
    "m": "MAINTAIN",
    "s": "SET",
    "A": "ALTER SYSTEM",
}


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
    )


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
        "cur",
        "des",
        "REVOKE ALL ON %%s %%s FROM %%s CASCADE",
        "what, target",
        "GRANT %%s ON %%s %%s TO %%s",
        "r.privilege_type, what, target",
    )
    + """  END LOOP;
END $drkit$;
"""
)

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
        "cur",
        "des",
        "ALTER DEFAULT PRIVILEGES %%s REVOKE ALL ON %%s FROM %%s",
        "scope, word",
        "ALTER DEFAULT PRIVILEGES %%s GRANT %%s ON %%s TO %%s",
        "scope, r.privilege_type, word",
    )
    + """  END LOOP;
END $drkit$;
"""
)


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
    + COLUMN_KEY
    + r""") AS items
      FROM """
    + COLUMNS
    + r"""
        AND (cardinality(a.attacl) > 0 OR want ? ("""
    + COLUMN_KEY
    + r""")) LOOP
    des := ARRAY(SELECT jsonb_array_elements_text(coalesce(r.items, '[]')))::aclitem[];
"""
    + _nonempty("des")
    + f"    CONTINUE WHEN {_same('r.cur', 'des')};\n"
    + _reapply(
        "r.cur",
        "des",
        "REVOKE ALL (%%I) ON TABLE %%s FROM %%s CASCADE",
        "r.attname, r.target",
        "GRANT %%s (%%I) ON TABLE %%s TO %%s",
        "g.privilege_type, r.attname, r.target",
        var="g",
    )
    + """  END LOOP;
END $drkit$;
"""
)

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
        "cur",
        "des",
        "REVOKE ALL ON DATABASE %%s FROM %%s CASCADE",
        "db",
        "GRANT %%s ON DATABASE %%s TO %%s",
        "r.privilege_type, db",
        only="\n      WHERE a.grantee <> dba"
        " OR a.grantee IN (SELECT b.grantee FROM aclexplode(des) b)",
    )
    + """END $drkit$;
"""
)


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
        + _RESET_DEFAULT_ACLS % (json_literal(default_acls), own)
        + _RESET_ACLS % json_literal(acls)
    )
    if column_acls is not None:
        sql += _RESET_COLUMN_ACLS % json_literal(column_acls)
    if database_acl is not None:
        sql += _RESET_DATABASE_ACL % json_literal(database_acl)
    return sql
