"""Background snapshots never fail the data path; the token never leaks; factory errors."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from drkit.actions.provider_snapshot import SnapshotJob, start_snapshot, take_snapshot
from drkit.errors import SecretError
from drkit.policy.models import MachineImageConfig, Policy
from drkit.providers import factory
from drkit.providers.base import Provider, ProviderError
from drkit.providers.factory import open_provider
from drkit.retry import Clock
from tests.providers.conftest import HOST, NOW, RESOURCE, SOURCE, TOKEN_ENV, Env, EnvFactory
from tests.providers.conftest import api_base as base_url
from tests.providers.fake_http import FakeApi, Reply
from tests.providers.fake_vultr import FakeVultr


def real_time(env: Env, poll: float = 0.02) -> Any:
    """A connect() on the real clock with short polls: the job really runs concurrently."""

    def connect(policy: Policy, config: MachineImageConfig) -> Provider:
        return open_provider(
            policy, config, endpoint=base_url(env.api, env.kind), clock=Clock(), poll_interval=poll
        )

    return connect


def test_a_slow_snapshot_runs_beside_the_data_sources(
    vultr_api: FakeVultr, env_for: EnvFactory
) -> None:
    vultr_api.snapshot_polls = 10**9  # pending until the data path below is done
    env = env_for(vultr_api, "vultr")
    job = start_snapshot(env.policy, env.source, NOW, connect=real_time(env))
    while len(vultr_api.calls("GET")) < 3:  # the host's data sources would run here
        assert not job.done()
        time.sleep(0.01)
    assert not job.done()
    vultr_api.snapshot_polls = 0  # the provider finishes
    outcome = job.result(timeout=30)

    assert outcome.ok and job.done()
    facts = outcome.facts()
    assert facts["provider"] == "vultr" and facts["resource_id"] == RESOURCE["vultr"]
    assert outcome.snapshot is not None and facts["id"] == outcome.snapshot.id
    assert facts["size_gb"] == 25.0 and facts["created"] and facts["status"] == "complete"
    assert facts["name"] == f"drkit:host={HOST}:source={SOURCE}:20250301T040700Z"
    json.dumps(facts)  # storable as is


# How each fake ends a snapshot in failure.
FAILURES = {
    "digitalocean": ("action_result", "errored"),
    "vultr": ("snapshot_result", "failed"),
    "hetzner": ("action_result", "error"),
}


def test_a_failing_snapshot_is_an_outcome_not_an_exception(
    kind: str, any_api: FakeApi, env_for: EnvFactory
) -> None:
    attribute, failure = FAILURES[kind]
    setattr(any_api, attribute, failure)
    env = env_for(any_api, kind)
    logged: list[str] = []
    outcome = SnapshotJob(env.policy, env.source, NOW, connect=env.connect, log=logged.append)
    result = outcome.start().result(timeout=30)

    assert not result.ok and result.snapshot is None
    assert result.error is not None
    assert result.error.startswith(f"host {HOST}: source {SOURCE}: {kind} ")
    assert RESOURCE[kind] in result.error
    assert result.facts() == {
        "kind": "snapshot",
        "provider": kind,
        "resource_id": RESOURCE[kind],
        "error": result.error,
    }
    assert logged[-1] == result.error


def test_a_missing_token_is_an_outcome_naming_the_reference(
    do_api: FakeApi, env_for: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_for(do_api, "digitalocean")
    monkeypatch.delenv(TOKEN_ENV)
    result = start_snapshot(env.policy, env.source, NOW, connect=env.connect).result(timeout=30)
    assert result.error == (
        f"host {HOST}: source {SOURCE}: digitalocean {RESOURCE['digitalocean']}: "
        f"secret env:{TOKEN_ENV}: environment variable {TOKEN_ENV} is not set"
    )
    assert do_api.calls() == []


def test_cancel_stops_the_wait(vultr_api: FakeVultr, env_for: EnvFactory) -> None:
    vultr_api.snapshot_result = "pending"  # never completes
    env = env_for(vultr_api, "vultr")
    job = start_snapshot(env.policy, env.source, NOW, connect=real_time(env, poll=5.0))
    while not vultr_api.calls("GET"):
        time.sleep(0.01)
    t0 = time.monotonic()
    job.cancel()
    result = job.result(timeout=10)
    assert time.monotonic() - t0 < 2
    assert result.error is not None and "cancelled while pending" in result.error


def _echo_token(kind: str, token: str) -> Reply:
    """A (buggy) API error that quotes the credential back."""
    message = f"token {token} lacks write scope"
    if kind == "digitalocean":
        return 403, {}, {"id": "forbidden", "message": message}
    if kind == "vultr":
        return 403, {}, {"error": message, "status": 403}
    return 403, {}, {"error": {"code": "forbidden", "message": message, "details": {}}}


def test_the_token_is_sent_but_never_logged_or_shown(
    kind: str,
    any_api: FakeApi,
    env_for: EnvFactory,
    token: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every library's debug logging: azure, urllib3, httpx...
    env = env_for(any_api, kind)
    seen: list[str] = []
    snap = take_snapshot(env.policy, env.source, NOW, connect=env.connect, log=seen.append)
    seen += [repr(snap), json.dumps(snap.facts()), repr(env.opened[-1])]

    any_api.inject(_echo_token(kind, token))
    with pytest.raises(ProviderError) as err:
        take_snapshot(env.policy, env.source, NOW, connect=env.connect, log=seen.append)
    seen += [str(err.value), repr(err.value)]
    assert "lacks write scope" in str(err.value) and "token *** lacks" in str(err.value)

    any_api.token = "rotated"  # now every call is refused: 401
    job = start_snapshot(env.policy, env.source, NOW, connect=env.connect, log=seen.append)
    seen.append(str(job.result(timeout=30)))

    requests = any_api.calls()
    assert requests and all(r.headers.get("authorization") == f"Bearer {token}" for r in requests)
    assert caplog.records  # the libraries did log
    for text in [*seen, caplog.text, *(r.getMessage() for r in caplog.records)]:
        assert token not in text
        assert token[4:20] not in text


def test_a_secret_that_cannot_be_resolved_is_named_not_shown(
    env_for: EnvFactory, do_api: FakeApi, tmp_path: Any
) -> None:
    env = env_for(do_api, "digitalocean", token=f"file:{tmp_path}/missing-token")
    with pytest.raises(SecretError) as err:
        env.provider()
    assert str(err.value).startswith(f"host {HOST}: source {SOURCE}: digitalocean ")
    assert f"file:{tmp_path}/missing-token" in str(err.value)


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("http://api.example.invalid", "must be https://"),
        ("ftp://127.0.0.1", "must be https://"),
        ("https://user:pw@api.example.invalid", "credentials in the URL are refused"),
    ],
)
def test_endpoints_that_would_expose_the_token_are_refused(
    endpoint: str, reason: str, env_for: EnvFactory, do_api: FakeApi
) -> None:
    env = env_for(do_api, "digitalocean")
    with pytest.raises(ProviderError, match=reason) as err:
        open_provider(env.policy, env.source, endpoint=endpoint)
    assert "pw" not in str(err.value)
    assert str(err.value).startswith(f"host {HOST}: source {SOURCE}: digitalocean droplet")


def test_endpoint_from_the_environment(
    env_for: EnvFactory, vultr_api: FakeVultr, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRKIT_VULTR_ENDPOINT", vultr_api.url)
    env = env_for(vultr_api, "vultr")
    provider = open_provider(env.policy, env.source)
    assert provider.endpoint == vultr_api.url
    assert provider.list_all() == []
    assert len(vultr_api.calls("GET", "/v2/snapshots")) == 1


def test_ids_that_cannot_be_right_fail_before_any_request(
    env_for: EnvFactory, do_api: FakeApi
) -> None:
    env = env_for(do_api, "digitalocean", resource_id="web-1")
    with pytest.raises(ProviderError, match="configuration: a droplet id is a number"):
        env.provider()


def test_a_missing_sdk_says_what_to_install(
    env_for: EnvFactory, do_api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> type[Provider]:
        raise ModuleNotFoundError("No module named 'pydo'", name="pydo")

    monkeypatch.setitem(factory.PROVIDERS, "digitalocean", missing)
    env = env_for(do_api, "digitalocean")
    with pytest.raises(
        ProviderError, match=r"needs the pydo package \(pip install 'drkit\[providers\]'\)"
    ):
        open_provider(env.policy, env.source)
