"""Build the provider a policy's ``snapshot`` source names.

Providers register here, explicitly. Their SDKs (pydo, hcloud) are imported
only when a policy uses them, so they stay optional (``drkit[providers]``).
The token is resolved from the source's reference at the last moment and
handed to the client; it is never stored on the source or put in a message.

The API endpoint can be overridden (a local test server, an API proxy) by
the ``endpoint`` argument, an ``endpoint`` field on the source (not in the
policy model yet), or ``DRKIT_<PROVIDER>_ENDPOINT``; plain http only to
loopback.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from drkit import secrets
from drkit.durations import parse_duration
from drkit.errors import SecretError
from drkit.policy.models import MachineImageConfig, Policy, source_name
from drkit.providers.base import Owner, Provider, ProviderError
from drkit.retry import Backoff, Clock


def _digitalocean() -> type[Provider]:
    from drkit.providers.digitalocean import DigitalOceanProvider

    return DigitalOceanProvider


def _vultr() -> type[Provider]:
    from drkit.providers.vultr import VultrProvider

    return VultrProvider


def _hetzner() -> type[Provider]:
    from drkit.providers.hetzner import HetznerProvider

    return HetznerProvider


PROVIDERS: dict[str, Callable[[], type[Provider]]] = {
    "digitalocean": _digitalocean,
    "vultr": _vultr,
    "hetzner": _hetzner,
}


def source_label(policy: Policy, config: MachineImageConfig) -> str:
    """``host H: source S: <provider> <resource>``, as every provider error starts."""
    return (
        f"host {policy.host}: source {source_name(config)}: {config.provider} {config.resource_id}"
    )


def open_provider(
    policy: Policy,
    config: MachineImageConfig,
    *,
    endpoint: str | None = None,
    clock: Clock | None = None,
    backoff: Backoff | None = None,
    poll_interval: float | None = None,
) -> Provider:
    """The provider client for ``config``. Raises ProviderError (missing SDK, bad
    endpoint or id) or SecretError (token reference unresolvable), naming host and source."""
    label = source_label(policy, config)
    try:
        cls = PROVIDERS[config.provider]()
    except KeyError:
        raise ProviderError(f"{label}: unknown provider {config.provider!r}") from None
    except ImportError as exc:
        raise ProviderError(
            f"{label}: the {config.provider} client needs the {exc.name or 'SDK'} package "
            "(pip install 'drkit[providers]')"
        ) from None
    try:
        token = secrets.resolve(config.token)
    except SecretError as exc:
        raise SecretError(f"{label}: {exc}") from None
    return cls(
        Owner(policy.host, source_name(config)),
        config.resource_id,
        token,
        endpoint=endpoint or _endpoint(config),
        clock=clock,
        backoff=backoff,
        poll_interval=poll_interval or _seconds(getattr(config, "poll_interval", None)),
    )


def _endpoint(config: MachineImageConfig) -> str | None:
    configured = getattr(config, "endpoint", None)
    if configured:
        return str(configured)
    return os.environ.get(f"DRKIT_{config.provider.upper()}_ENDPOINT") or None


def _seconds(value: object) -> float | None:
    if not value:
        return None
    return parse_duration(str(value)).total_seconds()
