"""Issue 15 item 4 for visualkit-hetzner: the shipped policy, a seeded host, a restore
that serves, a drill that passes.

A container of the visualkit-hetzner drill image is seeded as seed 004 describes the
box (tests/seeded/visualkit.py: Caddy serving its five routes with their
certificates, the compose projects' .env files). It is backed up over SSH with
``policies/visualkit-hetzner.toml`` as shipped but for ``[connection]``,
``[repository]`` and ``[encryption]`` (its docker_volume and other unverified
sources stay commented out), then (tests/seeded/scenario.py):

- the snapshot's facts hold the five certificates and sites with their
  fingerprints, both .env files with their key names, and the app directories
  (``apps``: the compose files, not the .env files);
- ``drkit restore --target`` onto a FRESH container of the same image (Debian's
  default Caddyfile, no /opt projects; no --force) passes with a live probe per
  site, and the fresh host serves like the source: each site over HTTPS with the
  SAME certificate, routed by Caddy (502: the Docker apps are not in the image),
  the .env files and the compose files byte for byte with their modes;
- ``drkit drill --host visualkit-hetzner`` with the shipped drill file passes,
  live probes included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drkit.drills.container import HostContainer
from tests.e2e.test_shipped_vultr import checks_by_name, engine, env_state
from tests.e2e.test_vultr_acceptance import key_names
from tests.helpers import CliResult
from tests.seeded.scenario import Phases, assert_caddy_facts, passed_report, run_scenario
from tests.seeded.visualkit import (
    HOST,
    SITES,
    VisualkitSeed,
    expected_serving,
    seed_visualkit,
    serving,
)

__all__ = ["engine"]  # the Docker engine fixture, shared with the drill tests

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


def test_shipped_visualkit_policy_backs_up_a_seeded_host_restores_and_drills_it(
    engine: None, keys: Any, tmp_path: Path
) -> None:
    phases = Phases("test_shipped_visualkit_hetzner")
    seeded: list[VisualkitSeed] = []

    drill = run_scenario(
        HOST,
        tmp_path,
        keys,
        phases,
        seed=lambda box: seeded.append(seed_visualkit(box)),
        check_facts=lambda facts: assert_facts(facts, seeded[0]),
        check_target=lambda res, target: assert_restored(res, target, seeded[0]),
    )
    assert_drill(drill)
    print("\n" + phases.report())


def assert_facts(facts: dict[str, Any], seed: VisualkitSeed) -> None:
    assert_caddy_facts(facts["caddy"], seed.fingerprints)
    env_files = {"/" + f["path"].lstrip("/"): f for f in facts["env"]["env_files"]}
    assert set(env_files) == set(seed.env_files)
    for path, content in seed.env_files.items():
        assert env_files[path]["keys"] == key_names(content), path
        assert (env_files[path]["mode"], env_files[path]["owner"]) == ("0600", "root"), path
    apps = {"/" + e["path"].lstrip("/") for e in facts["apps"]["entries"]}
    assert set(seed.compose_files) <= apps and not set(seed.env_files) & apps, apps


def assert_restored(res: CliResult, target: HostContainer, seed: VisualkitSeed) -> None:
    report = passed_report(res, drill=False)
    checks = checks_by_name(report)
    for domain in SITES:
        assert checks[("caddy", f"https {domain}")][0] == "pass", (domain, report["checks"])
    paths = sorted(seed.env_files)
    assert env_state(target, paths) == {p: ("600 root:root", seed.env_files[p]) for p in paths}
    compose = sorted(seed.compose_files)
    assert env_state(target, compose) == {
        p: ("644 root:root", seed.compose_files[p]) for p in compose
    }
    assert serving(target) == expected_serving(seed)


def assert_drill(res: CliResult) -> None:
    report = passed_report(res, drill=True)
    checks = checks_by_name(report)
    assert checks[("drill", "Caddyfile is valid")][0] == "pass"
    for domain in SITES:
        assert checks[("caddy", f"https {domain}")][0] == "pass", (domain, report["checks"])
