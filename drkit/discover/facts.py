"""What a host runs, parsed from the output of ``drkit/discover/script.py``.

``parse(output)`` turns the script's sections into ``Facts``: compose projects
(from the containers' compose labels, whichever compose made them: v1 names
containers ``project_service_1``, v2 ``project-service-1``; both set the same
labels), standalone containers, named volumes, databases in PostgreSQL
clusters on the host and in containers, MySQL/MariaDB and Redis-protocol
servers in containers, PM2 apps, Caddy and nginx sites, certificate stores,
NATS servers and ``.env`` files. Pure functions over text: tested on recorded
outputs (tests/unit/test_discover_parsing.py).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from drkit.discover.script import MARKER

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_WORKDIR = "com.docker.compose.project.working_dir"
COMPOSE_FILES = "com.docker.compose.project.config_files"
COMPOSE_ENV_FILE = "com.docker.compose.project.environment_file"
COMPOSE_ONEOFF = "com.docker.compose.oneoff"

# What a container's image, command and processes say it runs (first match wins).
ENGINES: list[tuple[str, re.Pattern[str]]] = [
    ("postgres", re.compile(r"postgres|supabase/postgres|pgvector|timescale", re.I)),
    ("mysql", re.compile(r"mysqld|mariadbd|\bmysql\b|\bmariadb\b", re.I)),
    ("redis", re.compile(r"redis-server|redis|falkordb|valkey|keydb|dragonfly", re.I)),
    ("nats", re.compile(r"nats-server|\bnats\b", re.I)),
]


@dataclass
class Mount:
    """A container's mount: a named volume (``volume``) or a bind mount (``source`` path)."""

    type: str  # "volume" | "bind" | "tmpfs" ...
    destination: str
    source: str = ""
    volume: str = ""
    read_only: bool = False


@dataclass
class Container:
    id: str
    name: str
    image: str
    state: str
    command: str
    project: str = ""
    service: str = ""
    working_dir: str = ""
    config_files: list[str] = field(default_factory=list)
    env_file: str = ""
    mounts: list[Mount] = field(default_factory=list)
    engine: str = ""  # postgres | mysql | redis | nats | ""
    oneoff: bool = False  # `docker compose run`: not one of the project's services


@dataclass
class Volume:
    name: str
    mountpoint: str
    driver: str = "local"
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def project(self) -> str:
        return self.labels.get(COMPOSE_PROJECT, "")


@dataclass
class ComposeProject:
    name: str
    working_dir: str
    files: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    containers: list[Container] = field(default_factory=list)

    @property
    def services(self) -> list[str]:
        return sorted({c.service for c in self.containers if c.service})

    @property
    def volumes(self) -> list[str]:
        """Named volumes its containers mount, in the order first mounted."""
        names = [m.volume for c in self.containers for m in c.mounts if m.type == "volume"]
        return list(dict.fromkeys(names))

    @property
    def binds(self) -> list[str]:
        """Host paths its containers bind-mount."""
        paths = [m.source for c in self.containers for m in c.mounts if m.type == "bind"]
        return list(dict.fromkeys(paths))


@dataclass
class Database:
    """A database (or keyspace) in a server: ``container`` is "" for one on the host."""

    engine: str  # postgres | mysql | redis
    name: str
    container: str = ""
    port: int | None = None
    cluster: str = ""
    size: int | None = None


@dataclass
class Pm2App:
    name: str
    home: str
    user: str
    cwd: str = ""
    script: str = ""


@dataclass
class Site:
    kind: str  # caddy | nginx
    name: str
    config: str


@dataclass
class CertStore:
    kind: str  # caddy | certbot
    path: str
    names: list[str] = field(default_factory=list)


@dataclass
class NatsServer:
    where: str  # "host" or the container's name
    args: str
    store_dir: str = ""
    port: int = 4222  # its client port (-p/--port)


@dataclass
class Facts:
    """Everything the script found; ``errors`` are sections that could not be read."""

    user: str = ""
    hostname: str = ""
    docker: str = ""  # server version, "" without Docker
    containers: list[Container] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    projects: list[ComposeProject] = field(default_factory=list)
    compose_files_found: list[str] = field(default_factory=list)
    compose_texts: dict[str, str] = field(default_factory=dict)
    databases: list[Database] = field(default_factory=list)
    pm2: list[Pm2App] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    cert_stores: list[CertStore] = field(default_factory=list)
    nats: list[NatsServer] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def container(self, name: str) -> Container | None:
        for c in self.containers:
            if name in (c.name, c.id) or (len(name) >= 12 and c.id.startswith(name)):
                return c
        return None


