"""A restore as the command line asks for it, made ready to plan and run.

The CLI parses flags, confirms and prints; this module turns what was asked
(which snapshot or time, which sources, which target) into an ``Executor``: the
repository opened with the policy's trust, the assembly of snapshots chosen, the
target's runner connected lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from drkit.actions.repository_access import open_repository
from drkit.actions.restore import Executor
from drkit.actions.restore_target import target_runner
from drkit.actions.snapshot_select import data_sources, provider_snapshots, select_sources
from drkit.pipeline.age import Identity
from drkit.policy.models import Policy
from drkit.sources.base import RestoreOptions


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore, as of when, and onto where (``target`` None: this machine)."""

    snapshot: str | None = None
    at: datetime | None = None
    only: tuple[str, ...] = ()
    target: str | None = None
    target_identity: str | None = None
    target_known_hosts: str | None = None
    accept_new_host_key: bool = False
    resume: bool = False
    options: RestoreOptions = field(default_factory=RestoreOptions)


@dataclass
class PreparedRestore:
    executor: Executor
    target: str  # a label safe to print: "local" or ssh://user@host[:port]


def prepare_restore(
    policy: Policy, request: RestoreRequest, identities: list[Identity]
) -> PreparedRestore:
    """The executor for ``request``. Raises UsageError (bad flags or target), RestoreError
    (no snapshot holds a needed source, --resume of another assembly)."""
    repo = open_repository(policy)
    only = list(request.only) or None
    # A whole-host plan also points to the provider snapshot, if one was recorded.
    optional = set() if only else provider_snapshots(policy)
    assembly = select_sources(
        repo,
        policy.host,
        data_sources(policy, only),
        request.snapshot,
        request.at,
        optional=optional,
    )
    runner, label = target_runner(
        policy,
        request.target,
        identity_file=request.target_identity,
        known_hosts=request.target_known_hosts,
        accept_new_host_key=request.accept_new_host_key,
    )
    executor = Executor(
        policy,
        repo,
        assembly,
        identities,
        runner,
        request.options,
        target=label,
        resume=request.resume,
    )
    return PreparedRestore(executor, label)
