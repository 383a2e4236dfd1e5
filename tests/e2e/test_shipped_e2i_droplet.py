"""Issue 15 item 4 for e2i-droplet: the shipped policy, a seeded host, a restore that
serves, as far as the drill image allows.

A container of the e2i-droplet drill image is seeded as seed 002 describes the box
(tests/seeded/e2i.py: Supabase's PostgreSQL on 5433 with user objects, nginx serving
the e2i-app site over HTTPS with a certbot lineage, the app's env files, venv, units,
compose files and firewall rules). It is backed up over SSH as enunez with
``policies/e2i-droplet.toml`` as shipped but for ``[connection]``, ``[repository]``
and ``[encryption]``.

The image runs a Docker engine of its own (docker/hosts/e2i-droplet: started because
the image is labelled for it, and in the drill because the policy has sources that
need it), with the host's containers ``e2i_falkordb`` and ``opik-mysql-1`` (stand-ins
from Debian: Redis and MariaDB). So seven of the policy's eight sources are backed up
and restored; ``do-snapshot`` asks DigitalOcean's API (no network here; a restore
never replays it anyway), so the backup and the restore take the seven (``--only``):

- the snapshot's facts hold the seven sources and the lineage, consistent, with the
  certificate's fingerprint; the env files' key names; the nginx site; the venv
  without its __pycache__;
- ``drkit restore --target ssh://enunez@...`` onto a FRESH container of the image
  (a fresh self-hosted Supabase on 5432 with its postgres password set, Debian's
  nginx with its default site, empty FalkorDB and MySQL containers; no --force;
  ``--pg-port 5432``) passes, with drkit's own ``nginx reloaded`` and ``https
  eznomics.invalid`` checks passing: nginx serves the SAME certificate (openssl
  s_client inside the container), routes /health (502: no API in the image) and
  blocks /.env, certbot finds the lineage valid, the env files are back byte for byte
  with their modes, the Supabase user objects with their privileges (the Supabase
  drill's own checks) and e2i_api's password login, and FalkorDB's keys and Opik's
  rows and stored procedure are those of the seeded host;
- ``drkit drill --host e2i-droplet`` with the shipped drill file restores all seven
  into its own container (with its own engine) and every check passes, the FalkorDB
  and Opik MySQL ones included: verdict ``pass``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from drkit.drills.container import HostContainer
from tests.drills.test_drill_supabase import LOGIN, OWN_SQL
from tests.e2e.test_shipped_vultr import checks_by_name, engine, env_state
from tests.e2e.test_vultr_acceptance import key_names
from tests.helpers import CliResult
from tests.seeded.e2i import (
    BACKED_UP,
    DOMAIN,
    FALKORDB_KEYS,
    HOST,
    NOT_IN_IMAGE,
    USER,
    E2iSeed,
    container_data,
    expected_serving,
    seed_e2i,
    serving,
    set_postgres_password,
    sql,
)
from tests.seeded.scenario import Phases, passed_report, run_scenario

__all__ = ["engine"]  # the Docker engine fixture, shared with the drill tests

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

TARGET_PG_PORT = 5432  # the image's Supabase (the live host's is on 5433)


def test_shipped_e2i_policy_backs_up_a_seeded_host_and_restores_what_the_image_allows(
    engine: None, keys: Any, tmp_path: Path
) -> None:
    phases = Phases("test_shipped_e2i_droplet")
    password = "test-" + secrets.token_hex(12)  # postgres's, on the host and the fresh one
    seeded: list[E2iSeed] = []
    drill = run_scenario(
        HOST,
        tmp_path,
        keys,
        phases,
        seed=lambda box: seeded.append(seed_e2i(box, password)),
        check_facts=lambda facts: assert_facts(facts, seeded[0]),
        check_target=lambda res, target: assert_restored(res, target, seeded[0]),
        user=USER,
        env={"E2I_SUPABASE_DB_PASSWORD": password},
        package_defaults=(("/etc/nginx/nginx.conf", "nginx-common"),),
        only=BACKED_UP,
        prepare_target=lambda target: set_postgres_password(target, password, TARGET_PG_PORT),
        restore_args=("--pg-port", str(TARGET_PG_PORT)),
    )
    assert_drill_passes_with_the_containers(drill)
    print("\n" + phases.report())


def assert_facts(facts: dict[str, Any], seed: E2iSeed) -> None:
    assert set(BACKED_UP) <= set(facts) and not set(NOT_IN_IMAGE) & set(facts), sorted(facts)
    assert seed.containers["falkordb"] == FALKORDB_KEYS, seed.containers
    [lineage] = facts["certbot"]["lineages"]
    assert lineage["name"] == DOMAIN and lineage["consistent"], lineage
    assert lineage["sha256"] == seed.fingerprint and not lineage["warnings"], lineage
    env_files = {"/" + f["path"].lstrip("/"): f for f in facts["env"]["env_files"]}
    assert set(env_files) == set(seed.files)
    for path, content in seed.files.items():
        assert env_files[path]["keys"] == key_names(content), path
    config = {"/" + e["path"].lstrip("/") for e in facts["host-config"]["entries"]}
    assert {"/etc/nginx/sites-available/e2i-app", "/etc/iptables/rules.v4"} <= config
    venv = {"/" + e["path"].lstrip("/") for e in facts["venv"]["entries"]}
    assert any(p.endswith("copilotkit/__init__.py") for p in venv), venv
    assert not any("__pycache__" in p for p in venv), venv


def assert_restored(res: CliResult, target: HostContainer, seed: E2iSeed) -> None:
    report = passed_report(res, drill=False)
    checks = checks_by_name(report)
    assert checks[("certbot", "nginx reloaded")][0] == "pass", report["checks"]
    assert checks[("certbot", f"https {DOMAIN}")][0] == "pass", report["checks"]
    assert checks[("certbot", "live symlinks")][0] == "pass", report["checks"]
    assert serving(target) == expected_serving(seed)
    paths = sorted(seed.files)
    owner = f"600 {USER}:{USER}"
    assert env_state(target, paths) == {p: (owner, seed.files[p]) for p in paths}
    for name, query, expect in OWN_SQL:
        assert sql(target, query, TARGET_PG_PORT) == expect, name
    login = target.exec(LOGIN).stdout.decode().strip()
    assert login == "e2i_api", login
    # The venv's interpreter link, allowed out of the tree by the policy's symlinks_to.
    link = target.exec(["readlink", "/opt/e2i_causal_analytics/.venv/bin/python"])
    assert link.stdout.decode().strip() == "/usr/bin/python3"
    # The containers' data, restored with the policy's own docker exec/cp commands.
    assert container_data(target) == seed.containers


def assert_drill_passes_with_the_containers(res: CliResult) -> None:
    report = passed_report(res, drill=True)
    assert report["container"], report
    checks = checks_by_name(report)
    assert checks[("certbot", "nginx reloaded")][0] == "pass", report["checks"]
    assert checks[("certbot", f"https {DOMAIN}")][0] == "pass", report["checks"]
    for name in ("FalkorDB is back with keys", "Opik's MySQL holds the opik schema's tables"):
        assert checks[("drill", name)][0] == "pass", report["checks"]
    assert not [c for c in report["checks"] if c["name"].startswith("not drilled")]
    picked = checks[("drill", "restore point")][1]
    assert all(f"{name} from" in picked for name in BACKED_UP), picked
