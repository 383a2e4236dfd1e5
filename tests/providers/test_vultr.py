"""Vultr through drkit's httpx client against the fake API: requests, cursors, 429/503."""

from __future__ import annotations

import datetime as dt

import pytest

from drkit.actions.provider_snapshot import restore_from_snapshot, take_snapshot
from drkit.providers.base import ProviderError, ProviderTimeout
from tests.providers.conftest import HOST, NOW, RESOURCE, SOURCE, EnvFactory
from tests.providers.fake_vultr import FakeVultr

INSTANCE = RESOURCE["vultr"]
NAME = f"drkit:host={HOST}:source={SOURCE}:20250301T040700Z"


def test_snapshot_is_created_and_polled_until_complete(
    vultr_api: FakeVultr, env_for: EnvFactory, token: str
) -> None:
    env = env_for(vultr_api, "vultr")
    snap = take_snapshot(env.policy, env.source, NOW, connect=env.connect)

    assert (snap.name, snap.status, snap.size_gb) == (NAME, "complete", 25.0)
    assert snap.created is not None
    calls = [(r.method, r.path, r.status) for r in vultr_api.calls()]
    assert calls == [
        ("POST", "/v2/snapshots", 201),
        ("GET", f"/v2/snapshots/{snap.id}", 200),
        ("GET", f"/v2/snapshots/{snap.id}", 200),
        ("GET", f"/v2/snapshots/{snap.id}", 200),
    ]
    assert vultr_api.calls("POST")[0].body == {"instance_id": INSTANCE, "description": NAME}
    assert all(r.headers["authorization"] == f"Bearer {token}" for r in vultr_api.calls())
    assert env.clock.sleeps == [15.0, 15.0]


def test_unknown_instance_is_a_final_error_with_vultrs_message(
    vultr_api: FakeVultr, env_for: EnvFactory
) -> None:
    vultr_api.instances.clear()
    env = env_for(vultr_api, "vultr")
    with pytest.raises(ProviderError) as err:
        take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    assert str(err.value) == (
        f"host {HOST}: source {SOURCE}: vultr instance {INSTANCE}: "
        f"snapshot {NAME}: HTTP 404: Invalid instance-id."
    )
    assert len(vultr_api.calls()) == 1


def test_failed_snapshot_and_timeout_are_named_errors(
    vultr_api: FakeVultr, env_for: EnvFactory
) -> None:
    vultr_api.snapshot_result = "failed"
    env = env_for(vultr_api, "vultr")
    with pytest.raises(ProviderError, match=r"vultr instance .*: snapshot drkit:.*status failed"):
        take_snapshot(env.policy, env.source, NOW, connect=env.connect)

    vultr_api.snapshot_result = "pending"  # a 30-minute snapshot with a 10-minute wait
    env = env_for(vultr_api, "vultr")
    with pytest.raises(ProviderTimeout, match=r"timed out after 10m \(last status: pending\)"):
        take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    assert env.clock.t == pytest.approx(600.0)


def test_429_and_503_are_retried_with_the_delay_asked_or_backoff(
    vultr_api: FakeVultr, env_for: EnvFactory
) -> None:
    env = env_for(vultr_api, "vultr")
    vultr_api.inject(
        (429, {"Retry-After": "3"}, {"error": "Rate limit exceeded", "status": 429}),
        (503, {}, {"error": "Service Unavailable", "status": 503}),
    )
    snap = take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    assert snap.status == "complete"
    posts = vultr_api.calls("POST")
    assert [r.status for r in posts] == [429, 503, 201]
    assert len(vultr_api.snapshots) == 1  # refused requests created nothing
    assert env.clock.sleeps[:2] == [3.0, 2.0]  # Retry-After, then backoff base * 2^1


def test_list_follows_cursors_until_next_is_empty(
    vultr_api: FakeVultr, env_for: EnvFactory
) -> None:
    names = [f"drkit:host={HOST}:source={SOURCE}:2025020{d}T040700Z" for d in range(1, 4)]
    for i, name in enumerate([*names, "hand-made", "drkit:host=other:source=x:20250101T000000Z"]):
        vultr_api.add_snapshot(name, NOW - dt.timedelta(days=10 - i))
    provider = env_for(vultr_api, "vultr").provider()

    assert len(provider.list_all()) == 5
    assert [s.name for s in provider.list_snapshots()] == names  # oldest first
    lists = vultr_api.calls("GET", "/v2/snapshots")
    assert [r.q("per_page") for r in lists] == ["100"] * 6
    cursors = [r.q("cursor") for r in lists[:3]]
    assert cursors[0] is None and cursors[1] and cursors[2] and cursors[1] != cursors[2]


def test_delete_and_its_404(vultr_api: FakeVultr, env_for: EnvFactory) -> None:
    sid = vultr_api.add_snapshot("x", NOW)
    provider = env_for(vultr_api, "vultr").provider()
    provider.delete(sid)
    with pytest.raises(ProviderError, match=f"delete snapshot {sid}: HTTP 404: Snapshot not found"):
        provider.delete(sid)
    assert [(r.method, r.path) for r in vultr_api.calls()] == [
        ("DELETE", f"/v2/snapshots/{sid}")
    ] * 2


def test_restore_creates_an_instance_and_waits_for_its_address(
    vultr_api: FakeVultr, env_for: EnvFactory
) -> None:
    sid = vultr_api.add_snapshot(NAME, NOW)
    env = env_for(vultr_api, "vultr")
    with pytest.raises(ProviderError, match="restore: snapshot 0000 not found"):
        restore_from_snapshot(
            env.policy, env.source, "0000", "ams", "vc2-2c-4gb", yes=True, connect=env.connect
        )
    done = restore_from_snapshot(
        env.policy, env.source, sid, "ams", "vc2-2c-4gb", yes=True, connect=env.connect, now=NOW
    )
    assert done.instance is not None
    assert (done.instance.address, done.instance.status) == ("192.0.2.77", "active")
    body = vultr_api.calls("POST", "/v2/instances")[0].body
    assert body == {
        "region": "ams",
        "plan": "vc2-2c-4gb",
        "snapshot_id": sid,
        "label": "web-restore-20250301-040700",
    }
    # main_ip was 0.0.0.0 on the first look: drkit waited for the real address.
    assert [r.status for r in vultr_api.calls("GET", f"/v2/instances/{done.instance.id}")] == [
        200,
        200,
    ]
