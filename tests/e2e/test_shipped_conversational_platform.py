"""Issue 15 item 4 for conversational-platform: the shipped policy, a seeded host, a
restore that serves, a drill that passes.

A container of the conversational-platform drill image is seeded as seed 001
describes the box (tests/seeded/conversational.py: NATS JetStream with token auth
holding CONVERSATIONS and two durable consumers, the platform's config/.env and
compose file owned by the docker user, Caddy serving the API domain with its
certificate). It is backed up over SSH as ``docker`` (root login is disabled there)
with ``policies/conversational-platform.toml`` as shipped but for ``[connection]``,
``[repository]`` and ``[encryption]``; the policy's ``env:NATS_TOKEN`` is the
token, exported for drkit as an operator would. Then (tests/seeded/scenario.py):

- the snapshot's facts hold the stream's state, config/.env's key names, the
  config files and the certificate with its fingerprint;
- ``drkit restore --target ssh://docker@...`` onto a FRESH container of the image
  (as the bootstrap leaves a host; its NATS started with the same token, nothing in
  JetStream; no --force) passes, and the fresh host then holds CONVERSATIONS with
  the same messages and sequences and both consumers with the same delivered
  sequence, ack floor and pending counts, the config files byte for byte and owned
  by docker, NATS healthy, and HTTPS for the API domain with the SAME certificate;
- ``drkit drill --host conversational-platform`` with the shipped drill file passes:
  the stream check (with both consumers), NATS /healthz, the stream listed by the
  monitoring endpoint, config/.env's keys, the compose file, the Caddyfile and the
  site's certificate probe.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from drkit.drills.container import HostContainer
from tests.e2e.test_shipped_vultr import checks_by_name, engine, env_state
from tests.e2e.test_vultr_acceptance import key_names
from tests.helpers import CliResult
from tests.seeded.conversational import (
    DOMAIN,
    ENV_FILE,
    HOST,
    STREAM,
    USER,
    ConversationalSeed,
    expected_serving,
    jetstream_state,
    seed_conversational,
    serving,
)
from tests.seeded.scenario import Phases, assert_caddy_facts, passed_report, run_scenario

__all__ = ["engine"]  # the Docker engine fixture, shared with the drill tests

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


def test_shipped_conversational_policy_backs_up_a_seeded_host_restores_and_drills_it(
    engine: None, keys: Any, tmp_path: Path
) -> None:
    phases = Phases("test_shipped_conversational_platform")
    token = "test-" + secrets.token_hex(16)
    seeded: list[ConversationalSeed] = []
    drill = run_scenario(
        HOST,
        tmp_path,
        keys,
        phases,
        seed=lambda box: seeded.append(seed_conversational(box, token)),
        check_facts=lambda facts: assert_facts(facts, seeded[0]),
        check_target=lambda res, target: assert_restored(res, target, seeded[0]),
        user=USER,
        box_env={"DRKIT_NATS_ARGS": f"--auth {token}"},
        env={"NATS_TOKEN": token},
    )
    assert_drill(drill, seeded[0])
    print("\n" + phases.report())


def assert_facts(facts: dict[str, Any], seed: ConversationalSeed) -> None:
    [stream] = facts["jetstream"]["streams"]
    assert stream["name"] == STREAM and stream["storage"] == "file", stream
    assert {k: stream[k] for k in seed.stream} == seed.stream, stream
    env_files = {"/" + f["path"].lstrip("/"): f for f in facts["env"]["env_files"]}
    assert list(env_files) == [ENV_FILE]
    assert env_files[ENV_FILE]["keys"] == key_names(seed.files[ENV_FILE])
    assert env_files[ENV_FILE]["owner"] == USER
    config = {"/" + e["path"].lstrip("/") for e in facts["platform-config"]["entries"]}
    assert set(seed.files) - {ENV_FILE} <= config and ENV_FILE not in config, config
    assert_caddy_facts(facts["caddy"], seed.fingerprints)


def assert_restored(res: CliResult, target: HostContainer, seed: ConversationalSeed) -> None:
    report = passed_report(res, drill=False)
    checks = checks_by_name(report)
    assert checks[("jetstream", f"stream {STREAM}")][0] == "pass", report["checks"]
    assert checks[("caddy", f"https {DOMAIN}")][0] == "pass", report["checks"]
    assert jetstream_state(target, seed.token) == (seed.stream, seed.consumers)
    paths = sorted(seed.files)
    owner = f"644 {USER}:{USER}"
    assert env_state(target, paths) == {p: (owner, seed.files[p]) for p in paths}
    assert serving(target) == expected_serving(seed)


def assert_drill(res: CliResult, seed: ConversationalSeed) -> None:
    report = passed_report(res, drill=True)
    checks = checks_by_name(report)
    status, detail = checks[("jetstream", f"stream {STREAM}")]
    assert status == "pass" and f"{seed.stream['consumers']} consumer(s)" in detail, detail
    for name in ("NATS is healthy", f"stream {STREAM} is served", "Caddyfile is valid"):
        assert checks[("drill", name)][0] == "pass", (name, report["checks"])
    assert checks[("caddy", f"https {DOMAIN}")][0] == "pass", report["checks"]
