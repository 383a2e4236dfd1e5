"""DigitalOcean through pydo against the fake API: the exact requests, waits and errors."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from drkit.actions.provider_snapshot import restore_from_snapshot, take_snapshot
from drkit.errors import UsageError
from drkit.providers.base import ProviderError, ProviderTimeout
from tests.providers.conftest import HOST, NOW, RESOURCE, SOURCE, EnvFactory
from tests.providers.fake_digitalocean import NOT_FOUND, FakeDigitalOcean

DROPLET = RESOURCE["digitalocean"]
NAME = f"drkit:host={HOST}:source={SOURCE}:20250301T040700Z"


def test_snapshot_is_created_awaited_and_found_across_pages(
    do_api: FakeDigitalOcean, env_for: EnvFactory, token: str
) -> None:
    # Two older snapshots already fill page 1 (the fake pages by 2): the new one is on page 2.
    do_api.add_snapshot(int(DROPLET), "before-upgrade", NOW - dt.timedelta(days=40))
    do_api.add_snapshot(int(DROPLET), "weekly-by-hand", NOW - dt.timedelta(days=3))
    env = env_for(do_api, "digitalocean")

    snap = take_snapshot(env.policy, env.source, NOW, connect=env.connect)

    assert snap.name == NAME
    assert snap.size_gb == 12.34
    assert snap.status == "complete"
    assert snap.created is not None and snap.id in {str(i) for i in do_api.snapshots}
    calls = [(r.method, r.path) for r in do_api.calls()]
    action = next(iter(do_api.actions))
    assert calls == [
        ("POST", f"/v2/droplets/{DROPLET}/actions"),
        ("GET", f"/v2/actions/{action}"),
        ("GET", f"/v2/actions/{action}"),
        ("GET", f"/v2/actions/{action}"),
        ("GET", f"/v2/droplets/{DROPLET}/snapshots"),
        ("GET", f"/v2/droplets/{DROPLET}/snapshots"),
    ]
    assert do_api.calls("POST")[0].body == {"type": "snapshot", "name": NAME}
    pages = do_api.calls("GET", f"/v2/droplets/{DROPLET}/snapshots")
    assert [(r.q("page"), r.q("per_page")) for r in pages] == [("1", "200"), ("2", "200")]
    assert all(r.headers["authorization"] == f"Bearer {token}" for r in do_api.calls())
    # Polled every poll_interval (15 s) on the virtual clock, no busy loop.
    assert env.clock.sleeps == [15.0, 15.0]


def test_errored_action_is_a_provider_error_naming_host_source_and_droplet(
    do_api: FakeDigitalOcean, env_for: EnvFactory
) -> None:
    do_api.action_result = "errored"
    env = env_for(do_api, "digitalocean")
    with pytest.raises(ProviderError) as err:
        take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    text = str(err.value)
    assert f"host {HOST}: source {SOURCE}: digitalocean droplet {DROPLET}" in text
    assert f"snapshot {NAME}" in text and "errored" in text


def test_a_snapshot_listed_late_is_awaited(do_api: FakeDigitalOcean, env_for: EnvFactory) -> None:
    do_api.list_lag = 2  # the action says completed before the listing shows the snapshot
    env = env_for(do_api, "digitalocean")
    snap = take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    assert snap.name == NAME
    assert [r.q("page") for r in do_api.calls("GET", f"/v2/droplets/{DROPLET}/snapshots")] == [
        "1",
        "1",
        "1",
    ]


def test_a_snapshot_that_never_finishes_times_out_after_wait_timeout(
    do_api: FakeDigitalOcean, env_for: EnvFactory
) -> None:
    do_api.action_result = "in-progress"
    env = env_for(do_api, "digitalocean", wait_timeout="2m")
    with pytest.raises(ProviderTimeout) as err:
        take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    assert "timed out after 2m (last status: in-progress)" in str(err.value)
    assert f"digitalocean droplet {DROPLET}" in str(err.value)
    assert env.clock.t == pytest.approx(120.0)
    assert len(do_api.calls("GET", r"/v2/actions/\d+")) == 9  # t = 0, 15, ..., 120


def test_429_waits_until_ratelimit_reset_then_retries(
    do_api: FakeDigitalOcean, env_for: EnvFactory
) -> None:
    env = env_for(do_api, "digitalocean")
    reset = int(env.clock.now()) + 7
    limited = {"ratelimit-limit": "250", "ratelimit-remaining": "0", "ratelimit-reset": str(reset)}
    body = {"id": "too_many_requests", "message": "API Rate limit exceeded."}
    do_api.inject((429, limited, body))

    snap = take_snapshot(env.policy, env.source, NOW, connect=env.connect)

    assert snap.name == NAME
    posts = do_api.calls("POST")
    assert [r.status for r in posts] == [429, 201]  # the refused create was sent again
    assert posts[0].body == posts[1].body
    assert env.clock.sleeps[0] == pytest.approx(7.0)


def test_rate_limit_that_never_lifts_is_a_final_error(
    do_api: FakeDigitalOcean, env_for: EnvFactory
) -> None:
    env = env_for(do_api, "digitalocean")
    headers = {"ratelimit-reset": str(int(env.clock.now()) + 1)}
    do_api.inject(*[(429, headers, {"id": "too_many_requests", "message": "slow down"})] * 4)
    with pytest.raises(ProviderError) as err:
        take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    assert "HTTP 429: too_many_requests: slow down (gave up after 4 attempts)" in str(err.value)
    assert len(do_api.calls()) == 4


def test_listing_falls_back_to_account_snapshots_when_the_droplet_is_gone(
    do_api: FakeDigitalOcean, env_for: EnvFactory
) -> None:
    ours = f"drkit:host={HOST}:source={SOURCE}:20250220T040700Z"
    for i, name in enumerate([ours, "manual", "other-droplet"]):
        do_api.add_snapshot(int(DROPLET) if i < 2 else 999, name, NOW - dt.timedelta(days=i))
    del do_api.droplets[int(DROPLET)]  # the machine is lost; its snapshots remain
    env = env_for(do_api, "digitalocean")

    provider = env.provider()
    assert sorted(s.name for s in provider.list_all()) == sorted(["manual", ours])
    assert [s.name for s in provider.list_snapshots()] == [ours]
    account = do_api.calls("GET", "/v2/snapshots")
    assert [r.q("page") for r in account][:2] == ["1", "2"]  # 3 snapshots, pages of 2
    assert all(r.q("resource_type") == "droplet" for r in account)


def test_delete_sends_delete_and_reports_a_missing_snapshot(
    do_api: FakeDigitalOcean, env_for: EnvFactory
) -> None:
    sid = do_api.add_snapshot(int(DROPLET), "x", NOW)
    provider = env_for(do_api, "digitalocean").provider()
    provider.delete(str(sid))
    assert sid not in do_api.snapshots
    with pytest.raises(ProviderError) as err:
        provider.delete(str(sid))
    assert f"delete snapshot {sid}: {NOT_FOUND['id']}: {NOT_FOUND['message']}" in str(err.value)
    assert [(r.method, r.path, r.status) for r in do_api.calls()] == [
        ("DELETE", f"/v2/snapshots/{sid}", 204),
        ("DELETE", f"/v2/snapshots/{sid}", 404),
    ]


def test_wrong_token_is_refused_with_the_api_message(
    do_api: FakeDigitalOcean, env_for: EnvFactory
) -> None:
    do_api.token = "something-else"
    env = env_for(do_api, "digitalocean")
    with pytest.raises(ProviderError) as err:
        take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    assert "HTTP 401: Unauthorized: Unable to authenticate you." in str(err.value)
    assert len(do_api.calls()) == 1  # a refusal is final, not retried


def test_restore_plans_then_creates_a_droplet_from_the_newest_drkit_snapshot(
    do_api: FakeDigitalOcean, env_for: EnvFactory
) -> None:
    old = do_api.add_snapshot(int(DROPLET), NAME.replace("0301", "0222"), NOW - dt.timedelta(7))
    new = do_api.add_snapshot(int(DROPLET), NAME, NOW)
    do_api.add_snapshot(int(DROPLET), "newer-but-manual", NOW + dt.timedelta(hours=1))
    env = env_for(do_api, "digitalocean")

    plan = restore_from_snapshot(env.policy, env.source, connect=env.connect, now=NOW)
    assert plan.instance is None and plan.snapshot.id == str(new) != str(old)
    assert "<missing: --region>" in plan.plan and "--yes" in plan.plan
    assert do_api.calls("POST") == []  # a plan changes nothing

    with pytest.raises(UsageError, match="restore needs --region and --size"):
        restore_from_snapshot(env.policy, env.source, yes=True, connect=env.connect, now=NOW)
    assert do_api.calls("POST") == []

    done = restore_from_snapshot(
        env.policy,
        env.source,
        region="fra1",
        size="s-2vcpu-4gb",
        yes=True,
        connect=env.connect,
        now=NOW,
    )
    assert done.instance is not None and done.instance.address == "192.0.2.55"
    create = do_api.calls("POST", "/v2/droplets")[0]
    assert create.body == {
        "name": "web-restore-20250301-040700",
        "region": "fra1",
        "size": "s-2vcpu-4gb",
        "image": new,
    }
    assert do_api.droplets[int(DROPLET)]["status"] == "active"  # the original is untouched


def test_real_sleeps_stay_short(do_api: FakeDigitalOcean, env_for: EnvFactory) -> None:
    # The whole flow above runs on the virtual clock: no test here may really wait.
    t0 = time.monotonic()
    env = env_for(do_api, "digitalocean")
    take_snapshot(env.policy, env.source, NOW, connect=env.connect)
    assert time.monotonic() - t0 < 5
