"""Source kinds register here, explicitly: adding a kind is one module and one line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from drkit.errors import UsageError
from drkit.policy.models import SourceBase, source_name
from drkit.remote.base import Runner
from drkit.sources.base import Artifact, Feed, RestoreOptions, RestoreReport, Source, StepPlan
from drkit.sources.caddy import CaddySource
from drkit.sources.certbot import CertbotSource
from drkit.sources.command import CommandSource
from drkit.sources.docker_volume import DockerVolumeSource
from drkit.sources.env import EnvSource
from drkit.sources.files import FilesSource
from drkit.sources.nats import NatsSource
from drkit.sources.pm2 import Pm2Source
from drkit.sources.postgres import PostgresSource
from drkit.sources.supabase import SupabaseSource


class ProviderSnapshotStep(Source):
    """A ``snapshot`` source inside a data snapshot: nothing to stream or restore.

    The backup action takes provider snapshots itself, through the provider's
    API (drkit.actions.provider_snapshot), beside the data sources; the data
    snapshot only records the outcome. A data restore therefore skips it, and
    ``drkit restore --from-provider-snapshot`` boots a machine from it.
    """

    kind = "snapshot"

    def artifacts(self) -> Iterator[Artifact]:
        raise UsageError(
            f"{self.label}: provider snapshots are taken by the backup action through the "
            "provider API, not streamed as a data source"
        )

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        return StepPlan([self._skip_text(facts)])

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        return RestoreReport([self._skip_text(facts)])

    def _skip_text(self, facts: dict[str, Any]) -> str:
        snap = f"{facts.get('provider', 'provider')} snapshot {facts.get('id', '?')}"
        return (
            f"skipped: {snap} is not part of a data restore; boot a machine from it with "
            f"drkit restore --host {self.runner.host} --from-provider-snapshot"
        )


SOURCES: dict[str, type[Source]] = {
    "postgres": PostgresSource,
    "files": FilesSource,
    "env": EnvSource,
    "command": CommandSource,
    "pm2": Pm2Source,
    "caddy": CaddySource,
    "certbot": CertbotSource,
    "nats": NatsSource,
    "docker_volume": DockerVolumeSource,
    "snapshot": ProviderSnapshotStep,
}


def build_source(config: SourceBase, runner: Runner) -> Source:
    """The Source object for one policy entry; unimplemented kinds are a clear error."""
    kind = str(getattr(config, "kind"))  # noqa: B009
    cls = SOURCES.get(kind)
    if kind == "postgres" and getattr(config, "flavor", "plain") == "supabase":
        cls = SupabaseSource
    if cls is None:
        raise UsageError(
            f"host {runner.host}: source {source_name(config)}: kind {kind!r} is declared "
            f"but this drkit version cannot back it up yet"
        )
    return cls(source_name(config), config, runner)
