import pytest

from drkit.sources.pgroles import plan_roles
from drkit.sources.pgtokens import GlobalsRefused

SQL = '''--
-- PostgreSQL database cluster dump
--

\\restrict abcDEF123

SET default_transaction_read_only = off;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE "Weird ""Role""";
ALTER ROLE "Weird ""Role""" WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$x';
CREATE ROLE app;
ALTER ROLE app WITH LOGIN CONNECTION LIMIT -1 VALID UNTIL 'infinity';
COMMENT ON ROLE app IS E'it''s a \\\\ backslash';
ALTER ROLE app SET search_path TO '$user', 'public';
GRANT app TO "Weird ""Role""" GRANTED BY postgres;
GRANT pg_read_all_data TO app GRANTED BY postgres;

\\unrestrict abcDEF123
'''


def test_existing_roles_are_left_alone() -> None:
    plan = plan_roles(SQL, {"postgres", "app"}, {"postgres"}, replace=False)
    assert plan.created == {'Weird "Role"'}
    assert plan.kept == {"app"}
    assert plan.protected == {"postgres"}
    assert "CREATE ROLE postgres" not in plan.sql and "ALTER ROLE postgres" not in plan.sql
    assert "ALTER ROLE app" not in plan.sql and "COMMENT" not in plan.sql
    assert 'CREATE ROLE "Weird ""Role""";' in plan.sql
    assert 'GRANT app TO "Weird ""Role""" GRANTED BY postgres;' in plan.sql
    assert "restrict" not in plan.sql and "\\" not in plan.sql


def test_force_resets_existing_roles_attributes_but_never_protected_ones() -> None:
    plan = plan_roles(SQL, {"app", "postgres", "admin"}, {"admin"}, replace=True)
    assert "CREATE ROLE app;" not in plan.sql
    assert "ALTER ROLE app WITH LOGIN CONNECTION LIMIT -1 VALID UNTIL 'infinity';" in plan.sql
    assert "COMMENT ON ROLE app IS E'it''s a \\\\ backslash';" in plan.sql
    assert "ALTER ROLE app SET search_path TO '$user', 'public';" in plan.sql
    assert "GRANT pg_read_all_data TO app GRANTED BY postgres;" in plan.sql
    assert plan.created == {'Weird "Role"'}
    assert plan.protected == {"postgres"}
    assert "ROLE postgres" not in plan.sql


def test_reserved_roles_the_target_lacks_are_created() -> None:
    # PostgREST's roles on a plain PostgreSQL: creating them alters nothing the target had.
    sql = "CREATE ROLE authenticator;\nALTER ROLE authenticator WITH LOGIN;\n"
    sql += "CREATE ROLE anon;\nGRANT anon TO authenticator;\n"
    plan = plan_roles(sql, {"admin"}, {"admin"}, replace=False)
    assert plan.created == {"authenticator", "anon"} and not plan.protected
    assert "GRANT anon TO authenticator;" in plan.sql


@pytest.mark.parametrize(
    "statement",
    [
        "alter role postgres password 'x';",
        'ALTER USER "postgres" WITH NOSUPERUSER;',
        "alter user admin set work_mem = '1GB';",  # the target's bootstrap superuser
        "Comment On Role authenticator Is 'x';",  # Supabase's
        "GRANT app TO supabase_admin;",
        "grant postgres to app;",  # handing out the superuser's role
        "create role pg_monitor;",
    ],
)
def test_protected_roles_are_never_altered_in_any_case(statement: str) -> None:
    target = {"app", "admin", "postgres", "authenticator", "supabase_admin"}
    plan = plan_roles(statement, target, {"admin"}, replace=True)
    assert plan.sql == "SET client_encoding = 'UTF8';\n"
    assert plan.protected


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("CREATE ROLE a;\n\\! touch /tmp/x\n", 2, "psql meta-command `\\!`"),
        ("CREATE ROLE a; \\o |sh\n", 1, "psql meta-command `\\o`"),
        ("CREATE ROLE a;\nALTER ROLE a PASSWORD 'x\\'; \\! id\n", 2, "psql meta-command `\\!`"),
        ("\n\nselect pg_reload_conf();", 3, "SELECT is not a role statement"),
        ("CREATE ROLE a IN ROLE postgres;", 1, "IN is not accepted in CREATE ROLE"),
        ("CREATE TABLESPACE t LOCATION '/x';", 1, "TABLESPACE is not accepted"),
        ("GRANT SET ON PARAMETER work_mem TO app;", 1, "GRANT of a privilege"),
        ("ALTER ROLE current_user PASSWORD 'x';", 1, "'current_user' is not a role name"),
        ("SET role postgres;", 1, "SET role is not a role statement"),
        ("SET standard_conforming_strings = off;", 1, "must be on"),
        ("CREATE ROLE a; :'x'", 1, "unexpected character ':'"),
        ("ALTER ROLE a RENAME TO b;", 1, "RENAME is not accepted"),
        ("CREATE ROLE a", 1, "does not end with ;"),
        ("COMMENT ON ROLE a IS 'open", 1, "unterminated quoted string"),
        ("COMMENT ON ROLE a IS E'\\x41';", 1, "unsupported escape"),
    ],
)
def test_anything_but_role_statements_refuses_naming_the_line(
    text: str, line: int, why: str
) -> None:
    with pytest.raises(GlobalsRefused) as err:
        plan_roles(text, set(), set(), replace=False)
    assert err.value.line == line
    assert why in str(err.value)
