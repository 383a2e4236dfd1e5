"""Waiting for a snapshot, on each provider's fake: the policy's wait_timeout bounds it."""

from __future__ import annotations

import pytest

from drkit.actions.provider_snapshot import take_snapshot
from drkit.providers.base import ProviderTimeout
from tests.providers.conftest import HOST, NOW, RESOURCE, SOURCE, EnvFactory
from tests.providers.fake_http import FakeApi

# How each fake keeps a snapshot unfinished, and the status it then reports.
NEVER_DONE = {
    "digitalocean": ("action_result", "in-progress", "in-progress"),
    "vultr": ("snapshot_result", "pending", "pending"),
    "hetzner": ("action_result", "running", "running 99%"),
}
POLLED = {
    "digitalocean": r"/v2/actions/\d+",
    "vultr": r"/v2/snapshots/[0-9a-f-]+",
    "hetzner": r"/v1/actions/\d+",
}


@pytest.mark.parametrize("timeout", ["7m", "1h30m"])
def test_the_wait_ends_at_the_policys_wait_timeout(
    kind: str, any_api: FakeApi, env_for: EnvFactory, timeout: str
) -> None:
    attribute, value, status = NEVER_DONE[kind]
    setattr(any_api, attribute, value)
    env = env_for(any_api, kind, wait_timeout=timeout)
    seconds = {"7m": 420.0, "1h30m": 5400.0}[timeout]

    with pytest.raises(ProviderTimeout) as err:
        take_snapshot(env.policy, env.source, NOW, connect=env.connect)

    assert str(err.value) == (
        f"host {HOST}: source {SOURCE}: {kind} {env.opened[0].noun} {RESOURCE[kind]}: "
        f"snapshot drkit:host={HOST}:source={SOURCE}:20250301T040700Z: timed out after "
        f"{timeout} (last status: {status}); the provider may still finish it"
    )
    # Polled every poll_interval (15 s) from t = 0 up to the timeout, on the virtual clock.
    assert env.clock.t == pytest.approx(seconds)
    assert set(env.clock.sleeps) == {15.0}
    assert len(any_api.calls("GET", POLLED[kind])) == int(seconds // 15) + 1
