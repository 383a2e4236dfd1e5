-- A fresh self-hosted Supabase, part 1 of 2: the cluster-wide roles every Supabase has
-- (attributes and settings as its public documentation describes them; written from that
-- documentation, not copied from Supabase's init scripts). Run once per server, as a
-- superuser, before database.sql.
--
-- The one source of truth for what "a fresh Supabase" is in drkit's tests and drills:
-- the e2i-droplet drill image runs it at build time (docker/hosts/e2i-droplet/Dockerfile)
-- and tests/servers/supabase.py runs it on the tests' PostgreSQL servers.

CREATE ROLE supabase_admin SUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS LOGIN;
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT PASSWORD 'target-authenticator';
GRANT anon, authenticated, service_role TO authenticator;
CREATE ROLE supabase_auth_admin LOGIN NOINHERIT CREATEROLE;
CREATE ROLE supabase_storage_admin LOGIN NOINHERIT CREATEROLE;
CREATE ROLE supabase_functions_admin LOGIN NOINHERIT CREATEROLE;
CREATE ROLE supabase_realtime_admin NOLOGIN NOINHERIT;
CREATE ROLE supabase_replication_admin LOGIN REPLICATION;
CREATE ROLE supabase_read_only_user LOGIN BYPASSRLS;
GRANT pg_read_all_data TO supabase_read_only_user;
CREATE ROLE dashboard_user CREATEDB CREATEROLE REPLICATION;
CREATE ROLE pgbouncer LOGIN;
ALTER ROLE anon SET statement_timeout = '3s';
ALTER ROLE authenticated SET statement_timeout = '8s';
ALTER ROLE authenticator SET statement_timeout = '8s';
ALTER ROLE supabase_admin SET search_path = public, extensions;
