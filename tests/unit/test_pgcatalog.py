"""Privilege comparison and the reset SQL's quoting (sources/pgacl.py); refresh order and
definitions (sources/pgcatalog.py): the column diff, the drop SQL, and how the merge
(supabase_merge.py) and the plan use the two sides' digests."""

from __future__ import annotations

import pytest

from drkit.sources.pgacl import (
    compare_acls,
    compare_column_acls,
    compare_database_acl,
    global_default,
    grants,
    reset_sql,
)
from drkit.sources.pgcatalog import (
    column_diff,
    drop_sql,
    facts_sql,
    major_version,
    refresh_order,
    refresh_sql,
    target_sql,
)
from drkit.sources.supabase_merge import MergeFilter, Target, definition_changes, merge_lines


def test_grants_ignore_the_grantor_and_read_quoted_names() -> None:
    assert grants(["anon=r*w/postgres", '"Odd ""role"""=X/x', "=U/postgres"]) == {
        ("anon", "SELECT WITH GRANT OPTION"),
        ("anon", "UPDATE"),
        ('Odd "role"', "EXECUTE"),
        ("PUBLIC", "USAGE"),
    }
    with pytest.raises(ValueError, match="not an aclitem: 'nonsense'"):
        grants(["nonsense"])


def test_wider_and_narrower_are_named_per_object() -> None:
    want = {"table t": ["postgres=arwdDxt/postgres", "anon=a/postgres"]}
    have = {"table t": ["postgres=arwdDxt/postgres", "anon=r/postgres"], "table u": []}
    wider, narrower = compare_acls(want, have, want)
    assert wider == ["table t (anon: SELECT)"] and narrower == ["table t (anon: INSERT)"]


def test_global_default_is_postgres_builtin() -> None:
    assert global_default('"postgres"\t-\tf') == ['"postgres"=X/"postgres"', '=X/"postgres"']
    assert grants(global_default('"app"\t-\tr')) == {
        ("app", p)
        for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
    }


def test_matviews_refresh_after_what_they_read_through_views() -> None:
    views = [
        {"name": "top", "kind": "m", "populated": True, "reads": ["mid"]},
        {"name": "mid", "kind": "v", "populated": True, "reads": ["base"]},
        {"name": "base", "kind": "m", "populated": True, "reads": []},
        {"name": "cold", "kind": "m", "populated": False, "reads": []},
    ]
    assert refresh_order(views) == ["base", "top"]
    assert refresh_sql(["base"], ["base"]) == "REFRESH MATERIALIZED VIEW base;\n"
    with pytest.raises(ValueError, match="is not among the backup's objects"):
        refresh_sql(["base; DROP TABLE x"], ["base"])


def test_reset_sql_keeps_names_inside_its_literal() -> None:
    sql = reset_sql({'table "a$drkit$b"': ["x=r/x'; DROP"]}, {}, ['"auth"'])
    body = sql.split("$drkit$")
    # Only the two DO blocks' own delimiters: the name's $ is spelled \u0024 in the JSON.
    assert len(body) == 5
    assert "x=r/x''; DROP" in sql


def test_column_privileges_are_compared_over_both_sides_columns() -> None:
    want = {
        'column "public"."p"\t"id"': ["anon=r/postgres"],
        'column "public"."p"\t"user name"': ["anon=rw/postgres"],
    }
    have = {
        'column "public"."p"\t"user name"': ["anon=r/x"],
        'column "auth"."users"\t"email"': ["anon=r/supabase_auth_admin"],
    }
    wider, narrower = compare_column_acls(want, have)
    # The target's own column (no entry in the source's) is wider; tabs become spaces.
    assert wider == ['column "auth"."users" "email" (anon: SELECT)']
    assert narrower == [
        'column "public"."p" "id" (anon: SELECT)',
        'column "public"."p" "user name" (anon: UPDATE)',
    ]
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


def test_definitions_are_a_fact_and_a_target_fact() -> None:
    assert "'definitions'" in facts_sql() and "pg_get_functiondef" in facts_sql()
    sql = target_sql("definitions", "table_columns", "server_version")
    for what in ("pg_get_viewdef", "pg_get_triggerdef", "polqual", "format_type", "sha256"):
        assert what in sql
    assert "table_columns" not in facts_sql()  # the target's column texts are never facts


