"""Source kinds register here, explicitly: adding a kind is one module and one line."""

from __future__ import annotations

from drkit.errors import UsageError
from drkit.policy.models import SourceBase, source_name
from drkit.remote.base import Runner
from drkit.sources.base import Source
from drkit.sources.caddy import CaddySource
from drkit.sources.certbot import CertbotSource
from drkit.sources.command import CommandSource
from drkit.sources.env import EnvSource
from drkit.sources.files import FilesSource
from drkit.sources.nats import NatsSource
from drkit.sources.pm2 import Pm2Source
from drkit.sources.postgres import PostgresSource
from drkit.sources.supabase import SupabaseSource

SOURCES: dict[str, type[Source]] = {
    "postgres": PostgresSource,
    "files": FilesSource,
    "env": EnvSource,
    "command": CommandSource,
    "pm2": Pm2Source,
    "caddy": CaddySource,
    "certbot": CertbotSource,
    "nats": NatsSource,
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
