"""``drkit discover --suggest``: policy TOML for what no source covers.

``suggestions(facts, findings, policy)`` proposes one source per gap, with names
not used by the policy: a ``compose`` source per compose project (its directory,
the volumes of the services not dumped otherwise, its images; ``dumps`` naming
the services below), a ``files`` source for its binds outside the directory, a ``postgres`` source
per database for a PostgreSQL container, a ``mysql`` source per MySQL/MariaDB
container and a ``redis`` source per Redis-protocol container (app-native
dumps, which cover their volumes), a ``docker_volume`` source for every other
uncovered volume, ``env`` for stray ``.env`` files, ``postgres`` for host
databases, ``pm2``, ``caddy``, ``certbot`` and ``nats`` sources.
``render(...)`` prints them as ``[[source]]`` tables: appended to the policy
file, it validates (``drkit policy validate``) and a second ``drkit discover`` reports them covered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from drkit.discover.coverage import Finding, path_covered
from drkit.discover.facts import Container, Facts
from drkit.policy.models import ComposeConfig, Policy, source_name


def _name(wanted: str, taken: set[str]) -> str:
    """A source name (``^[a-z0-9][a-z0-9._-]{0,62}$``) from ``wanted``, not in ``taken``."""
    base = re.sub(r"[^a-z0-9._-]+", "-", wanted.lower()).strip("-._")[:56] or "source"
    if not base[0].isalnum():
        base = "s" + base
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


@dataclass
class _Plan:
    """What ``suggestions`` builds, phase by phase: the sources proposed so far (``out``)
    and what the later phases must know of the earlier ones."""

    facts: Facts
    gaps: list[Finding]  # uncovered data findings
    taken: set[str]  # source names in use (the policy's and the proposed ones)
    composed: set[str]  # projects the policy already has a compose source for
    out: list[dict[str, Any]] = field(default_factory=list)
    dumped: set[str] = field(default_factory=set)  # containers given an app-native source
    covered_paths: list[str] = field(default_factory=list)  # paths a proposal covers

    @property
    def containers(self) -> dict[str, Container]:
        return {c.name: c for c in self.facts.containers}

    def name(self, wanted: str) -> str:
        return _name(wanted, self.taken)

    def add(self, source: dict[str, Any], *found: Finding) -> None:
        self.out.append(source)
        for f in found:
            f.suggestion = {"source": source["name"]}

    def open(self, kind: str) -> list[Finding]:
        """Gaps of ``kind`` that no proposal covers yet."""
        return [f for f in self.gaps if f.kind == kind and f.suggestion is None]


def suggestions(facts: Facts, findings: list[Finding], policy: Policy) -> list[dict[str, Any]]:
    """Sources (as TOML-ready dicts, ``#`` holding a comment) covering every uncovered
    data finding; each finding's ``suggestion`` names the source proposed for it."""
    plan = _Plan(
        facts,
        [f for f in findings if f.uncovered],
        {source_name(s) for s in policy.source},
        {s.project for s in policy.source if isinstance(s, ComposeConfig)},
    )
    _container_databases(plan)  # first: a compose source's dumps name them
    for project in dict.fromkeys(f.project for f in plan.gaps if f.project):
        _compose_project(plan, project)
    _volumes(plan)
    _host_data(plan)
    _host_services(plan)
    return plan.out


def _container_databases(plan: _Plan) -> None:
    """PostgreSQL in containers: a dump per database; MySQL/MariaDB: one dump of the
    container's databases; Redis-protocol servers: an RDB. App-native, consistent
    without stopping, and they cover their containers' volumes."""
    containers = plan.containers
    for f in plan.gaps:
        if f.kind != "postgres-db" or f.where not in containers:
            continue
        c = containers[f.where]
        plan.dumped.add(c.name)
        plan.add(
            {"#": f"PostgreSQL database {f.name} in container {c.name} (pg_dump in it)",
             "kind": "postgres", "name": plan.name(f"pg-{c.name}-{f.name}"),
             "database": f.name, "container": c.name, "user": "postgres"},
            f,
        )  # fmt: skip
    mysql: dict[str, list[Finding]] = {}
    for f in plan.gaps:
        if f.kind == "mysql-db" and f.where in containers:
            mysql.setdefault(f.where, []).append(f)
    for cname, found in mysql.items():
        plan.dumped.add(cname)
        plan.add(
            {"#": f"MySQL/MariaDB in container {cname} (mysqldump in it); the password is "
             "read inside it: check the variable's name (docker exec NAME env)",
             "kind": "mysql", "name": plan.name(f"mysql-{cname}"), "container": cname,
             "databases": [f.name for f in found],
             "container_password_env": "MYSQL_ROOT_PASSWORD"},
            *found,
        )  # fmt: skip
    for f in plan.gaps:
        if f.kind == "redis" and f.where in containers:
            plan.dumped.add(f.where)
            plan.add(
                {"#": f"Redis-protocol server in container {f.where} (RDB via redis-cli "
                 "--rdb; set port if it does not listen on 6379 inside)",
                 "kind": "redis", "name": plan.name(f"redis-{f.where}"), "container": f.where},
                f,
            )  # fmt: skip
    for f in plan.gaps:
        if f.kind == "volume" and any(u in plan.dumped for u in f.where.split(", ")):
            f.suggestion = {"source": "the app-native sources of " + f.where}
        elif f.kind == "container" and f.where == "docker" and f.name in plan.dumped:
            f.suggestion = {"source": "the app-native source of " + f.name}


def _compose_project(plan: _Plan, project: str) -> None:
    """One compose source (its directory, the other services' volumes, its images) with
    the services dumped above in its ``dumps``; a files source for what lies outside."""
    p = next((p for p in plan.facts.projects if p.name == project), None)
    if p is None or not p.working_dir:
        return
    parts = [f for f in plan.gaps if f.project == p.name and f.suggestion is None and f.kind in
             ("compose-file", "env-file", "bind", "compose-project", "volume")]  # fmt: skip
    if not parts:
        return
    if p.name in plan.composed:  # the policy's compose source, with the dumps above
        for f in parts:  # a file its exclude leaves out is left to the phases below
            if f.kind in ("volume", "compose-project"):
                f.suggestion = {"source": "the policy's compose source and the sources above"}
        return
    dumps = sorted({c.service for c in p.containers if c.name in plan.dumped and c.service})
    note = (
        f"compose project {p.name}: its directory, its services' volumes (read with "
        "the project stopped), its images"
    )
    if dumps:
        note += f"; {', '.join(dumps)}: dumped by the source(s) above"
    unit: dict[str, Any] = {
        "#": note,
        "kind": "compose", "name": plan.name(f"compose-{p.name}"), "project": p.name,
        "dir": p.working_dir, "images": True,
    }  # fmt: skip
    if dumps:
        unit["dumps"] = dumps
    inside = [f for f in parts if f.kind != "bind" or path_covered(f.name, [p.working_dir])]
    plan.add(unit, *inside)
    plan.covered_paths.append(p.working_dir)
    outside = [f for f in parts if f.kind in ("bind", "compose-file", "env-file")
               and not path_covered(f.name, [p.working_dir])]  # fmt: skip
    if outside:
        plan.add(
            {"#": f"compose project {p.name}: files and bind mounts outside {p.working_dir}",
             "kind": "files", "name": plan.name(f"compose-{p.name}-files"),
             "paths": list(dict.fromkeys(f.name for f in outside))},
            *outside,
        )  # fmt: skip
        plan.covered_paths.extend(f.name for f in outside)


def _volumes(plan: _Plan) -> None:
    """Every other volume, file by file (databases in them are then covered too)."""
    containers = plan.containers
    for f in plan.open("volume"):
        users = [containers[u] for u in f.where.split(", ") if u in containers]
        source: dict[str, Any] = {
            "#": f"Docker volume {f.name}" + (f" of {f.where}" if users else ""),
            "kind": "docker_volume", "name": plan.name(f"volume-{f.name}"), "volume": f.name,
        }  # fmt: skip
        if any(c.engine in ("postgres", "mysql") for c in users):
            source["#"] += (
                "; a database: stop its container while the volume is read (stop_label) "
                "or dump it in place"
            )
        plan.add(source, f)


def _host_data(plan: _Plan) -> None:
    """Standalone containers' bind mounts, host databases, compose projects that are down,
    stray .env files."""
    facts = plan.facts
    binds = plan.open("bind")
    if binds:
        plan.add({"#": "bind mounts of standalone containers", "kind": "files",
                  "name": plan.name("container-binds"),
                  "paths": list(dict.fromkeys(f.name for f in binds))}, *binds)  # fmt: skip
    for f in plan.open("postgres-db"):
        if not f.where.startswith("host"):
            continue
        db = next((d for d in facts.databases if d.name == f.name and not d.container), None)
        source: dict[str, Any] = {
            "#": f"PostgreSQL database {f.name} ({f.where})", "kind": "postgres",
            "name": plan.name(f"pg-{f.name}"), "database": f.name,
        }  # fmt: skip
        if db is not None and db.port:
            source["port"] = db.port
        if facts.user != "postgres":
            source["sudo_user"] = "postgres"
        plan.add(source, f)
    down = [f for f in plan.open("compose-file") if not f.project]
    if down:  # projects no container runs: their directories (Dockerfiles, configs...)
        dirs = list(dict.fromkeys(f.name.rsplit("/", 1)[0] or "/" for f in down))
        source = {"#": "compose projects no container runs: their directories",
                  "kind": "files", "name": plan.name("compose-down"), "paths": dirs}  # fmt: skip
        plan.add(source, *down)
        plan.covered_paths.extend(dirs)
    env = [f for f in plan.open("env-file") if not path_covered(f.name, plan.covered_paths)]
    if env:
        plan.add({"#": ".env files", "kind": "env", "name": plan.name("env-discovered"),
                  "paths": [f.name for f in env]}, *env)  # fmt: skip


def _host_services(plan: _Plan) -> None:
    """PM2 apps per user, Caddy, certbot, NATS."""
    for user in sorted({a.user for a in plan.facts.pm2}):
        apps = [f for f in plan.open("pm2-app") if any(
            a.name == f.name and a.user == user for a in plan.facts.pm2)]  # fmt: skip
        if apps:
            plan.add({"#": f"PM2 apps of {user}", "kind": "pm2", "name": plan.name(f"pm2-{user}"),
                      "user": user}, *apps)  # fmt: skip
    for f in plan.gaps:
        if f.suggestion is not None:
            continue
        if f.kind == "caddy-certs":
            plan.add({"#": "Caddy: Caddyfile and certificates", "kind": "caddy",
                      "name": plan.name("caddy"), "data_dir": f.name}, f)  # fmt: skip
        elif f.kind == "certbot-certs":
            plan.add({"#": "Let's Encrypt certificates (certbot)", "kind": "certbot",
                      "name": plan.name("certbot")}, f)  # fmt: skip
        elif f.kind == "nats-server" and f.where == "host":
            plan.add({"#": "NATS JetStream streams (snapshot API)", "kind": "nats",
                      "name": plan.name("nats")}, f)  # fmt: skip
        elif f.kind == "nats-server":
            plan.add({"#": f"NATS JetStream in container {f.where}: set url to where the "
                      "host reaches it", "kind": "nats", "name": plan.name(f"nats-{f.where}")},
                     f)  # fmt: skip


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string for what we write


def render(sources: list[dict[str, Any]], host: str) -> str:
    """``[[source]]`` tables to append to ``host``'s policy file."""
    if not sources:
        return f"# drkit discover --suggest: every source of data on {host} is covered\n"
    lines = [
        f"\n# Suggested by `drkit discover --host {host} --suggest`: sources for what no",
        "# source of the policy covers. Review names and options before relying on them.",
    ]
    for source in sources:
        lines.append("")
        if "#" in source:
            lines.append(f"# {source['#']}")
        lines.append("[[source]]")
        lines += [f"{k} = {_toml(v)}" for k, v in source.items() if k != "#"]
    return "\n".join(lines) + "\n"