def test_column_diff_names_the_targets_columns_and_counts_the_sources() -> None:
    have = [["a1", '"id" "uuid"'], ["b2", '"email" "text"'], ["c3", '"phone" "text"']]
    assert column_diff("a1 b2 c3", have) == ""
    assert column_diff("a1 b2", have) == 'the target\'s "phone" "text" not on the source'
    assert column_diff("a1 b2 c3 d4 e5", have) == (
        "2 column(s) of the source not on the target (or of another type)"
    )
    assert column_diff("b2 a1 c3", have) == "the same columns in another order"
    assert column_diff("a1 x9 c3", have) == (
        'the target\'s "email" "text" not on the source; '
        "1 column(s) of the source not on the target (or of another type)"
    )


def test_drop_sql_names_the_key_inside_its_literal() -> None:
    sql = drop_sql("POLICY\tstorage\tobjects own $drkit$ files'; DROP")
    assert sql.count("$drkit$") == 2  # the DO block's own delimiters only
    assert "own \\u0024drkit\\u0024 files''; DROP" in sql
    assert "DROP POLICY %I ON %I.%I" in sql and "DROP TRIGGER %I ON %I.%I" in sql
    with pytest.raises(ValueError, match="only a trigger or a policy is dropped"):
        drop_sql("FUNCTION\tauth\tuid()")


def test_major_version() -> None:
    assert major_version("15.8 (Debian 15.8-1.pgdg120+1)") == "15"
    assert major_version("17beta1") == "17" and major_version("") == ""


# A plain schema dump's entries, as pg_dump writes them.
DUMP = """--
-- Name: uid(); Type: FUNCTION; Schema: auth; Owner: supabase_auth_admin
--

CREATE FUNCTION "auth"."uid"() RETURNS "uuid"
    LANGUAGE "plpgsql" STABLE
    AS $$ BEGIN
CREATE FUNCTION x
RETURN NULL; END $$;


ALTER FUNCTION "auth"."uid"() OWNER TO "supabase_auth_admin";

--
-- Name: role(); Type: FUNCTION; Schema: auth; Owner: supabase_auth_admin
--

CREATE FUNCTION "auth"."role"() RETURNS "text"
    LANGUAGE "sql" STABLE AS $$ SELECT 'x' $$;

--
-- Name: users; Type: TABLE; Schema: auth; Owner: supabase_auth_admin
--

CREATE TABLE "auth"."users" (
    "id" "uuid" NOT NULL
);

--
-- Name: user_emails; Type: VIEW; Schema: auth; Owner: postgres
--

CREATE VIEW "auth"."user_emails" AS
 SELECT 1 AS "a";

--
-- Name: objects update_objects_updated_at; Type: TRIGGER; Schema: storage; Owner: x
--

CREATE TRIGGER "update_objects_updated_at" AFTER UPDATE ON "storage"."objects" EXECUTE FUNCTION f();

--
-- Name: objects own files; Type: POLICY; Schema: storage; Owner: x
--

CREATE POLICY "own files" ON "storage"."objects" FOR SELECT USING (true);

--
-- Name: FUNCTION "uid"(); Type: ACL; Schema: auth; Owner: supabase_auth_admin
--

GRANT ALL ON FUNCTION "auth"."uid"() TO "dashboard_user";
"""

UID, ROLE, USERS = "FUNCTION\tauth\tuid()", "FUNCTION\tauth\trole()", "TABLE\tauth\tusers"
VIEW = "VIEW\tauth\tuser_emails"
TRIGGER = "TRIGGER\tstorage\tobjects update_objects_updated_at"
POLICY = "POLICY\tstorage\tobjects own files"


def _merge(existing: set[str], replace: set[str]) -> tuple[MergeFilter, str]:
    merge = MergeFilter(existing, replace)
    return merge, "".join(merge(line) for line in DUMP.splitlines(True))


