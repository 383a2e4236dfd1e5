"""Which sources make a drill run a Docker engine inside its container (no engine needed):
the shipped seed policies, and each kind of Docker-backed source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drkit.drills.nested import describe, engine_sources
from drkit.policy.loader import load_policy, parse_policy, read_toml
from drkit.policy.models import Policy

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def policy(*sources: dict[str, Any]) -> Policy:
    """The shipped vultr policy with ``sources`` instead of its own."""
    data = read_toml(POLICIES / "vultr.toml")
    return parse_policy({**data, "source": list(sources)}, "test")


def test_seed_policies() -> None:
    e2i = engine_sources(load_policy(POLICIES / "e2i-droplet.toml"))
    assert set(e2i) == {"falkordb", "opik-mysql"}, e2i
    assert engine_sources(load_policy(POLICIES / "e2i-droplet.toml"), skip=["falkordb"]).keys() == {
        "opik-mysql"
    }
    # vultr runs nothing in Docker; conversational-platform's NATS is read through its
    # client port (mode = "snapshot"), which needs no engine even with container set.
    assert engine_sources(load_policy(POLICIES / "vultr.toml")) == {}
    assert engine_sources(load_policy(POLICIES / "conversational-platform.toml")) == {}


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ({"kind": "docker_volume", "name": "v", "volume": "data"}, "docker_volume source"),
        (
            {"kind": "nats", "name": "n", "mode": "stop-copy", "container": "nats",
             "store_dir": "/data/jetstream"},
            "nats stop-copy stops its container",
        ),
        ({"kind": "postgres", "name": "p", "database": "app", "container": "db"},
         "runs in container db"),
        ({"kind": "command", "name": "c", "command": ["cat", "/x"],
          "restore_command": ["/usr/bin/docker", "exec", "-i", "app", "load"]},
         "its command runs docker"),
    ],
)  # fmt: skip
def test_docker_backed_kinds(source: dict[str, Any], why: str) -> None:
    plain = {"kind": "files", "name": "etc", "paths": ["/etc"]}
    needs = engine_sources(policy(plain, source))
    assert needs == {source["name"]: why}
    assert describe(needs) == f"{source['name']} ({why})"
    assert engine_sources(policy(plain, source), skip=[source["name"]]) == {}


def test_sources_without_docker_need_no_engine() -> None:
    assert (
        engine_sources(
            policy(
                {
                    "kind": "command",
                    "name": "c",
                    "command": ["pg_dumpall"],
                    "restore_command": ["psql"],
                },
                {"kind": "nats", "name": "n"},
                {"kind": "postgres", "name": "p", "database": "app"},
            )
        )
        == {}
    )
