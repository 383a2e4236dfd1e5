"""Privilege comparison, refresh order and the reset SQL's quoting (sources/pgcatalog.py)."""

from __future__ import annotations

import pytest

from drkit.sources.pgcatalog import (
    compare_acls,
    global_default,
    grants,
    refresh_order,
    refresh_sql,
    reset_sql,
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
