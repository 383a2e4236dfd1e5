"""``command``: any command whose stdout is the artifact, restored by another command."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from drkit.errors import RestoreError
from drkit.policy.models import CommandSource as CommandConfig
from drkit.sources.base import Artifact, Feed, RestoreOptions, RestoreReport, Source, pipe_into


class CommandSource(Source):
    kind = "command"
    config: CommandConfig

    def artifacts(self) -> Iterator[Artifact]:
        argv = list(self.config.command)
        yield Artifact(self.config.artifact, lambda: self.command_stream(argv))
        self.facts["command"] = argv[0]

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        argv = self.config.restore_command
        if not argv:
            raise RestoreError(f"{self.label}: the policy gives no restore_command")
        what = f"{self.label}: restore"

        def consume(stream: BinaryIO) -> None:
            pipe_into(self.runner, list(argv), stream, what=what, user=self.run_as)

        feed(self.config.artifact, consume)
        return RestoreReport([f"piped {self.config.artifact} into {argv[0]}"])
