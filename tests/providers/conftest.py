"""Fixtures: the three fake provider APIs on free loopback ports, a policy, a virtual clock."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from drkit.policy.models import MachineImageConfig, Policy
from drkit.providers.base import Provider
from drkit.providers.factory import open_provider
from drkit.retry import Backoff
from tests import clock
from tests.helpers import local_signer
from tests.providers.fake_digitalocean import FakeDigitalOcean
from tests.providers.fake_hetzner import FakeHetzner
from tests.providers.fake_http import FakeApi, serve
from tests.providers.fake_vultr import FakeVultr

HOST = "web"
SOURCE = "machine"
RESOURCE = {
    "digitalocean": "544907207",
    "vultr": "cb676a46-66fd-4dfb-b839-443f2e6c0b60",
    "hetzner": "42",
}
TOKEN_ENV = "DRKIT_TEST_PROVIDER_TOKEN"
NOW = dt.datetime(2025, 3, 1, 4, 7, 0, tzinfo=dt.UTC)


class VirtualClock(clock.VirtualClock):
    """tests/clock.py's, with provider answers' Unix times around ``NOW``."""

    def __init__(self) -> None:
        super().__init__(NOW.timestamp())


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    """A random token, reachable only through the policy's env: reference."""
    value = "tok-" + secrets.token_hex(24)
    monkeypatch.setenv(TOKEN_ENV, value)
    return value


def _fake(kind: str, token: str) -> FakeApi:
    if kind == "digitalocean":
        do = FakeDigitalOcean(token)
        do.add_droplet(int(RESOURCE[kind]))
        return do
    if kind == "vultr":
        vultr = FakeVultr(token)
        vultr.add_instance(RESOURCE[kind])
        return vultr
    hetzner = FakeHetzner(token)
    hetzner.add_server(int(RESOURCE[kind]))
    return hetzner


def api_base(api: FakeApi, kind: str) -> str:
    """The endpoint as each client expects it (hcloud's includes /v1)."""
    return api.url + "/v1" if kind == "hetzner" else api.url


@pytest.fixture
def do_api(token: str) -> Iterator[FakeDigitalOcean]:
    with serve(_fake("digitalocean", token)) as api:
        yield api  # type: ignore[misc]


@pytest.fixture
def vultr_api(token: str) -> Iterator[FakeVultr]:
    with serve(_fake("vultr", token)) as api:
        yield api  # type: ignore[misc]


@pytest.fixture
def hetzner_api(token: str) -> Iterator[FakeHetzner]:
    with serve(_fake("hetzner", token)) as api:
        yield api  # type: ignore[misc]


@pytest.fixture(params=["digitalocean", "vultr", "hetzner"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def any_api(kind: str, token: str) -> Iterator[FakeApi]:
    """Each provider's fake in turn (tests taking it run three times)."""
    with serve(_fake(kind, token)) as api:
        yield api


def make_policy(kind: str, **source: Any) -> Policy:
    fields = {
        "kind": "snapshot",
        "name": SOURCE,
        "provider": kind,
        "resource_id": RESOURCE[kind],
        "token": f"env:{TOKEN_ENV}",
        "wait_timeout": "10m",
        **source,
    }
    return Policy.model_validate(
        {
            "host": HOST,
            "repository": {"url": "file:///tmp/unused-by-provider-tests"},
            "encryption": {"recipients": [], "signers": [local_signer()]},
            "source": [fields],
        }
    )


def snapshot_source(policy: Policy) -> MachineImageConfig:
    src = policy.source[0]
    assert isinstance(src, MachineImageConfig)
    return src


@dataclass
class Env:
    """A policy for one fake API, and a connect() that builds the real client for it."""

    kind: str
    api: FakeApi
    policy: Policy
    clock: VirtualClock = field(default_factory=VirtualClock)
    backoff: Backoff = field(default_factory=lambda: Backoff(attempts=4, base=1.0, cap=30.0))
    opened: list[Provider] = field(default_factory=list)

    @property
    def source(self) -> MachineImageConfig:
        return snapshot_source(self.policy)

    def connect(self, policy: Policy, config: MachineImageConfig) -> Provider:
        provider = open_provider(
            policy,
            config,
            endpoint=api_base(self.api, self.kind),
            clock=self.clock,
            backoff=self.backoff,
            poll_interval=15.0,
        )
        self.opened.append(provider)
        return provider

    def provider(self) -> Provider:
        return self.connect(self.policy, self.source)


EnvFactory = Callable[..., Env]


@pytest.fixture
def env_for(token: str) -> EnvFactory:
    def build(api: FakeApi, kind: str, **source: Any) -> Env:
        return Env(kind, api, make_policy(kind, **source))

    return build
