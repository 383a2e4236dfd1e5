"""Privilege comparison, refresh order and the reset SQL's quoting (sources/pgcatalog.py)."""

from __future__ import annotations

import pytest

from drkit.sources.pgcatalog import (
    compare_acls,
    compare_column_acls,
    compare_database_acl,
    facts_sql,
    global_default,
    grants,
    refresh_order,
    refresh_sql,
    reset_sql,
    target_sql,
)


def test_grants_ignore_the_grantor_and_read_quoted_names() -> None:
    assert grants(['anon=r*w/postgres', '"Odd ""role"""=X/x', "=U/postgres"]) == {
        ("anon", "SELECT WITH GRANT OPTION"), ("anon", "UPDATE"), ('Odd "role"', "EXECUTE"),
        ("PUBLIC", "USAGE"),
    }  # fmt: skip
    with pytest.raises(ValueError):
        grants(["nonsense"])


def test_wider_and_narrower_are_named_per_object() -> None:
    want = {"table t": ["postgres=arwdDxt/postgres", "anon=a/postgres"]}
    have = {"table t": ["postgres=arwdDxt/postgres", "anon=r/postgres"], "table u": []}
    wider, narrower = compare_acls(want, have, want)
    assert wider == ["table t (anon: SELECT)"] and narrower == ["table t (anon: INSERT)"]


def test_global_default_is_postgres_builtin() -> None:
    assert global_default('"postgres"\t-\tf') == ['"postgres"=X/"postgres"', '=X/"postgres"']
    assert grants(global_default('"app"\t-\tr')) == {("app", p) for p in
        ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")}  # fmt: skip


def test_matviews_refresh_after_what_they_read_through_views() -> None:
    views = [
        {"name": "top", "kind": "m", "populated": True, "reads": ["mid"]},
        {"name": "mid", "kind": "v", "populated": True, "reads": ["base"]},
        {"name": "base", "kind": "m", "populated": True, "reads": []},
        {"name": "cold", "kind": "m", "populated": False, "reads": []},
    ]
    assert refresh_order(views) == ["base", "top"]
    assert refresh_sql(["base"], ["base"]) == "REFRESH MATERIALIZED VIEW base;\n"
    with pytest.raises(ValueError):
        refresh_sql(["base; DROP TABLE x"], ["base"])


def test_reset_sql_keeps_names_inside_its_literal() -> None:
    sql = reset_sql({'table "a$drkit$b"': ["x=r/x'; DROP"]}, {}, ['"auth"'])
    body = sql.split("$drkit$")
    # Only the two DO blocks' own delimiters: the name's $ is spelled \u0024 in the JSON.
    assert len(body) == 5
    assert "x=r/x''; DROP" in sql


def test_column_privileges_are_compared_over_both_sides_columns() -> None:
    want = {'column "public"."p"\t"id"': ["anon=r/postgres"],
            'column "public"."p"\t"user name"': ["anon=rw/postgres"]}  # fmt: skip
    have = {'column "public"."p"\t"user name"': ["anon=r/x"],
            'column "auth"."users"\t"email"': ["anon=r/supabase_auth_admin"]}  # fmt: skip
    wider, narrower = compare_column_acls(want, have)
    # The target's own column (no entry in the source's) is wider; tabs become spaces.
    assert wider == ['column "auth"."users" "email" (anon: SELECT)']
    assert narrower == ['column "public"."p" "id" (anon: SELECT)',
                        'column "public"."p" "user name" (anon: UPDATE)']  # fmt: skip
    assert compare_column_acls({}, {}) == ([], [])


def test_database_privileges_are_named_by_the_database() -> None:
    want = ["=Tc/postgres", "postgres=CTc/postgres", "e2i_api=C/postgres"]
    have = ["=Tc/postgres", "postgres=CTc/x", "anon=C*/postgres"]
    assert compare_database_acl(want, have, 'my "db"') == (
        ['database "my ""db""" (anon: CREATE WITH GRANT OPTION)'],
        ['database "my ""db""" (e2i_api: CREATE)'],
    )
    assert compare_database_acl(want, list(reversed(want)), "postgres") == ([], [])


def test_column_and_database_privileges_are_facts_and_target_facts() -> None:
    assert "'column_acls'" in facts_sql() and "'database_acl'" in facts_sql()
    sql = target_sql("column_acls", "database_acl")
    assert "attacl" in sql and "current_database()" in sql
    assert sql.startswith("BEGIN READ ONLY;\nSET LOCAL search_path = '';\n")


def test_reset_sql_leaves_what_an_older_snapshot_never_recorded() -> None:
    """No column or database facts (an older snapshot): neither is reset; recorded
    (even empty): both are, after the objects' reset (a table's REVOKE clears its
    columns' privileges)."""
    old = reset_sql({}, {}, ['"auth"'])
    assert "attacl" not in old and "ON DATABASE" not in old
    new = reset_sql({}, {}, ['"auth"'], {}, [])
    assert new.index("REVOKE ALL ON %s %s") < new.index("REVOKE ALL (%I) ON TABLE")
    assert "ON DATABASE" in new
    # One DO block each: default privileges, objects, columns, database.
    assert new.count("DO $drkit$") == 4


def test_reset_sql_keeps_column_names_inside_its_literal() -> None:
    key = 'column "a$drkit$b"."t"\t"c\'; DROP"'
    sql = reset_sql({}, {}, [], {key: ["x=r/x"]}, ["=c/x'; DROP"])
    assert sql.count("$drkit$") == 8  # the four blocks' own delimiters
    assert "\\u0024drkit\\u0024" in sql
    assert "c''; DROP" in sql and "=c/x''; DROP" in sql
