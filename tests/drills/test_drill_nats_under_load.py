"""Issue 17 acceptance: a NATS snapshot taken under load restores onto a fresh server and
its drill passes.

A container of the conversational-platform drill image is seeded as seed 001 describes
the box (tests/seeded/conversational.py: CONVERSATIONS with its purged history, a
deleted message and two durable consumers; config/.env, the compose file, Caddy), plus
what a busy platform adds: CONVERSATIONS grown to ~40 MB, a second file stream EVENTS
with a durable consumer ``indexer``, and a KV bucket ``sessions`` (history 5). While
``drkit backup`` runs over SSH with the shipped policy, a publisher writes at a steady
rate to CONVERSATIONS and EVENTS, updates KV keys and fetches and acks through the
``api-worker`` and ``indexer`` consumers (tests/seeded/conversational.py
``platform_publisher``). Then, side by side:

- ``drkit restore --target`` onto a FRESH container of the image (no --force) passes;
  there every stream holds at least the state the snapshot recorded and never more
  than the source had, every restored message is the source's at the same sequence,
  each KV key holds the newest value up to the restored sequence, and the consumers
  come back with their config and an ack floor from the backup's time span;
- ``drkit drill --host conversational-platform`` with the shipped drill file passes:
  every stream check passes with the at-least comparison, and the streams written
  during their snapshot report the surplus (``N message(s) more than recorded``).

Marked ``drills`` (tests/conftest.py DRILL_SUITES): `make drills`.
"""

from __future__ import annotations

import json
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_shipped_vultr import checks_by_name, engine, not_passed, snapshot_facts
from tests.helpers import drkit
from tests.seeded.containers import host_containers, ssh_login, write_known_hosts
from tests.seeded.conversational import (
    HOST,
    STREAM,
    USER,
    consumer_floors,
    grow_platform,
    kv_latest,
    platform_publisher,
    read_stream,
    seed_conversational,
    stream_states,
)
from tests.seeded.policy import DRILLS, encryption_files, shipped_policy, ssh_connection
from tests.seeded.scenario import TARGET_PREFIX, Phases

__all__ = ["engine"]  # the Docker engine fixture, shared with the drill tests

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

STREAMS = (STREAM, "EVENTS", "KV_sessions")
CONSUMERS = ((STREAM, "api-worker"), ("EVENTS", "indexer"))
SURPLUS = re.compile(r"(\d+) message\(s\) more than recorded")