def sections(output: str) -> list[tuple[str, str, str]]:
    """(name, argument, body) for each section of the script's output, in order."""
    found: list[tuple[str, str, str]] = []
    current: tuple[str, str] | None = None
    lines: list[str] = []
    for line in output.splitlines():
        if line.startswith(MARKER + " "):
            if current is not None:
                found.append((*current, "\n".join(lines).strip("\n")))
            name, _, arg = line[len(MARKER) + 1 :].partition(" ")
            current, lines = (name, arg.strip()), []
        elif current is not None:
            lines.append(line)
    if current is not None:
        found.append((*current, "\n".join(lines).strip("\n")))
    return found


@dataclass
class _Raw:
    """What ``parse`` keeps from the sections until the end (processes, containers'
    cgroups, engines seen in containers' processes)."""

    ps_lines: list[str] = field(default_factory=list)
    in_containers: dict[str, str] = field(default_factory=dict)  # pid -> cgroup line
    detected: dict[str, str] = field(default_factory=dict)  # container -> engine it runs


def parse(output: str) -> Facts:
    """``Facts`` from the whole output of the discovery script."""
    facts = Facts()
    raw = _Raw()
    for name, arg, body in sections(output):
        if name.startswith("container-"):  # container-postgres, -mysql, -redis
            raw.detected[arg] = name.removeprefix("container-")
        if name.startswith(("docker-", "container-", "compose-")):
            _docker_section(facts, name, arg, body)
        else:
            _host_section(facts, raw, name, arg, body)
    for name, engine in raw.detected.items():  # found by the processes it runs (docker top)
        c = facts.container(name)
        if c is not None and not c.engine:
            c.engine = engine
    facts.projects = compose_projects(facts.containers, facts.compose_texts)
    facts.nats = nats_servers(raw.ps_lines, raw.in_containers, facts.containers)
    return facts


def _docker_section(facts: Facts, name: str, arg: str, body: str) -> None:
    """Docker's sections: the engine, containers, volumes, databases in containers,
    compose files."""
    if name == "docker-version":
        facts.docker = body.strip() if re.fullmatch(r"[\w.+~-]+", body.strip()) else ""
        if not facts.docker:
            facts.errors.append(f"docker: {_first_line(body)}")
    elif name == "docker-containers":
        facts.containers = _json_list(body, "docker inspect", facts, parse_container)
    elif name == "docker-volumes":
        facts.volumes = _json_list(body, "docker volume inspect", facts, parse_volume)
    elif name == "container-postgres":
        facts.databases += _postgres_databases(body, arg, facts, container=arg)
    elif name == "container-mysql":
        facts.databases += _mysql_databases(body, arg, facts)
    elif name == "container-redis":
        facts.databases += _redis_keyspaces(body, arg)
    elif name == "compose-file":
        facts.compose_texts[arg] = body
    elif name == "compose-files-found":
        facts.compose_files_found = _paths(body)


def _host_section(facts: Facts, raw: _Raw, name: str, arg: str, body: str) -> None:
    """The host's own sections: login, processes, PostgreSQL clusters, PM2, web servers,
    certificate stores, .env files."""
    if name == "whoami":
        words = body.split()
        facts.user, facts.hostname = [*words, "", ""][:2]
    elif name == "ps":
        raw.ps_lines = [line for line in body.splitlines() if line.strip()]
    elif name == "containerized":
        for line in body.splitlines():
            pid, _, cgroup = line.strip().partition(" ")
            raw.in_containers[pid] = cgroup
    elif name == "pg-databases":
        version, cluster, port = [*arg.split(), "", "", ""][:3]
        facts.databases += _postgres_databases(
            body, f"cluster {version}/{cluster}", facts,
            port=int(port) if port.isdigit() else None, cluster=f"{version}/{cluster}",
        )  # fmt: skip
    elif name == "pm2":
        facts.pm2 = parse_pm2(body)
    elif name == "caddyfile":
        facts.sites += [Site("caddy", s, arg) for s in caddy_sites(body)]
    elif name == "caddy-certs":
        facts.cert_stores.append(CertStore("caddy", arg, _paths(body)))
    elif name == "nginx":
        facts.sites += [Site("nginx", s, "/etc/nginx") for s in nginx_names(body)]
    elif name == "certbot":
        facts.cert_stores.append(CertStore("certbot", "/etc/letsencrypt", _paths(body)))
    elif name == "env-files":
        facts.env_files = _paths(body)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[0][:200]


def _paths(body: str) -> list[str]:
    return sorted({line.strip() for line in body.splitlines() if line.strip().startswith("/")})


