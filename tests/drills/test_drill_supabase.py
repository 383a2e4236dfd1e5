"""`drkit drill` of a Supabase database in the e2i-droplet image, a fresh self-hosted Supabase.

A database built like tests/e2e/test_supabase.py's (user objects in public, a trigger on
auth.users, policies on storage.objects, revoked and hardened privileges, login roles with
passwords, materialized views) is backed up with flavor = "supabase", then drilled with the
shipped drill file's checks plus some of the test's own: the drill restores into the
image's PostgreSQL, which docker/hosts/e2i-droplet/supabase/*.sql initialised at build time
(the same files tests/servers/supabase.py runs), as onto a fresh self-hosted Supabase.

A restore cannot widen access by itself: it sets every privilege to the backup's in the
same transaction as the load. So the negative drills the same backup in an image whose
Supabase differs from a fresh one where a restore does not reach: `anon` made a member of
`service_role` (reserved roles are the target's), an event trigger that grants `anon`
SELECT on public's tables whenever a REVOKE runs (target-side code granting as DDL runs,
as Supabase's own event triggers do when an extension's schema appears), and a grant on
auth.users that the restore must undo. The privilege check and the drill file's checks
must fail naming what widened, and the reset must still have undone the grant on
auth.users.

Needs a Docker engine (scripts/docker-setup.sh); skipped off CI without one. Part of
`make drills` (tests/conftest.py DRILL_SUITES), not `make test`.
"""

from __future__ import annotations

import base64
import json
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.drills.test_drill import engine  # noqa: F401 (the Docker engine fixture)
from tests.drills.test_drill_all import ssh_connection
from tests.e2e.test_supabase import USER_SQL
from tests.helpers import drkit, toml_value, write_policy
from tests.servers.postgres import PgServer
from tests.servers.supabase import supabase_server

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "restore_drills" / "e2i-droplet.toml"
HOST = "e2i-droplet"

# test_supabase's user objects without its tuned reserved role: a reserved role's setting
# that differs from the target's is a warning by design (the target's Supabase owns it).
TUNED = "ALTER ROLE authenticated SET statement_timeout = '15s';\n"
DRILL_SQL = USER_SQL.replace(TUNED, "")

# The test's own checks on the restored user objects (the drill file's [[sql]]).
OWN_SQL = [
    ("anon cannot read public.audit_log",
     "SELECT has_table_privilege('anon', 'public.audit_log', 'SELECT')", "f"),
    ("anon cannot run public.purge_audit()",
     "SELECT has_function_privilege('anon', 'public.purge_audit()', 'EXECUTE')", "f"),
    ("materialized views were refreshed in order",
     "SELECT summary FROM public.plan_summary", "free:27,pro:13"),
    ("messages are published to Realtime",
     "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'supabase_realtime' "
     "AND tablename = 'messages'", "1"),
    ("sign-ups still create profiles",
     "SELECT count(*) FROM pg_trigger WHERE tgname = 'on_auth_user_created' "
     "AND tgrelid = 'auth.users'::regclass", "1"),
]  # fmt: skip
# A restored login role logs in with its old password (scram over TCP, in the container).
LOGIN = ["psql", "-X", "-At", "postgresql://e2i_api:api-secret-1@127.0.0.1:5432/postgres",
         "-c", "SELECT current_user"]  # fmt: skip

# Where the negative's Supabase differs from a fresh one (run as its superuser at build).
DRIFT_SQL = """
GRANT service_role TO anon;
GRANT SELECT ON auth.users TO anon;
CREATE FUNCTION extensions.regrant_api() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO anon'; END $$;
CREATE EVENT TRIGGER regrant_api ON ddl_command_end WHEN TAG IN ('REVOKE')
  EXECUTE FUNCTION extensions.regrant_api();
"""


@pytest.fixture(scope="module")
def image(engine: None) -> str:  # noqa: F811 (the fixture)
    """The e2i-droplet image, built here at most once (the drill then finds it cached)."""
    from drkit.drills.images import ensure_base_image, ensure_host_image

    return ensure_host_image(HOST, base_tag=ensure_base_image().tag).tag


@pytest.fixture(scope="module")
def source() -> Iterator[PgServer]:
    with supabase_server() as server:
        server.psql("postgres", DRILL_SQL)
        yield server


@pytest.fixture
def backed_up(source: PgServer, keys: Any, tmp_path: Path) -> tuple[Path, Path]:
    """A backup of the source (local connection); returns (drilled policy, drills dir).

    The drilled policy describes the host as the shipped one does: reached over SSH as
    enunez, who restores through sudo -u postgres in the container."""
    repo = {"url": (tmp_path / "repo").as_uri()}
    sources = [{"kind": "postgres", "name": "supabase", "flavor": "supabase",
                "database": "postgres", "host": "127.0.0.1", "port": source.port,
                "user": "postgres"}]  # fmt: skip
    backup = write_policy(tmp_path / "backup.toml", HOST, repo, [keys.recipient], sources)
    drilled = write_policy(
        tmp_path / "drilled.toml", HOST, repo, [keys.recipient], sources, ssh_connection("enunez")
    )
    drkit("backup", "--policy", str(backup), check=True)
    drills = tmp_path / "drills"
    drills.mkdir()
    (drills / f"{HOST}.toml").write_text(drill_file())
    return drilled, drills


