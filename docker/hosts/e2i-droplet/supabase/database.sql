-- A fresh self-hosted Supabase, part 2 of 2: the base objects of its `postgres` database
-- (run as a superuser after roles.sql; Supabase's own objects belong to supabase_admin or
-- its service admins): the internal schemas with a few of their own tables and functions,
-- the supabase_realtime publication, event triggers, and the default privileges that hand
-- everything created in `public` to the API roles. Enough of each kind that a restore has
-- to merge rather than re-create, and would widen access if it simply re-granted.
-- Used by the e2i-droplet drill image and tests/servers/supabase.py (see roles.sql).

SET ROLE supabase_admin;
CREATE PUBLICATION supabase_realtime;

CREATE SCHEMA extensions;
CREATE EXTENSION pgcrypto WITH SCHEMA extensions;
CREATE EXTENSION "uuid-ossp" WITH SCHEMA extensions;
GRANT USAGE ON SCHEMA extensions TO postgres, anon, authenticated, service_role,
  supabase_auth_admin, supabase_storage_admin;
GRANT ALL ON SCHEMA extensions TO dashboard_user;

-- The API roles get everything created in public, by postgres or by supabase_admin.
GRANT USAGE ON SCHEMA public TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
  GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
  GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
  GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
  GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
  GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
  GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;

-- auth: GoTrue's schema (a few of its tables), owned by its admin role.
CREATE SCHEMA auth AUTHORIZATION supabase_admin;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT ALL ON SCHEMA auth TO supabase_auth_admin, dashboard_user;
SET ROLE supabase_auth_admin;
CREATE TABLE auth.users (
  instance_id uuid, id uuid PRIMARY KEY, aud varchar(255), role varchar(255),
  email varchar(255), encrypted_password varchar(255), email_confirmed_at timestamptz,
  raw_app_meta_data jsonb, raw_user_meta_data jsonb, is_super_admin boolean,
  created_at timestamptz DEFAULT now(), updated_at timestamptz
);
CREATE INDEX users_instance_id_email_idx ON auth.users (instance_id, lower(email));
COMMENT ON TABLE auth.users IS 'Auth: Stores user login data within a secure schema.';
CREATE TABLE auth.refresh_tokens (
  instance_id uuid, id bigserial PRIMARY KEY, token varchar(255), user_id varchar(255),
  revoked boolean, created_at timestamptz, updated_at timestamptz
);
CREATE TABLE auth.audit_log_entries (
  instance_id uuid, id uuid PRIMARY KEY, payload json, created_at timestamptz
);
CREATE TABLE auth.schema_migrations (version varchar(255) PRIMARY KEY);
INSERT INTO auth.schema_migrations VALUES ('20171026211738'), ('20221208132122');
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS
  $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS
  $$ SELECT nullif(current_setting('request.jwt.claim.role', true), '')::text $$;
CREATE FUNCTION auth.email() RETURNS text LANGUAGE sql STABLE AS
  $$ SELECT nullif(current_setting('request.jwt.claim.email', true), '')::text $$;
GRANT ALL ON ALL TABLES IN SCHEMA auth TO dashboard_user;
GRANT ALL ON ALL SEQUENCES IN SCHEMA auth TO dashboard_user;
GRANT EXECUTE ON FUNCTION auth.uid(), auth.role(), auth.email() TO dashboard_user;
RESET ROLE;

