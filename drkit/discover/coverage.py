"""Which source of a policy covers each thing a host runs, and what would cover the rest.

``assess(facts, policy)`` lists ``Finding``s: one per compose project, compose
or env file, bind mount, named volume, container, database, Redis-protocol
server, PM2 app, site, certificate store and NATS server, each with the
names of the policy's sources that cover it (empty: not covered) and, when it
holds data no source covers, the source that would (``suggestion``, rendered
as TOML by ``suggest_toml``). The rules (docs/discover.md):

- a path (compose file, env file, bind mount, volume mountpoint, store dir)
  is covered by a ``files`` or ``env`` source whose path (or glob) is that
  path or one of its parent directories (unless the source's ``exclude``
  leaves it out, as tar would), and by the ``caddy``/``certbot``/``nats``
  sources' own directories;
- a named volume: a ``docker_volume`` source of that name, a covered
  mountpoint, or an app-native source for the container using it
  (``postgres``/``nats`` with ``container =`` naming it, or a ``command``
  source whose argv names the container, e.g. ``docker exec NAME ...``);
- a database in a container: a ``postgres`` source with its ``container``
  and ``database``, a ``mysql`` source with its ``container`` listing the
  database (or ``all``), a ``redis`` source with its ``container``, a
  ``command`` naming the container, or every data mount of the container
  covered; on the host: a ``postgres`` source with that database and port,
  a ``mysql``/``redis`` source without container;
- a ``compose`` source covers its directory (as a ``files`` path), and the
  volumes, containers and databases of its project's services, except the
  services in its ``dumps`` (their app-native sources must cover those);
- the volumes of a container running PostgreSQL, MySQL/MariaDB or Redis are
  covered by that container's app-native source (a dump or RDB holds their
  data);
- a NATS server on the host: a ``nats`` source whose snapshot ``url`` is its client port
  on the host's loopback, or a stop-copy one without ``container``;
- PM2 apps: a ``pm2`` source of the dump's user; Caddy: a ``caddy`` source
  with that data dir or Caddyfile directory; certbot: a ``certbot`` source.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from drkit.discover.facts import ComposeProject, Container, Facts
from drkit.policy.models import (
    CaddyConfig,
    CertbotConfig,
    CommandConfig,
    ComposeConfig,
    DockerVolumeConfig,
    EnvConfig,
    FilesConfig,
    MysqlConfig,
    NatsConfig,
    Pm2Config,
    Policy,
    PostgresConfig,
    RedisConfig,
    source_name,
)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass
class Finding:
    """One thing the host runs. ``data``: it holds data a backup must cover (a volume,
    a database, an env file...), as opposed to what is listed for context (a container,
    a site). ``covered_by``: names of the policy's sources that cover it."""

    kind: str
    name: str
    where: str = "host"
    project: str = ""
    data: bool = True
    detail: str = ""
    covered_by: list[str] = field(default_factory=list)
    suggestion: dict[str, Any] | None = None

    @property
    def uncovered(self) -> bool:
        return self.data and not self.covered_by

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["uncovered"] = self.uncovered
        return out


def tar_excluded(path: str, excludes: list[str]) -> bool:
    """Whether GNU tar's ``--exclude`` patterns (unanchored, wildcards matching ``/``) leave
    ``path`` out: a pattern matching the path, one of its directories, or a run of their
    trailing components (``.env`` leaves out every file named .env)."""
    parts = path.strip("/").split("/")
    return any(
        fnmatch.fnmatchcase("/".join(parts[i : j + 1]), pattern)
        for pattern in excludes
        for j in range(len(parts))
        for i in range(j + 1)
    )


