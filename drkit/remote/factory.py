"""The runner that reaches a policy's host, by its connection type."""

from __future__ import annotations

from drkit.errors import UsageError
from drkit.policy.models import Connection
from drkit.remote.base import Runner


def open_runner(host: str, connection: Connection) -> Runner:
    """The runner that reaches a policy's host."""
    if connection.type == "local":
        from drkit.remote.local import LocalRunner

        return LocalRunner(host)
    if connection.type == "ssh":
        from drkit.remote.ssh import SshRunner

        return SshRunner(host, connection)
    raise UsageError(f"host {host}: connection type {connection.type!r} is not supported yet")