def test_merge_filter_replaces_what_was_edited_on_the_source() -> None:
    existing = {UID, ROLE, USERS, VIEW, TRIGGER, POLICY}
    merge, out = _merge(existing, {UID, VIEW, TRIGGER, POLICY, USERS})
    # The edited function and view: CREATE OR REPLACE, only the entry's statement line.
    assert 'CREATE OR REPLACE FUNCTION "auth"."uid"() RETURNS "uuid"' in out
    assert "\nCREATE FUNCTION x\n" in out
    assert 'CREATE OR REPLACE VIEW "auth"."user_emails" AS' in out
    # Equal ones (role()) and tables are merged as before: left out.
    assert '"auth"."role"' not in out and "CREATE TABLE" not in out
    # A trigger and a policy: the target's dropped just before the dump's CREATE.
    trigger = out.index("-- Name: objects update_objects_updated_at")
    assert out.rindex("DO $drkit$", 0, trigger) > out.index("CREATE OR REPLACE VIEW")
    assert "TRIGGER\\tstorage\\tobjects update_objects_updated_at" in out[:trigger]
    policy = out.index("-- Name: objects own files")
    assert "POLICY\\tstorage\\tobjects own files" in out[trigger:policy]
    assert out.count("DO $drkit$") == 2
    assert 'CREATE TRIGGER "update_objects_updated_at"' in out
    assert 'CREATE POLICY "own files"' in out
    assert "GRANT ALL ON FUNCTION" in out
    assert merge.replaced == [UID, VIEW, TRIGGER, POLICY]
    assert merge.merged == [ROLE, USERS]


def test_merge_filter_without_edits_merges_as_before() -> None:
    merge, out = _merge({UID, ROLE, USERS, VIEW, TRIGGER, POLICY}, set())
    assert "CREATE" not in out.replace("-- Name:", "") and "DO $drkit$" not in out
    assert merge.replaced == [] and len(merge.merged) == 6
    # Not on the target: created as the dump has it, never "replaced".
    merge, out = _merge(set(), {UID, TRIGGER})
    assert out == DUMP and merge.replaced == []


def _facts(**definitions: str) -> dict[str, object]:
    keys = {
        "uid": UID,
        "role": ROLE,
        "users": USERS,
        "view": VIEW,
        "trigger": TRIGGER,
        "policy": POLICY,
        "mv": "MATERIALIZED VIEW\tpublic\tmv",
    }
    defs = {keys[k]: v for k, v in definitions.items()}
    return {"objects": sorted(defs), "definitions": defs, "server_version": "15.8 (Debian)"}


def test_plan_names_replaced_definitions_and_warns_about_columns() -> None:
    facts = _facts(uid="new", role="same", users="a1 b2", trigger="t1", policy="p1", mv="m1")
    target = Target(
        True,
        objects={UID, ROLE, USERS, TRIGGER, POLICY, "MATERIALIZED VIEW\tpublic\tmv"},
        definitions={
            UID: "old",
            ROLE: "same",
            USERS: "a1 b2 c3",
            TRIGGER: "t1",
            POLICY: "p0",
            "MATERIALIZED VIEW\tpublic\tmv": "m0",
        },
        columns={USERS: [["a1", '"id" "uuid"'], ["b2", '"e" "text"'], ["c3", '"ip" "inet"']]},
        version="15.2",
    )
    changes = definition_changes(facts, target)
    assert changes.replace == [UID, POLICY]
    lines = merge_lines(facts, target)
    assert lines[0].startswith("merge: 4 object(s) the target already has are kept")
    assert lines[1:6] == [
        "replaces the target's definition of function auth.uid() (edited on the source)",
        "replaces the target's definition of policy storage.objects own files (edited on "
        "the source)",
        "warn: materialized view public.mv: definition differs from the source's; kept as "
        "the target has it",
        "warn: table auth.users: columns differ from the source's: the target's \"ip\" "
        '"inet" not on the source; the data load may fail',
        "create: 0 object(s)",
    ]
    # Another major version on the target: said so, the source's applied all the same.
    target.version = "17.1"
    assert definition_changes(facts, target).replace == [UID, POLICY]
    assert any(
        ln.startswith("the source's PostgreSQL 15, the target's 17: a view's")
        for ln in merge_lines(facts, target)
    )


def test_an_older_snapshot_compares_no_definitions() -> None:
    facts = _facts(uid="new")
    del facts["definitions"]
    target = Target(True, objects={UID}, definitions={UID: "old"})
    changes = definition_changes(facts, target)
    assert not changes.recorded and changes.replace == []
    assert merge_lines(facts, target)[1].startswith("definitions not recorded (a snapshot")
