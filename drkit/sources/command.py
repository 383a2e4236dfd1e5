"""``command``: any command whose stdout is the artifact, restored by another command.

Secrets reach the commands as environment variables named in the policy's
``env`` (references resolved here, sent through the runner's env channel:
never argv, which shows in process lists and error messages).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from drkit import secrets
from drkit.errors import RestoreError
from drkit.policy.models import CommandConfig
from drkit.sources.base import Artifact, Feed, RestoreOptions, RestoreReport, Source, pipe_into


class CommandSource(Source):
    kind = "command"
    config: CommandConfig

    def env(self) -> dict[str, str] | None:
        """The policy's ``env``, resolved (SecretError names the reference that failed)."""
        return {name: secrets.resolve(ref) for name, ref in self.config.env.items()} or None

    def artifacts(self) -> Iterator[Artifact]:
        argv = list(self.config.command)
        env = self.env()
        yield Artifact(self.config.artifact, lambda: self.command_stream(argv, env=env))
        self.facts["command"] = argv[0]

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        argv = self.config.restore_command
        if not argv:
            raise RestoreError(f"{self.label}: the policy gives no restore_command")
        what = f"{self.label}: restore"
        env = self.env()

        def consume(stream: BinaryIO) -> None:
            pipe_into(self.runner, list(argv), stream, what=what, env=env, user=self.run_as)

        feed(self.config.artifact, consume)
        return RestoreReport([f"piped {self.config.artifact} into {argv[0]}"])
