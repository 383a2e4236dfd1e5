"""``files``: a tar of paths, keeping modes, owners and symlinks."""

from __future__ import annotations

from collections.abc import Iterator

from drkit.policy.models import FilesConfig
from drkit.sources.base import Artifact
from drkit.sources.tarball import TarSource


class FilesSource(TarSource):
    kind = "files"
    config: FilesConfig

    def policy_paths(self) -> list[str]:
        return list(self.config.paths)

    def artifacts(self) -> Iterator[Artifact]:
        yield from self.tar_artifacts(self.config.paths, self.config.exclude)
        self.facts.update(self.listing_facts())
