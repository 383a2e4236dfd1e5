"""Hetzner through hcloud against the fake API: create_image, actions, labels, pages, 429."""

from __future__ import annotations

import datetime as dt

import pytest

from drkit.actions.provider_snapshot import restore_from_snapshot, take_snapshot
from drkit.providers.base import ProviderError, ProviderTimeout
from tests.providers.conftest import HOST, NOW, RESOURCE, SOURCE, EnvFactory
from tests.providers.fake_hetzner import FakeHetzner, rate_limited

SERVER = RESOURCE["hetzner"]
NAME = f"drkit:host={HOST}:source={SOURCE}:20250301T040700Z"
LABELS = {"drkit/host": HOST, "drkit/source": SOURCE}


def test_create_image_is_labelled_and_its_action_polled(
    hetzner_api: FakeHetzner, env_for: EnvFactory, token: str
) -> None:
    env = env_for(hetzner_api, "hetzner")
    snap = take_snapshot(env.policy, env.source, NOW, connect=env.connect)

    assert (snap.name, snap.status, snap.size_gb) == (NAME, "complete", 2.5)
    assert snap.labels == LABELS
    action = next(iter(hetzner_api.actions))
    assert [(r.method, r.path) for r in hetzner_api.calls()] == [
        ("POST", f"/v1/servers/{SERVER}/actions/create_image"),
        ("GET", f"/v1/actions/{action}"),
        ("GET", f"/v1/actions/{action}"),
        ("GET", f"/v1/actions/{action}"),
        ("GET", f"/v1/images/{snap.id}"),
    ]
    assert hetzner_api.calls("POST")[0].body == {
        "description": NAME,
        "type": "snapshot",
        "labels": LABELS,
    }
    assert all(r.headers["authorization"] == f"Bearer {token}" for r in hetzner_api.calls())
    assert env.clock.sleeps == [15.0, 15.0]


def test_failed_action_names_its_error_code(hetzner_api: FakeHetzner, env_for: EnvFactory) -> None:
    hetzner_api.action_result = "error"
    env = env_for(hetzner_api, "hetzner")
    with pytest.raises(ProviderError) as err:
        take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    assert f"host {HOST}: source {SOURCE}: hetzner server {SERVER}: snapshot {NAME}" in str(
        err.value
    )
    assert "error: action_failed: Action failed" in str(err.value)


def test_action_still_running_at_wait_timeout(
    hetzner_api: FakeHetzner, env_for: EnvFactory
) -> None:
    hetzner_api.action_result = "running"
    env = env_for(hetzner_api, "hetzner", wait_timeout="1m")
    with pytest.raises(ProviderTimeout, match=r"timed out after 1m \(last status: running 99%\)"):
        take_snapshot(env.policy, env.source, NOW, connect=env.connect)


def test_unknown_server_is_a_final_error(hetzner_api: FakeHetzner, env_for: EnvFactory) -> None:
    hetzner_api.servers.clear()
    env = env_for(hetzner_api, "hetzner")
    with pytest.raises(ProviderError, match=f"not_found: server with ID '{SERVER}' not found"):
        take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    assert len(hetzner_api.calls()) == 1


def test_rate_limit_is_retried_by_hcloud_then_succeeds(
    hetzner_api: FakeHetzner, env_for: EnvFactory
) -> None:
    hetzner_api.inject(rate_limited())
    env = env_for(hetzner_api, "hetzner")
    snap = take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    assert snap.status == "complete"
    assert [r.status for r in hetzner_api.calls("POST")] == [429, 201]
    assert len(hetzner_api.images) == 1


def test_own_snapshots_by_label_selector_across_pages(
    hetzner_api: FakeHetzner, env_for: EnvFactory
) -> None:
    server = int(SERVER)
    for day in (1, 2, 3):
        hetzner_api.add_image(server, NAME.replace("0301", f"020{day}"), NOW, LABELS)
    hetzner_api.add_image(server, "before upgrade", NOW)  # by hand
    hetzner_api.add_image(server, NAME.replace("0301", "0204"), NOW)  # drkit's name, no labels
    hetzner_api.add_image(7, "another server's", NOW)
    provider = env_for(hetzner_api, "hetzner").provider()

    own = provider.list_snapshots()
    assert [s.name[-16:-8] for s in own] == ["20250201", "20250202", "20250203"]
    selected = hetzner_api.calls("GET", "/v1/images")
    assert [r.q("page") for r in selected] == ["1", "2"]
    assert all(r.query["type"] == ["snapshot"] for r in selected)
    assert all(r.q("label_selector") == "drkit/host=web,drkit/source=machine" for r in selected)

    everything = provider.list_all()  # this server's images, any maker
    assert len(everything) == 5


def test_delete_and_restore(hetzner_api: FakeHetzner, env_for: EnvFactory) -> None:
    keep = hetzner_api.add_image(int(SERVER), NAME, NOW - dt.timedelta(days=1), LABELS)
    gone = hetzner_api.add_image(int(SERVER), "old", NOW - dt.timedelta(days=9))
    env = env_for(hetzner_api, "hetzner")
    provider = env.provider()
    provider.delete(str(gone))
    with pytest.raises(ProviderError, match=f"delete snapshot {gone}: not_found"):
        provider.delete(str(gone))

    done = restore_from_snapshot(
        env.policy, env.source, None, "nbg1", "cx32", yes=True, connect=env.connect, now=NOW
    )
    assert done.snapshot.id == str(keep)
    assert done.instance is not None and done.instance.status == "running"
    assert done.instance.address and done.instance.address.startswith("192.0.2.")
    assert hetzner_api.calls("POST", "/v1/servers")[0].body == {
        "name": "web-restore-20250301-040700",
        "server_type": "cx32",
        "image": keep,
        "location": "nbg1",
        "start_after_create": True,
    }