def path_covered(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` or one of its parent directories is (or matches) a pattern."""
    if not path.startswith("/"):
        return False
    candidates = [path, *(str(p) for p in PurePosixPath(path).parents)]
    for pattern in patterns:
        pattern = pattern.rstrip("/") or "/"
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            return True
    return False


class Coverage:
    """The policy's sources, indexed for the rules in the module doc."""

    def __init__(self, policy: Policy) -> None:
        self.paths: list[tuple[str, list[str]]] = []  # (source name, path patterns)
        self.excludes: dict[str, list[str]] = {}  # source name -> its tar --exclude patterns
        self.volumes: dict[str, list[str]] = {}
        self.postgres: list[PostgresConfig] = []
        self.redis: list[RedisConfig] = []
        self.mysql: list[MysqlConfig] = []
        self.compose: list[ComposeConfig] = []
        self.commands: list[tuple[str, list[str]]] = []
        self.pm2_users: dict[str, list[str]] = {}
        self.nats: list[NatsConfig] = []
        self.caddy: list[str] = []
        self.certbot: list[str] = []
        self.names = [source_name(s) for s in policy.source]
        for src in policy.source:
            name = source_name(src)
            if isinstance(src, FilesConfig | EnvConfig):
                self.paths.append((name, list(src.paths)))
                if isinstance(src, FilesConfig):
                    self.excludes[name] = list(src.exclude)
            elif isinstance(src, CaddyConfig):
                self.paths.append((name, [*src.config_paths, src.data_dir]))
                self.caddy.append(name)
            elif isinstance(src, CertbotConfig):
                self.paths.append((name, [src.dir]))
                self.certbot.append(name)
            elif isinstance(src, NatsConfig):
                self.nats.append(src)
                if src.store_dir:
                    self.paths.append((name, [src.store_dir]))
            elif isinstance(src, DockerVolumeConfig):
                self.volumes.setdefault(src.volume, []).append(name)
            elif isinstance(src, PostgresConfig):
                self.postgres.append(src)
            elif isinstance(src, RedisConfig):
                self.redis.append(src)
            elif isinstance(src, MysqlConfig):
                self.mysql.append(src)
            elif isinstance(src, ComposeConfig):
                self.compose.append(src)
                self.paths.append((name, [src.dir]))
                self.excludes[name] = list(src.exclude)
            elif isinstance(src, CommandConfig):
                self.commands.append((name, [*src.command, *(src.restore_command or [])]))
            elif isinstance(src, Pm2Config):
                self.pm2_users.setdefault(src.user, []).append(name)

    def path(self, path: str) -> list[str]:
        """Sources whose paths hold ``path`` and whose excludes do not leave it out."""
        return [
            name
            for name, patterns in self.paths
            if path_covered(path, patterns) and not tar_excluded(path, self.excludes.get(name, []))
        ]

    def naming(self, container: Container) -> list[str]:
        """Command sources whose argv names the container (as a whole word)."""
        names = {container.name, container.id[:12]} - {""}
        return [
            name
            for name, argv in self.commands
            if any(
                re.search(rf"(?<![\w.-]){re.escape(n)}(?![\w.-])", " ".join(argv)) for n in names
            )
        ]

    def postgres_in(self, container: Container, database: str | None = None) -> list[str]:
        return [
            source_name(s)
            for s in self.postgres
            if s.container and _same_container(s.container, container)
            and (database is None or s.database == database)
        ]  # fmt: skip

    def mysql_in(self, container: Container | None, database: str | None = None) -> list[str]:
        """``mysql`` sources dumping ``database`` (any: None) of the server in ``container``
        (None: the host's server)."""
        return [
            source_name(s)
            for s in self.mysql
            if (_same_container(s.container, container) if s.container and container
                else not s.container and container is None)
            and (database is None or s.databases == "all" or database in s.databases)
        ]  # fmt: skip

    def redis_in(self, container: Container | None) -> list[str]:
        """``redis`` sources of the server in ``container`` (None: on the host)."""
        return [
            source_name(s)
            for s in self.redis
            if (_same_container(s.container, container) if s.container and container
                else not s.container and container is None)
        ]  # fmt: skip

    def compose_of(self, container: Container) -> list[str]:
        """``compose`` sources copying the volumes of ``container``: its project's, unless
        its service is one of the source's ``dumps`` (an app-native source's then)."""
        return [
            source_name(s)
            for s in self.compose
            if container.project == s.project and container.service not in s.dumps
        ]

    def app_native(self, container: Container) -> list[str]:
        """Sources that back up the data of ``container`` by its own means."""
        found = self.naming(container)
        if container.engine == "postgres":
            found += self.postgres_in(container)
        if container.engine == "redis":
            found += self.redis_in(container)
        if container.engine == "mysql":
            found += self.mysql_in(container)
        if container.engine == "nats":
            found += [
                source_name(s)
                for s in self.nats
                if s.container is None or _same_container(s.container, container)
            ]
        return found

    def nats_on_host(self, port: int) -> list[str]:
        """``nats`` sources reaching a server on the host: the snapshot API on its client
        port (``url``; ``container`` is used by stop-copy only), or stop-copy of a host
        server (no ``container``)."""
        found = []
        for s in self.nats:
            if s.mode == "snapshot":
                url = urlsplit(s.url)
                local = url.hostname in ("127.0.0.1", "localhost", "::1")
                if local and (url.port or 4222) == port:
                    found.append(source_name(s))
            elif s.container is None:
                found.append(source_name(s))
        return found


def _same_container(ref: str, container: Container) -> bool:
    return ref in (container.name, container.id) or (
        len(ref) >= 12 and container.id.startswith(ref)
    )


def _volume_covered(cov: Coverage, facts: Facts, name: str) -> list[str]:
    found = list(cov.volumes.get(name, []))
    volume = next((v for v in facts.volumes if v.name == name), None)
    if volume is not None and volume.mountpoint:
        found += cov.path(volume.mountpoint)
    return found


def _mounts_covered(cov: Coverage, facts: Facts, container: Container) -> list[str] | None:
    """Sources covering every data mount of ``container`` file by file; None if one is not."""
    found: list[str] = []
    for m in container.mounts:
        if m.type == "volume":
            by = _volume_covered(cov, facts, m.volume)
        elif m.type == "bind":
            by = cov.path(m.source)
        else:
            continue
        if not by:
            return None
        found += by
    return found


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1000  # type: ignore[assignment]
    return ""


def assess(facts: Facts, policy: Policy) -> list[Finding]:
    """Every finding, in a stable order (compose projects first, then the rest)."""
    cov = Coverage(policy)
    out: list[Finding] = []
    for p in facts.projects:
        out += _project(cov, facts, p)
    out += _standalone(cov, facts)
    listed = {f.name for f in out if f.kind == "volume"}
    for v in facts.volumes:
        if v.name not in listed:
            by = _volume_covered(cov, facts, v.name)
            out.append(Finding("volume", v.name, "no container", v.project, True, v.mountpoint, by))
    run = {f for p in facts.projects for f in p.files}
    for path in facts.compose_files_found:  # a project that is down (or never started)
        if path not in run:
            detail = "on disk: no container runs it"
            out.append(Finding("compose-file", path, "host", "", True, detail, cov.path(path)))
    out += _databases(cov, facts, {c.name: c for c in facts.containers})
    out += _host_services(cov, facts)
    project_files = {f.name for f in out if f.kind == "env-file"}
    for path in facts.env_files:
        if path not in project_files:
            out.append(Finding("env-file", path, "host", "", True, "", cov.path(path)))
    return out


def _volume_finding(cov: Coverage, facts: Facts, name: str, project: str) -> Finding:
    """A named volume: covered by its own sources, a covered mountpoint, or its users'."""
    users = [c for c in facts.containers
             if any(m.type == "volume" and m.volume == name for m in c.mounts)]  # fmt: skip
    by = _volume_covered(cov, facts, name)
    for c in users:
        by += cov.app_native(c) + cov.compose_of(c)
    where = ", ".join(c.name for c in users) or "no container"
    mountpoint = next((v.mountpoint for v in facts.volumes if v.name == name), "")
    return Finding("volume", name, where, project, True, mountpoint, _unique(by))


def _project(cov: Coverage, facts: Facts, p: ComposeProject) -> list[Finding]:
    """A compose project (covered when all its parts are), its files, volumes and bind
    mounts, then its containers."""
    parts: list[Finding] = []
    for f in p.files:
        parts.append(Finding("compose-file", f, "host", p.name, True, "", cov.path(f)))
    for f in p.env_files:
        parts.append(Finding("env-file", f, "host", p.name, True, "compose", cov.path(f)))
    seen_volumes: list[str] = []
    for c in p.containers:
        for m in c.mounts:
            if m.type == "volume" and m.volume not in seen_volumes:
                seen_volumes.append(m.volume)
                parts.append(_volume_finding(cov, facts, m.volume, p.name))
            elif m.type == "bind":
                detail = f"{c.name}:{m.destination}" + (" (ro)" if m.read_only else "")
                parts.append(
                    Finding("bind", m.source, c.name, p.name, not m.read_only, detail,
                            cov.path(m.source))
                )  # fmt: skip
    covered = (
        [] if any(f.uncovered for f in parts) else _unique([n for f in parts for n in f.covered_by])
    )
    services = ", ".join(p.services)
    whole = Finding("compose-project", p.name, "host", p.name, True,
                    f"{p.working_dir}: {services}", covered)  # fmt: skip
    return [whole, *parts, *(_container_finding(cov, facts, c) for c in p.containers)]


def _standalone(cov: Coverage, facts: Facts) -> list[Finding]:
    """Containers outside compose projects (one-offs included), their volumes and
    writable bind mounts."""
    out: list[Finding] = []
    in_projects = {c.name for p in facts.projects for c in p.containers}  # not one-offs
    for c in facts.containers:
        if c.name in in_projects:
            continue
        out.append(_container_finding(cov, facts, c))
        for m in c.mounts:
            if m.type == "volume":
                out.append(_volume_finding(cov, facts, m.volume, ""))
            elif m.type == "bind" and not m.read_only:
                detail = f"{c.name}:{m.destination}"
                out.append(Finding("bind", m.source, c.name, "", True, detail, cov.path(m.source)))
    return out


def _host_services(cov: Coverage, facts: Facts) -> list[Finding]:
    """PM2 apps, Caddy/nginx sites, certificate stores, NATS servers."""
    out: list[Finding] = []
    for app in facts.pm2:
        out.append(
            Finding("pm2-app", app.name, "host", "", True, app.cwd or app.home,
                    list(cov.pm2_users.get(app.user, [])))
        )  # fmt: skip
    for site in facts.sites:
        by = cov.caddy if site.kind == "caddy" else cov.path("/etc/nginx/nginx.conf")
        out.append(Finding(f"{site.kind}-site", site.name, "host", "", False, site.config, by))
    for store in facts.cert_stores:
        by = cov.path(store.path)
        if store.kind == "certbot":
            by += cov.certbot
        detail = ", ".join(store.names[:6]) + (" ..." if len(store.names) > 6 else "")
        out.append(Finding(f"{store.kind}-certs", store.path, "host", "", True, detail, by))
    containers = {c.name: c for c in facts.containers}
    for server in facts.nats:
        if server.where == "host":
            by = cov.nats_on_host(server.port)
        else:
            runs = containers.get(server.where)
            by = cov.app_native(runs) if runs else []
        if server.store_dir and server.where == "host":
            by += cov.path(server.store_dir)
        out.append(
            Finding("nats-server", server.store_dir or server.where, server.where, "", True,
                    server.args[:80], _unique(by))
        )  # fmt: skip
    return out


def _container_finding(cov: Coverage, facts: Facts, c: Container) -> Finding:
    data_mounts = [m for m in c.mounts if m.type in ("volume", "bind") and not m.read_only]
    engine = f"{c.engine}, " if c.engine else ""
    detail = f"{engine}{c.image}, {c.state}"
    by = _mounts_covered(cov, facts, c)
    native = cov.app_native(c) + cov.compose_of(c)
    covered = _unique((by or []) + native) if (by is not None or native) else []
    return Finding("container", c.name, "docker", c.project, bool(data_mounts), detail, covered)


def _databases(cov: Coverage, facts: Facts, containers: dict[str, Container]) -> list[Finding]:
    out: list[Finding] = []
    servers: dict[tuple[str, str, str], list[str]] = {}
    for db in facts.databases:
        servers.setdefault((db.engine, db.container, db.cluster), []).append(db.name)
    for db in facts.databases:
        others = [n for n in servers[(db.engine, db.container, db.cluster)] if n != db.name]
        data = not (db.engine == "postgres" and db.name == "postgres" and others)
        size = _size(db.size)
        c = containers.get(db.container) if db.container else None
        if db.container and c is None:
            c = facts.container(db.container)
        if c is not None:
            by = cov.naming(c)
            if db.engine == "postgres":
                by += cov.postgres_in(c, db.name)
            elif db.engine == "mysql":
                by += cov.mysql_in(c, db.name)
            elif db.engine == "redis":
                by += cov.redis_in(c)
            by += (_mounts_covered(cov, facts, c) or []) + cov.compose_of(c)
            where, project = c.name, c.project
        elif db.engine == "mysql":
            by = cov.mysql_in(None, db.name)
            where, project = "host", ""
        elif db.engine == "redis":
            by = cov.redis_in(None)
            where, project = "host", ""
        else:
            by = [
                source_name(s)
                for s in cov.postgres
                if not s.container and s.database == db.name
                and (db.port is None or s.port == db.port)
            ]  # fmt: skip
            where, project = f"host {db.cluster}".strip(), ""
        if db.engine == "redis":
            kind, name, detail = "redis", db.container or "host", f"{db.name}: {db.size} keys"
        else:
            kind, name = f"{db.engine}-db", db.name
            port = f"port {db.port}" if db.port else ""
            detail = ", ".join(x for x in (port, size) if x)
        out.append(Finding(kind, name, where, project, data, detail, _unique(by)))
    return out