def _json_list(body: str, what: str, facts: Facts, each: Any) -> list[Any]:
    try:
        items = json.loads(body)
    except json.JSONDecodeError:
        facts.errors.append(f"{what}: {_first_line(body)}")
        return []
    return [each(item) for item in items if isinstance(item, dict)]


def parse_container(info: dict[str, Any]) -> Container:
    """A ``Container`` from one element of ``docker inspect``'s array."""
    config = info.get("Config") or {}
    labels = config.get("Labels") or {}
    command = " ".join([str(info.get("Path") or ""), *map(str, info.get("Args") or [])]).strip()
    mounts = [
        Mount(
            type=str(m.get("Type", "")),
            destination=str(m.get("Destination", "")),
            source=str(m.get("Source", "")),
            volume=str(m.get("Name", "")) if m.get("Type") == "volume" else "",
            read_only=not m.get("RW", True),
        )
        for m in info.get("Mounts") or []
    ]
    image = str(config.get("Image") or info.get("Image") or "")
    working_dir = str(labels.get(COMPOSE_WORKDIR, ""))
    files = [f for f in str(labels.get(COMPOSE_FILES, "")).split(",") if f]
    env_file = str(labels.get(COMPOSE_ENV_FILE, ""))
    return Container(
        id=str(info.get("Id", "")),
        name=str(info.get("Name", "")).lstrip("/"),
        image=image,
        state=str((info.get("State") or {}).get("Status", "")),
        command=command,
        project=str(labels.get(COMPOSE_PROJECT, "")),
        service=str(labels.get(COMPOSE_SERVICE, "")),
        working_dir=working_dir,
        config_files=[_absolute(f, working_dir) for f in files],
        env_file=_absolute(env_file, working_dir) if env_file else "",
        mounts=mounts,
        engine=container_engine(image, command),
        oneoff=str(labels.get(COMPOSE_ONEOFF, "")).lower() == "true",
    )


def container_engine(image: str, command: str, processes: str = "") -> str:
    """postgres, mysql, redis or nats when the image, command or processes name one."""
    for engine, pattern in ENGINES:
        if pattern.search(f"{image} {command} {processes}"):
            return engine
    return ""


def _absolute(path: str, working_dir: str) -> str:
    if path.startswith("/") or not working_dir:
        return path
    return f"{working_dir.rstrip('/')}/{path.removeprefix('./')}"


def parse_volume(info: dict[str, Any]) -> Volume:
    return Volume(
        name=str(info.get("Name", "")),
        mountpoint=str(info.get("Mountpoint", "")),
        driver=str(info.get("Driver", "local")),
        labels={str(k): str(v) for k, v in (info.get("Labels") or {}).items()},
    )


def compose_projects(
    containers: list[Container], compose_texts: dict[str, str] | None = None
) -> list[ComposeProject]:
    """The compose projects the containers belong to (one-off ``run`` containers left out),
    with their files and env files: the project's (``.env`` beside the first file, or
    the label v2 sets) and each service's ``env_file:`` entries read from the files."""
    projects: dict[str, ComposeProject] = {}
    for c in containers:
        if not c.project or c.oneoff:
            continue
        p = projects.setdefault(c.project, ComposeProject(c.project, c.working_dir))
        p.working_dir = p.working_dir or c.working_dir
        p.files += [f for f in c.config_files if f not in p.files]
        if c.env_file and c.env_file not in p.env_files:
            p.env_files.append(c.env_file)
        p.containers.append(c)
    for p in projects.values():
        for f in p.files:
            text = (compose_texts or {}).get(f)
            if text is None:
                continue
            base = f.rpartition("/")[0] or p.working_dir
            for env in compose_env_files(text):
                path = _absolute(env, base)
                if path not in p.env_files:
                    p.env_files.append(path)
    return sorted(projects.values(), key=lambda p: p.name)


