"""``files``: a tar of paths, keeping modes, owners and symlinks."""

from __future__ import annotations

from collections.abc import Iterator

from drkit.policy.models import FilesSource as FilesConfig
from drkit.sources.base import Artifact
from drkit.sources.tarball import TarSource


class FilesSource(TarSource):
    kind = "files"
    config: FilesConfig

    def artifacts(self) -> Iterator[Artifact]:
        yield self.tar_artifact(self.config.paths, self.config.exclude)
        self.facts.update(self.listing_facts())
