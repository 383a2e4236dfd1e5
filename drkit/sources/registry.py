"""Source kinds register here, explicitly: adding a kind is one module and one line.

Each kind maps to ``"module:Class"`` and its module is imported the first
time a policy uses that kind: a backup of one ``command`` source does not
pay for ``cryptography.x509`` (caddy/certbot facts), NATS or Docker code.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

from drkit.errors import UsageError
from drkit.policy.models import SourceConfigBase, source_name
from drkit.remote.base import Runner
from drkit.sources.base import Artifact, Feed, RestoreOptions, RestoreReport, Source, StepPlan


class ProviderSnapshotStep(Source):
    """A ``snapshot`` source inside a data snapshot: nothing to stream or restore.

    The backup action takes provider snapshots itself, through the provider's
    API (drkit.actions.provider_snapshot), beside the data sources; the data
    snapshot only records the outcome. A data restore therefore skips it, and
    ``drkit restore-machine`` boots a machine from it.
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
            f"drkit restore-machine --host {self.runner.host}"
        )


# kind -> "module:Class" (a class is used as is: tests substitute one).
SOURCES: dict[str, str | type[Source]] = {
    "postgres": "drkit.sources.postgres:PostgresSource",
    "files": "drkit.sources.files:FilesSource",
    "env": "drkit.sources.env:EnvSource",
    "command": "drkit.sources.command:CommandSource",
    "pm2": "drkit.sources.pm2:Pm2Source",
    "caddy": "drkit.sources.caddy:CaddySource",
    "certbot": "drkit.sources.certbot:CertbotSource",
    "nats": "drkit.sources.nats:NatsSource",
    "docker_volume": "drkit.sources.docker_volume:DockerVolumeSource",
    "redis": "drkit.sources.redis:RedisSource",
    "mysql": "drkit.sources.mysql:MysqlSource",
    "compose": "drkit.sources.compose:ComposeSource",
    "snapshot": ProviderSnapshotStep,
}
SUPABASE = "drkit.sources.supabase:SupabaseSource"  # postgres with flavor = "supabase"


def source_class(kind: str, flavor: str = "plain") -> type[Source] | None:
    """The Source class of ``kind`` (importing its module now), or None if unknown."""
    entry = SOURCES.get(kind)
    if kind == "postgres" and flavor == "supabase":
        entry = SUPABASE
    if entry is None or isinstance(entry, type):
        return entry
    module, _, name = entry.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise TypeError(f"source registry: {entry} is not a Source class")
    return cls


def build_source(config: SourceConfigBase, runner: Runner) -> Source:
    """The Source object for one policy entry; unimplemented kinds are a clear error."""
    kind = str(getattr(config, "kind"))  # noqa: B009
    cls = source_class(kind, str(getattr(config, "flavor", "plain")))
    if cls is None:
        raise UsageError(
            f"host {runner.host}: source {source_name(config)}: kind {kind!r} is declared "
            f"but this drkit version cannot back it up yet"
        )
    return cls(source_name(config), config, runner)