def compose_env_files(text: str) -> list[str]:
    """The ``env_file:`` values of a compose file (a string, a list, or a list of
    ``path:`` mappings), read line by line: no YAML parser is needed for these."""
    found: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)env_file:\s*(.*?)\s*(#.*)?$", line)
        if not m:
            continue
        indent, value = len(m[1]), m[2]
        if value.startswith("["):
            found += [_unquote(v) for v in value.strip("[]").split(",") if v.strip()]
        elif value:
            found.append(_unquote(value))
        else:
            for item in lines[i + 1 :]:
                if not item.strip() or item.lstrip().startswith("#"):
                    continue
                im = re.match(r"^(\s*)-\s*(?:path:\s*)?(.*?)\s*(#.*)?$", item)
                if not im or len(im[1]) < indent:
                    break
                found.append(_unquote(im[2]))
    return [f for f in found if f]


def _unquote(value: str) -> str:
    return value.strip().strip("'\"")


def _postgres_databases(
    body: str, where: str, facts: Facts, *, container: str = "", port: int | None = None,
    cluster: str = "",
) -> list[Database]:  # fmt: skip
    found: list[Database] = []
    for line in body.splitlines():
        name, sep, size = line.partition("|")
        if sep and size.strip().isdigit():
            found.append(Database("postgres", name, container, port, cluster, int(size)))
    if not found:
        facts.errors.append(f"postgres databases in {where}: {_first_line(body)}")
    return found


def _mysql_databases(body: str, container: str, facts: Facts) -> list[Database]:
    system = {"information_schema", "mysql", "performance_schema", "sys"}
    names = [line.strip() for line in body.splitlines() if re.fullmatch(r"[\w$-]+", line.strip())]
    if not names:
        facts.errors.append(f"mysql databases in {container}: {_first_line(body)}")
    return [Database("mysql", n, container) for n in names if n not in system]


def _redis_keyspaces(body: str, container: str) -> list[Database]:
    """One entry per server: its keyspaces (``db0:keys=2,...``) and their keys in all."""
    spaces = re.findall(r"^(db\d+):keys=(\d+)", body, re.M)
    names = ",".join(name for name, _keys in spaces) or "db0"
    return [Database("redis", names, container, size=sum(int(keys) for _n, keys in spaces))]


def parse_pm2(body: str) -> list[Pm2App]:
    """PM2 apps per dump: ``@home DIR USER`` lines, then the dump's name/cwd/script keys."""
    apps: dict[tuple[str, str], Pm2App] = {}
    home, user = "", ""
    last: Pm2App | None = None
    for line in body.splitlines():
        if line.startswith("@home "):
            home, _, user = line[6:].strip().partition(" ")
            last = None
            continue
        m = re.fullmatch(r'"(name|pm_cwd|pm_exec_path)":\s*"(.*)"', line.strip())
        if not m or not home:
            continue
        if m[1] == "name":
            last = apps.setdefault((home, m[2]), Pm2App(m[2], home, user or "root"))
        elif last is not None and m[1] == "pm_cwd":
            last.cwd = last.cwd or m[2]
        elif last is not None:
            last.script = last.script or m[2]
    return list(apps.values())


def caddy_sites(text: str) -> list[str]:
    """Site addresses of a Caddyfile: the labels before each top-level ``{`` (not the
    global options block, not ``(snippet)`` definitions)."""
    sites: list[str] = []
    depth = 0
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if depth == 0 and line.endswith("{"):
            labels = line[:-1].strip()
            if labels and not labels.startswith("("):
                sites += [s for s in re.split(r"[,\s]+", labels) if s]
        depth += line.count("{") - line.count("}")
        depth = max(depth, 0)
    return sites


def nginx_names(text: str) -> list[str]:
    names: list[str] = []
    for m in re.finditer(r"server_name\s+([^;]*);", text):
        names += [n for n in m[1].split() if n not in ("_", "localhost") and n not in names]
    return names


def nats_servers(
    ps_lines: list[str], in_containers: dict[str, str], containers: list[Container]
) -> list[NatsServer]:
    """nats-server processes on the host (not in a container) and containers running one."""
    found: list[NatsServer] = []
    for line in ps_lines:
        pid, _, rest = line.strip().partition(" ")
        _user, _, args = rest.strip().partition(" ")
        if "nats-server" not in args or pid in in_containers:
            continue
        port = _flag(args, ("-p", "--port"))
        port_number = int(port) if port.isdigit() else 4222
        found.append(NatsServer("host", args.strip(), _flag(args, STORE_FLAGS), port_number))
    for c in containers:
        if c.engine == "nats" and c.state == "running":
            store = _flag(c.command, STORE_FLAGS) or next(
                (m.destination for m in c.mounts if m.type in ("volume", "bind")), ""
            )
            found.append(NatsServer(c.name, c.command, store))
    return found


STORE_FLAGS = ("-sd", "--store_dir", "--sd")


def _flag(args: str, flags: tuple[str, ...]) -> str:
    """The value of the first of ``flags`` in a command line (``-f V`` or ``-f=V``), or ""."""
    try:
        words = shlex.split(args)
    except ValueError:
        words = args.split()
    for i, word in enumerate(words):
        for flag in flags:
            if word == flag and i + 1 < len(words):
                return words[i + 1]
            if word.startswith(flag + "="):
                return word.split("=", 1)[1]
    return ""