def test_nats_snapshot_under_load_restores_onto_a_fresh_server_and_drills(
    engine: None, keys: Any, tmp_path: Path
) -> None:
    phases = Phases("test_drill_nats_under_load")
    token = "test-" + secrets.token_hex(16)
    login = ssh_login(tmp_path / "ssh")
    target_name = TARGET_PREFIX + HOST
    box_env = {"DRKIT_NATS_ARGS": f"--auth {token}"}
    with host_containers(HOST, [HOST, target_name], login, user=USER, env=box_env) as boxes:
        source = boxes[HOST]
        phases.mark("source container")
        seed_conversational(source, token)
        grow_platform(source, token)
        phases.mark("seed")

        policies = tmp_path / "policies"
        known = write_known_hosts(tmp_path / "known_hosts", source)
        policy = shipped_policy(
            HOST, policies,
            connection=ssh_connection(source.port(22), login.identity, known, user=USER),
            repository={"url": (tmp_path / "repo").as_uri()},
            encryption=encryption_files(tmp_path, HOST, keys.recipient),
        )  # fmt: skip
        env = {"NATS_TOKEN": token, "DRKIT_POLICY_DIR": str(policies)}
        ident = ["--identity", str(keys.identity_file)]
        before = consumer_floors(source, token, CONSUMERS)
        publisher = platform_publisher(source, token)
        backup = publisher.during(lambda: drkit("backup", "--host", HOST, env=env))
        assert backup.returncode == 0, backup.output
        rate = publisher.rate
        assert rate > 100, f"the publisher managed only {rate:.0f} msg/s"
        phases.mark("backup under load")
        after = consumer_floors(source, token, CONSUMERS)
        states = stream_states(source, token, STREAMS)
        messages = {name: read_stream(source, token, name) for name in STREAMS}
        boxes.remove(HOST)
        facts = snapshot_facts(policy, keys.identity_file)["jetstream"]
        recorded = {s["name"]: s for s in facts["streams"]}
        assert sorted(recorded) == sorted(STREAMS), facts["streams"]
        for name in STREAMS:  # the snapshot started while the publisher wrote
            assert recorded[name]["last_seq"] <= states[name][2], name
        assert recorded[STREAM]["last_seq"] < states[STREAM][2], "nothing written after"
        phases.mark("source read")

        with ThreadPoolExecutor(1) as pool:
            drill_run = pool.submit(
                drkit, "drill", "--host", HOST, "--drills-dir", str(DRILLS), *ident, "--json",
                env=env,
            )  # fmt: skip
            target = boxes[target_name]
            restored = drkit(
                "restore", "--host", HOST,
                "--target", f"ssh://{USER}@127.0.0.1:{target.port(22)}",
                "--target-identity", str(login.identity),
                "--target-known-hosts", str(tmp_path / "target_known_hosts"),
                "--accept-new-host-key", *ident, "--yes", "--json", env=env,
            )  # fmt: skip
            phases.mark("restore")
            assert restored.returncode == 0, restored.output
            report = json.loads(restored.stdout)
            assert report["verdict"] == "pass", not_passed(report)
            got = stream_states(target, token, STREAMS)
            for name in STREAMS:
                n, first, last = got[name]
                rec = recorded[name]
                assert n >= rec["messages"] and last >= rec["last_seq"], (name, got, rec)
                assert last <= states[name][2], (name, got[name], states[name])
                restored_msgs = read_stream(target, token, name)
                assert n == len(restored_msgs) and first == min(restored_msgs), name
                for seq, msg in restored_msgs.items():
                    if seq in messages[name]:
                        assert messages[name][seq] == msg, (name, seq)
                    else:  # a KV revision the live bucket's history dropped since
                        newer = [s for s, m in messages[name].items() if m[0] == msg[0]]
                        assert name == "KV_sessions" and seq < min(newer), (name, seq)
                assert {s for s in messages[name] if s <= last} <= set(restored_msgs), name
            kv_live, kv_last = messages["KV_sessions"], got["KV_sessions"][2]
            latest = {subject: data for seq, (subject, data, _h) in sorted(kv_live.items())
                      if seq <= kv_last}  # fmt: skip
            assert kv_latest(target, token, sorted(latest)) == latest
            floors = consumer_floors(target, token, CONSUMERS)
            for key, (floor, delivered) in floors.items():
                assert before[key][0] <= floor <= after[key][0], (key, floors, before, after)
                assert before[key][1] <= delivered <= after[key][1], key
            phases.mark("restore checks")
            boxes.remove(target_name)
            drill = drill_run.result()
        phases.mark("drill (waited)")

    assert drill.returncode == 0, drill.output
    drilled = json.loads(drill.stdout)["drills"][0]
    assert drilled["verdict"] == "pass", not_passed(drilled) or drill.output
    checks = checks_by_name(drilled)
    surplus = {}
    for name in STREAMS:
        status, detail = checks[("jetstream", f"stream {name}")]
        assert status == "pass", (name, detail)
        m = SURPLUS.search(detail)
        if m:
            surplus[name] = int(m.group(1))
    # Streams written throughout their snapshot came back with what the snapshot held
    # beyond the recorded state, and the drill says how much.
    assert surplus, [checks[("jetstream", f"stream {n}")] for n in STREAMS]
    for name in ("NATS is healthy", f"stream {STREAM} is served"):
        assert checks[("drill", name)][0] == "pass", (name, drilled["checks"])
    print(f"\npublisher {rate:.0f} msg/s; surplus in the drill: {surplus}; {phases.report()}")
