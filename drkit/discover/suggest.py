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
from typing import Any

from drkit.discover.coverage import Finding, path_covered
from drkit.discover.facts import Facts
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


def suggestions(facts: Facts, findings: list[Finding], policy: Policy) -> list[dict[str, Any]]:
    """Sources (as TOML-ready dicts, ``#`` holding a comment) covering every uncovered
    data finding; each finding's ``suggestion`` names the source proposed for it."""
    taken = {source_name(s) for s in policy.source}
    out: list[dict[str, Any]] = []
    gaps = [f for f in findings if f.uncovered]
    by_project = {p.name: p for p in facts.projects}
    containers = {c.name: c for c in facts.containers}
    covered_paths: list[str] = []  # paths an earlier suggestion covers
    composed = {s.project for s in policy.source if isinstance(s, ComposeConfig)}

    def add(source: dict[str, Any], *found: Finding) -> None:
        out.append(source)
        for f in found:
            f.suggestion = {"source": source["name"]}

    # 2. PostgreSQL in containers: a dump per database, which also covers its volume.
    dumped: set[str] = set()
    for f in gaps:
        if f.kind != "postgres-db" or f.where not in containers:
            continue
        c = containers[f.where]
        dumped.add(c.name)
        add(
            {"#": f"PostgreSQL database {f.name} in container {c.name} (pg_dump in it)",
             "kind": "postgres", "name": _name(f"pg-{c.name}-{f.name}", taken),
             "database": f.name, "container": c.name, "user": "postgres"},
            f,
        )  # fmt: skip
    # MySQL/MariaDB (one dump of the container's databases) and Redis-protocol servers
    # (an RDB) in containers: app-native, consistent without stopping; cover their volumes.
    mysql: dict[str, list[Finding]] = {}
    for f in gaps:
        if f.kind == "mysql-db" and f.where in containers:
            mysql.setdefault(f.where, []).append(f)
    for cname, found in mysql.items():
        dumped.add(cname)
        add(
            {"#": f"MySQL/MariaDB in container {cname} (mysqldump in it); the password is "
             "read inside it: check the variable's name (docker exec NAME env)",
             "kind": "mysql", "name": _name(f"mysql-{cname}", taken), "container": cname,
             "databases": [f.name for f in found],
             "container_password_env": "MYSQL_ROOT_PASSWORD"},
            *found,
        )  # fmt: skip
    for f in gaps:
        if f.kind == "redis" and f.where in containers:
            dumped.add(f.where)
            add(
                {"#": f"Redis-protocol server in container {f.where} (RDB via redis-cli "
                 "--rdb; set port if it does not listen on 6379 inside)",
                 "kind": "redis", "name": _name(f"redis-{f.where}", taken),
                 "container": f.where},
                f,
            )  # fmt: skip
    for f in gaps:
        if f.kind == "volume" and any(u in dumped for u in f.where.split(", ")):
            f.suggestion = {"source": "the app-native sources of " + f.where}
        elif f.kind == "container" and f.where == "docker" and f.name in dumped:
            f.suggestion = {"source": "the app-native source of " + f.name}

    # 1. compose projects, after their databases' dumps: one compose source (directory,
    #    the other services' volumes, images) with the dumped services in its dumps.
    for project_name in dict.fromkeys(f.project for f in gaps if f.project):
        p = by_project.get(project_name)
        if p is None or not p.working_dir:
            continue
        parts = [f for f in gaps if f.project == p.name and f.suggestion is None and f.kind in
                 ("compose-file", "env-file", "bind", "compose-project", "volume")]  # fmt: skip
        if not parts:
            continue
        if p.name in composed:  # the policy's compose source, with the dumps above
            for f in parts:
                f.suggestion = {"source": "the policy's compose source and the sources above"}
            continue
        dumps = sorted({c.service for c in p.containers if c.name in dumped and c.service})
        note = (
            f"compose project {p.name}: its directory, its services' volumes (read with "
            "the project stopped), its images"
        )
        if dumps:
            note += f"; {', '.join(dumps)}: dumped by the source(s) above"
        unit: dict[str, Any] = {
            "#": note,
            "kind": "compose", "name": _name(f"compose-{p.name}", taken), "project": p.name,
            "dir": p.working_dir, "images": True,
        }  # fmt: skip
        if dumps:
            unit["dumps"] = dumps
        add(unit, *[f for f in parts if f.kind != "bind" or path_covered(f.name, [p.working_dir])])
        covered_paths.append(p.working_dir)
        outside = [f for f in parts if f.kind in ("bind", "compose-file", "env-file")
                   and not path_covered(f.name, [p.working_dir])]  # fmt: skip
        if outside:
            add(
                {"#": f"compose project {p.name}: files and bind mounts outside {p.working_dir}",
                 "kind": "files", "name": _name(f"compose-{p.name}-files", taken),
                 "paths": list(dict.fromkeys(f.name for f in outside))},
                *outside,
            )  # fmt: skip
            covered_paths.extend(f.name for f in outside)

    # 3. every other volume, file by file (databases in them are then covered too).
    for f in gaps:
        if f.kind != "volume" or f.suggestion is not None:
            continue
        users = [containers[u] for u in f.where.split(", ") if u in containers]
        source: dict[str, Any] = {
            "#": f"Docker volume {f.name}" + (f" of {f.where}" if users else ""),
            "kind": "docker_volume", "name": _name(f"volume-{f.name}", taken), "volume": f.name,
        }  # fmt: skip
        if any(c.engine in ("postgres", "mysql") for c in users):
            source["#"] += (
                "; a database: stop its container while the volume is read (stop_label) "
                "or dump it in place"
            )
        add(source, f)

    # 4. standalone containers' bind mounts, host databases, the rest.
    binds = [f for f in gaps if f.kind == "bind" and f.suggestion is None]
    if binds:
        add({"#": "bind mounts of standalone containers", "kind": "files",
             "name": _name("container-binds", taken),
             "paths": list(dict.fromkeys(f.name for f in binds))}, *binds)  # fmt: skip
    for f in gaps:
        if f.kind == "postgres-db" and f.suggestion is None and not f.where.startswith("host"):
            continue
        if f.kind == "postgres-db" and f.suggestion is None:
            db = next((d for d in facts.databases if d.name == f.name and not d.container), None)
            source = {"#": f"PostgreSQL database {f.name} ({f.where})", "kind": "postgres",
                      "name": _name(f"pg-{f.name}", taken), "database": f.name}  # fmt: skip
            if db is not None and db.port:
                source["port"] = db.port
            if facts.user != "postgres":
                source["sudo_user"] = "postgres"
            add(source, f)
    env = [f for f in gaps if f.kind == "env-file" and f.suggestion is None
           and not path_covered(f.name, covered_paths)]  # fmt: skip
    if env:
        add({"#": ".env files", "kind": "env", "name": _name("env-discovered", taken),
             "paths": [f.name for f in env]}, *env)  # fmt: skip
    pm2_users = {a.user for a in facts.pm2}
    for user in sorted(pm2_users):
        apps = [f for f in gaps if f.kind == "pm2-app" and f.suggestion is None and any(
            a.name == f.name and a.user == user for a in facts.pm2)]  # fmt: skip
        if apps:
            add({"#": f"PM2 apps of {user}", "kind": "pm2", "name": _name(f"pm2-{user}", taken),
                 "user": user}, *apps)  # fmt: skip
    for f in gaps:
        if f.suggestion is not None:
            continue
        if f.kind == "caddy-certs":
            add({"#": "Caddy: Caddyfile and certificates", "kind": "caddy",
                 "name": _name("caddy", taken), "data_dir": f.name}, f)  # fmt: skip
        elif f.kind == "certbot-certs":
            add({"#": "Let's Encrypt certificates (certbot)", "kind": "certbot",
                 "name": _name("certbot", taken)}, f)  # fmt: skip
        elif f.kind == "nats-server" and f.where == "host":
            add({"#": "NATS JetStream streams (snapshot API)", "kind": "nats",
                 "name": _name("nats", taken)}, f)  # fmt: skip
        elif f.kind == "nats-server":
            add({"#": f"NATS JetStream in container {f.where}: set url to where the "
                 "host reaches it", "kind": "nats", "name": _name(f"nats-{f.where}", taken)},
                f)  # fmt: skip
    return out


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
