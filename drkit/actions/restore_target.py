"""Where a restore goes: this machine, or an SSH target given as ssh://user@host[:port]."""

from __future__ import annotations

from urllib.parse import urlsplit

from drkit.errors import UsageError
from drkit.policy.models import Connection, Policy
from drkit.remote.base import Runner
from drkit.remote.factory import open_runner


def target_runner(
    policy: Policy,
    target: str | None,
    *,
    identity_file: str | None = None,
    known_hosts: str | None = None,
    accept_new_host_key: bool = False,
) -> tuple[Runner, str]:
    """The runner for ``--target`` (default: local), and a label safe to print.

    The SSH settings default to the policy's [connection]; a fresh machine usually
    has another key pair and an unknown host key, hence the overrides. Accepting a
    new host key stays explicit (it is then recorded in the known_hosts file), and a
    refused one is explained in terms of these flags, not the policy's settings.
    """
    if not target and (identity_file or known_hosts or accept_new_host_key):
        raise UsageError(
            "--target-identity, --target-known-hosts and --accept-new-host-key need --target"
        )
    if not target:
        return open_runner(policy.host, Connection(type="local")), "local"
    parts = urlsplit(target)
    if parts.scheme != "ssh" or not parts.hostname:
        raise UsageError(f"--target {target!r}: expected ssh://user@host[:port]")
    conn = policy.connection
    connection = Connection(
        type="ssh",
        address=parts.hostname,
        user=parts.username or conn.user,
        port=parts.port or 22,
        identity_file=identity_file or conn.identity_file,
        known_hosts=known_hosts or conn.known_hosts,
        accept_new_host_key=accept_new_host_key or conn.accept_new_host_key,
    )
    label = f"ssh://{connection.user}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    from drkit.remote.ssh import SshRunner
    from drkit.remote.ssh_hostkeys import SshAdvice

    advice = SshAdvice(
        accept_new="pass --accept-new-host-key",
        known_hosts="--target-known-hosts FILE",
        identity="--target-identity FILE",
    )
    return SshRunner(policy.host, connection, advice), label