-- storage: the storage API's schema.
SET ROLE supabase_admin;
CREATE SCHEMA storage AUTHORIZATION supabase_admin;
GRANT USAGE ON SCHEMA storage TO postgres, anon, authenticated, service_role;
GRANT ALL ON SCHEMA storage TO supabase_storage_admin;
SET ROLE supabase_storage_admin;
CREATE TABLE storage.buckets (
  id text PRIMARY KEY, name text NOT NULL, owner uuid, public boolean DEFAULT false,
  created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now()
);
CREATE UNIQUE INDEX bname ON storage.buckets (name);
CREATE TABLE storage.objects (
  id uuid PRIMARY KEY DEFAULT extensions.gen_random_uuid(),
  bucket_id text REFERENCES storage.buckets (id), name text, owner uuid,
  metadata jsonb, created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now(),
  last_accessed_at timestamptz DEFAULT now()
);
CREATE UNIQUE INDEX bucketid_objname ON storage.objects (bucket_id, name);
CREATE TABLE storage.migrations (
  id integer PRIMARY KEY, name varchar(100) UNIQUE NOT NULL, hash varchar(40) NOT NULL,
  executed_at timestamp DEFAULT current_timestamp
);
INSERT INTO storage.migrations VALUES (0, 'create-migrations-table', 'e18db593', now()),
  (1, 'initialmigration', '6ab16121', now());
ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY;
ALTER TABLE storage.buckets ENABLE ROW LEVEL SECURITY;
ALTER TABLE storage.migrations ENABLE ROW LEVEL SECURITY;
CREATE FUNCTION storage.foldername(name text) RETURNS text[] LANGUAGE plpgsql AS
  $$ DECLARE _parts text[]; BEGIN SELECT string_to_array(name, '/') INTO _parts;
     RETURN _parts[1:array_length(_parts, 1) - 1]; END $$;
CREATE FUNCTION storage.filename(name text) RETURNS text LANGUAGE plpgsql AS
  $$ DECLARE _parts text[]; BEGIN SELECT string_to_array(name, '/') INTO _parts;
     RETURN _parts[array_length(_parts, 1)]; END $$;
CREATE FUNCTION storage.update_updated_at_column() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.updated_at = now(); RETURN NEW; END $$;
CREATE TRIGGER update_objects_updated_at BEFORE UPDATE ON storage.objects
  FOR EACH ROW EXECUTE FUNCTION storage.update_updated_at_column();
GRANT ALL ON storage.buckets, storage.objects TO anon, authenticated, service_role;
GRANT ALL ON storage.migrations TO anon, authenticated, service_role;
RESET ROLE;

-- realtime: its schema and tables (its data is never the user's).
SET ROLE supabase_admin;
CREATE SCHEMA realtime;
GRANT USAGE ON SCHEMA realtime TO postgres, anon, authenticated, service_role;
CREATE TABLE realtime.schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp(0));
CREATE TABLE realtime.subscription (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, subscription_id uuid NOT NULL,
  entity regclass NOT NULL, claims jsonb NOT NULL, created_at timestamp DEFAULT now()
);
INSERT INTO realtime.schema_migrations VALUES (20211116024918, now());
GRANT ALL ON ALL TABLES IN SCHEMA realtime TO supabase_realtime_admin;

CREATE SCHEMA graphql_public;
GRANT USAGE ON SCHEMA graphql_public TO postgres, anon, authenticated, service_role;

-- Event triggers: grants when pg_cron's schema appears; PostgREST schema reloads.
CREATE FUNCTION extensions.grant_pg_cron_access() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() ev
             JOIN pg_namespace n ON ev.objid = n.oid WHERE n.nspname = 'cron') THEN
    EXECUTE 'GRANT USAGE ON SCHEMA cron TO postgres WITH GRANT OPTION';
  END IF;
END $$;
CREATE EVENT TRIGGER issue_pg_cron_access ON ddl_command_end WHEN TAG IN ('CREATE SCHEMA')
  EXECUTE FUNCTION extensions.grant_pg_cron_access();
CREATE FUNCTION extensions.pgrst_ddl_watch() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('pgrst', 'reload schema'); END $$;
CREATE EVENT TRIGGER pgrst_ddl_watch ON ddl_command_end
  EXECUTE FUNCTION extensions.pgrst_ddl_watch();
CREATE FUNCTION extensions.pgrst_drop_watch() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('pgrst', 'reload schema'); END $$;
CREATE EVENT TRIGGER pgrst_drop_watch ON sql_drop
  EXECUTE FUNCTION extensions.pgrst_drop_watch();
RESET ROLE;