def drill_file() -> str:
    """The shipped drill file's image and [[sql]] checks (its certbot check needs a certbot
    source), the test's own [[sql]] checks and the password login."""
    shipped = tomllib.loads(SHIPPED.read_text())
    lines = [f'host = "{HOST}"', f"image = {toml_value(shipped['image'])}"]
    checks = [(s["name"], s["query"], s["expect"]) for s in shipped["sql"]] + OWN_SQL
    for name, query, expect in checks:
        lines += ["[[sql]]", f"name = {toml_value(name)}", 'source = "supabase"',
                  f"query = {toml_value(query)}", f"expect = {toml_value(expect)}"]  # fmt: skip
    lines += ["[[command]]", 'name = "e2i_api logs in with its password"',
              f"run = {toml_value(LOGIN)}", 'contains = "e2i_api"']  # fmt: skip
    return "\n".join(lines) + "\n"


def run_drill(drilled: Path, drills: Path, keys: Any, env: dict[str, str] | None = None
              ) -> tuple[int, dict[str, Any], dict[tuple[str, str], dict[str, Any]]]:  # fmt: skip
    res = drkit("drill", "--policy", str(drilled), "--drills-dir", str(drills),
                "--identity", str(keys.identity_file), "--json", env=env)  # fmt: skip
    assert res.stdout, res.output
    [report] = json.loads(res.stdout)["drills"]
    checks = {(c["source"], c["name"]): c for c in report["checks"]}
    return res.returncode, report, checks


def test_supabase_drill_passes_with_privileges_exact(
    image: str, backed_up: tuple[Path, Path], keys: Any
) -> None:
    drilled, drills = backed_up
    rc, report, checks = run_drill(drilled, drills, keys)
    assert (rc, report["verdict"], report["error"]) == (0, "pass", None), json.dumps(
        report, indent=1
    )
    assert report["image"] == image and report["image_built"] is False
    statuses = {k: c["status"] for k, c in checks.items()}
    assert set(statuses.values()) == {"pass"}, statuses
    privileges = checks[("supabase", "privileges in postgres")]
    assert privileges["detail"].endswith("equal the source's"), privileges
    for name in ("objects in postgres", "row counts in postgres", "role settings"):
        assert ("supabase", name) in checks, sorted(checks)
    shipped = tomllib.loads(SHIPPED.read_text())
    for name in [s["name"] for s in shipped["sql"]] + [c[0] for c in OWN_SQL]:
        assert statuses[("drill", name)] == "pass", name
    assert statuses[("drill", "e2i_api logs in with its password")] == "pass"


def drifted_docker_dir(tmp: Path, image: str) -> Path:
    """A docker/ whose e2i-droplet image is the real one plus DRIFT_SQL (one RUN on top)."""
    docker = tmp / "docker"
    shutil.copytree(ROOT / "docker" / "base", docker / "base")
    shutil.copytree(ROOT / "docker" / "hosts" / "common", docker / "hosts" / "common")
    (docker / "hosts" / HOST).mkdir()
    sql = base64.b64encode(DRIFT_SQL.encode()).decode()
    (docker / "hosts" / HOST / "Dockerfile").write_text(
        f"ARG BASE\nFROM {image}\n"
        "RUN set -eux; pg_ctlcluster 15 main start; "
        f"echo {sql} | base64 -d | runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "
        "--single-transaction -d postgres; pg_ctlcluster 15 main stop\n"
    )
    return docker


def test_supabase_drill_fails_naming_access_widened_by_the_target(
    image: str,
    backed_up: tuple[Path, Path],
    keys: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from drkit.drills.engine import docker
    from drkit.drills.images import ensure_base_image, ensure_host_image

    drilled, drills = backed_up
    monkeypatch.setenv("DRKIT_DOCKER_DIR", str(drifted_docker_dir(tmp_path, image)))
    drifted = ensure_host_image(HOST, base_tag=ensure_base_image().tag).tag
    try:
        rc, report, checks = run_drill(drilled, drills, keys)  # the drill finds it built
    finally:  # the drifted image is this test's alone
        docker("image", "rm", "--force", drifted, check=False, timeout=300)
    assert (rc, report["verdict"]) == (4, "fail"), json.dumps(report, indent=1)
    assert (report["error"], report["image"]) == (None, drifted)
    # The source's own check names the table whose access widened after the reset.
    privileges = checks[("supabase", "privileges in postgres")]
    assert privileges["status"] == "fail"
    assert (
        'WIDER than the source\'s: table "public"."audit_log" (anon: SELECT)'
        in (privileges["detail"])
    )
    # ... while the target's own grant on auth.users was undone by the reset.
    assert '"auth"."users"' not in privileges["detail"]
    assert checks[("drill", "anon cannot read auth.users")]["status"] == "pass"
    # Access no ACL shows: the drill file's check on the reserved roles' memberships.
    member = checks[("drill", "Supabase API roles are members of no other role")]
    assert (member["status"], member["detail"]) == ("fail", "got '1', expected '0'")
    assert checks[("drill", "anon cannot read public.audit_log")]["status"] == "fail"
    # Everything else came back as in the passing drill.
    for name in ("objects in postgres", "row counts in postgres"):
        assert checks[("supabase", name)]["status"] == "pass", checks[("supabase", name)]
