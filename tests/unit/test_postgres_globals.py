from drkit.sources.postgres import filter_globals

SQL = '''SET default_transaction_read_only = off;
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE "Weird ""Role""";
ALTER ROLE "Weird ""Role""" WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$x';
CREATE ROLE app;
ALTER ROLE app WITH LOGIN;
GRANT app TO "Weird ""Role""";
'''


def test_existing_roles_are_left_alone() -> None:
    sql, created, kept = filter_globals(SQL, {"postgres", "app"}, replace=False)
    assert created == {'Weird "Role"'}
    assert kept == {"postgres", "app"}
    assert "CREATE ROLE postgres;" not in sql and "ALTER ROLE postgres" not in sql
    assert "ALTER ROLE app" not in sql
    assert 'CREATE ROLE "Weird ""Role""";' in sql
    assert 'GRANT app TO "Weird ""Role""";' in sql


def test_force_resets_existing_roles_attributes() -> None:
    sql, created, _ = filter_globals(SQL, {"app"}, replace=True)
    assert "CREATE ROLE app;" not in sql
    assert "ALTER ROLE app WITH LOGIN;" in sql
    assert created == {"postgres", 'Weird "Role"'}
