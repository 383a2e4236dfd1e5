"""flavor = "supabase": roles, schema and data (auth and storage included) round-trip
into a fresh Supabase-like database without permission or "already exists" errors."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import drkit, role_exists, write_policy
from tests.servers.postgres import PgServer

RESERVED = ["anon", "authenticated", "service_role", "supabase_admin", "supabase_auth_admin",
            "supabase_storage_admin", "authenticator"]  # fmt: skip

# What a fresh self-hosted Supabase database has before any user data: its roles,
# and the auth and storage schemas with their (empty) tables.
SUPABASE_BASE = """
CREATE SCHEMA IF NOT EXISTS auth AUTHORIZATION supabase_auth_admin;
CREATE SCHEMA IF NOT EXISTS storage AUTHORIZATION supabase_storage_admin;
CREATE SCHEMA IF NOT EXISTS extensions;
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text UNIQUE, raw_user_meta_data jsonb);
CREATE TABLE auth.schema_migrations (version text PRIMARY KEY);
INSERT INTO auth.schema_migrations VALUES ('20240101');
CREATE TABLE storage.buckets (id text PRIMARY KEY, name text NOT NULL, public boolean);
CREATE TABLE storage.objects (id uuid PRIMARY KEY, bucket_id text REFERENCES storage.buckets(id),
                              name text, owner uuid);
CREATE TABLE storage.migrations (id int PRIMARY KEY, name text);
INSERT INTO storage.migrations VALUES (1, 'create-migrations-table');
ALTER TABLE auth.users OWNER TO supabase_auth_admin;
ALTER TABLE storage.objects OWNER TO supabase_storage_admin;
ALTER TABLE storage.buckets OWNER TO supabase_storage_admin;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS
  $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
"""

USER_DATA = """
CREATE TABLE public.profiles (
  id uuid PRIMARY KEY REFERENCES auth.users(id) ON DELETE CASCADE,
  username text UNIQUE, settings jsonb DEFAULT '{{}}'
);
ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_profile ON public.profiles FOR ALL TO authenticated USING (id = auth.uid());
GRANT SELECT, INSERT, UPDATE ON public.profiles TO authenticated;
GRANT SELECT ON public.profiles TO app_reader_{u};
CREATE FUNCTION public.handle_new_user() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN INSERT INTO public.profiles (id, username) VALUES (NEW.id, NEW.email); RETURN NEW; END $$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users
  FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();
INSERT INTO auth.users
  SELECT gen_random_uuid(), 'user' || g || '@example.invalid', '{{"plan":"pro"}}'
  FROM generate_series(1, 40) g;
INSERT INTO storage.buckets VALUES ('avatars', 'avatars', true);
INSERT INTO storage.objects SELECT gen_random_uuid(), 'avatars', 'a' || g || '.png', id
  FROM (SELECT id, row_number() OVER () g FROM auth.users) u;
"""


def public_schema(pg: PgServer, db: str) -> str:
    out = pg.tool("pg_dump", "--schema-only", "-n", "public", "-d", db)
    return "".join(ln for ln in out.splitlines(True) if not ln.startswith("\\"))


def counts(pg: PgServer, db: str) -> dict[str, str]:
    out = {}
    for t in ("auth.users", "storage.buckets", "storage.objects", "public.profiles",
              "auth.schema_migrations", "storage.migrations"):  # fmt: skip
        out[t] = pg.psql(db, f"SELECT count(*) FROM {t};").strip()
    return out


def test_supabase_flavor_roundtrip(pg: PgServer, uniq: str, keys, tmp_path: Path) -> None:
    for role in RESERVED:
        if not role_exists(pg, role):
            pg.psql("postgres", f"CREATE ROLE {role} NOLOGIN;")
    pg.psql("postgres", f"CREATE ROLE app_reader_{uniq} LOGIN;")
    src, dst = f"sb_src_{uniq}", f"sb_dst_{uniq}"
    for db in (src, dst):
        pg.psql("postgres", f"CREATE DATABASE {db};")
        pg.psql(db, SUPABASE_BASE)
    pg.psql(src, USER_DATA.format(u=uniq))
    before = counts(pg, src)
    schema_before = public_schema(pg, src)
    assert before["public.profiles"] == "40"  # the trigger filled it from auth.users
    policy = write_policy(
        tmp_path / "droplet.toml", "droplet", {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "postgres", "name": "supabase", "flavor": "supabase", "database": src,
          "host": "127.0.0.1", "port": pg.port, "user": "postgres"}],
    )  # fmt: skip
    drkit("backup", "--policy", str(policy), check=True)
    # The app's role is gone too (and with it its grant in the source database).
    pg.psql(src, f"DROP OWNED BY app_reader_{uniq};")
    pg.psql("postgres", f"DROP ROLE app_reader_{uniq};")

    res = drkit("restore", "--yes", "--policy", str(policy), "--database", dst,
                "--identity", str(keys.identity_file))  # fmt: skip
    assert res.returncode == 0, res.output
    assert "permission denied" not in res.output and "already exists" not in res.output
    after = counts(pg, dst)
    # Users, buckets, objects and profiles came back; the fresh instance's own
    # migration tables were not overwritten by the backup's.
    for t in ("auth.users", "storage.buckets", "storage.objects", "public.profiles"):
        assert after[t] == before[t], t
    assert after["auth.schema_migrations"] == "1" and after["storage.migrations"] == "1"
    assert role_exists(pg, f"app_reader_{uniq}")
    emails = "SELECT string_agg(email, ',' ORDER BY email) FROM auth.users;"
    assert pg.psql(dst, emails) == pg.psql(src, emails)

    # The schema (policy, trigger, grants) is the user's, identical.
    assert public_schema(pg, dst) == schema_before
    # A second restore onto the now-populated database is refused without --force.
    again = drkit("restore", "--yes", "--policy", str(policy), "--database", dst,
                  "--identity", str(keys.identity_file))  # fmt: skip
    assert again.returncode == 1 and "--force" in again.stderr
