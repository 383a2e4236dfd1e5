"""Where a restore goes: this machine, or an SSH target given as ssh://user@host[:port]."""

from __future__ import annotations

from urllib.parse import urlsplit

from drkit.actions.common import open_runner
from drkit.errors import UsageError
from drkit.policy.models import Connection, Policy
from drkit.remote.base import Runner


def target_runner(policy: Policy, target: str | None) -> tuple[Runner, str]:
    """The runner for ``--target`` (default: local), and a label safe to print."""
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
        identity_file=conn.identity_file,
        known_hosts=conn.known_hosts,
        accept_new_host_key=conn.accept_new_host_key,
    )
    label = f"ssh://{connection.user}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return open_runner(policy.host, connection), label
