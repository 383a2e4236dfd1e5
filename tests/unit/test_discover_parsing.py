"""``drkit discover``'s parsing, coverage and suggestions, on recorded and written outputs.

test_discover_dockerhost.txt is the discovery script's output recorded on the
dockerhost test image (docker/hosts/dockerhost, compose v1) with its stack up,
the ``docker inspect`` documents cut to the fields drkit reads.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from drkit.actions.discover import judge
from drkit.discover.coverage import path_covered
from drkit.discover.facts import (
    caddy_sites,
    compose_env_files,
    nginx_names,
    parse,
    parse_pm2,
    sections,
)
from drkit.discover.script import MARKER, SCRIPT
from drkit.policy.loader import load_policy
from drkit.policy.models import Policy
from tests.helpers import local_signer

RECORDED = (Path(__file__).parent / "test_discover_dockerhost.txt").read_text()
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def policy(tmp_path: Path, sources: str = "", name: str = "p.toml") -> Policy:
    path = tmp_path / name
    path.write_text(
        f'host = "dockerhost"\n[repository]\nurl = "file://{tmp_path}/repo"\n'
        f'[encryption]\nrecipients = ["{RECIPIENT}"]\nsigners = ["{local_signer()}"]\n'
        + (sources or '[[source]]\nkind = "env"\nname = "env"\npaths = ["/opt/*/.env"]\n')
    )
    return load_policy(path)


def by(findings: list, kind: str) -> dict:
    return {f.name: f for f in findings if f.kind == kind}


def test_recorded_dockerhost_parses_into_the_compose_stack() -> None:
    facts = parse(RECORDED)
    assert (facts.user, facts.hostname, facts.docker) == ("root", "dockerhost", "20.10.24+dfsg1")
    [project] = facts.projects
    assert project.name == "shop" and project.working_dir == "/srv/shop"
    assert project.files == ["/srv/shop/docker-compose.yml"]
    assert project.env_files == ["/srv/shop/.env"]  # from the services' env_file: lines
    assert project.services == ["cache", "db", "web"]
    engines = {c.name: c.engine for c in facts.containers}
    # shop_db_1 runs /usr/local/bin/shop-db: PostgreSQL is known from its section.
    assert engines == {"sessions": "redis", "shop_web_1": "", "shop_cache_1": "redis",
                       "shop_db_1": "postgres"}  # fmt: skip
    assert {v.name for v in facts.volumes} == {"shop_pgdata", "shop_redisdata", "sessions-data"}
    dbs = {(d.engine, d.container, d.name): d.size for d in facts.databases}
    assert dbs[("postgres", "shop_db_1", "shop")] == 7789927
    assert dbs[("redis", "shop_cache_1", "db0")] == 2
    assert dbs[("redis", "sessions", "db0")] == 0
    assert set(project.volumes) == {"shop_pgdata", "shop_redisdata"}
    assert project.binds == ["/srv/shop/uploads"]
    assert facts.env_files == ["/opt/drkit/stack/.env", "/srv/shop/.env"]
    assert facts.nats == [] and facts.errors == []


def test_nothing_of_the_stack_is_covered_and_the_suggestion_covers_all(tmp_path: Path) -> None:
    found = judge(RECORDED, policy(tmp_path))
    gaps = {(f.kind, f.name) for f in found.uncovered}
    assert gaps == {
        ("compose-project", "shop"), ("compose-file", "/srv/shop/docker-compose.yml"),
        ("env-file", "/srv/shop/.env"), ("bind", "/srv/shop/uploads"),
        ("volume", "shop_pgdata"), ("volume", "shop_redisdata"), ("volume", "sessions-data"),
        ("container", "shop_web_1"), ("container", "shop_db_1"),
        ("container", "shop_cache_1"), ("container", "sessions"),
        ("postgres-db", "shop"), ("redis", "shop_cache_1"), ("redis", "sessions"),
        # the image's copy of the stack: compose files on disk that no container runs
        ("compose-file", "/opt/drkit/stack/docker-compose.yml"),
    }  # fmt: skip
    assert by(found.findings, "env-file")["/opt/drkit/stack/.env"].covered_by == ["env"]
    assert not by(found.findings, "postgres-db")["postgres"].data
    text = found.suggestion_toml()
    assert text.count("[[source]]") == 5
    [down] = [s for s in found.suggested if s["name"] == "compose-down"]
    assert (down["kind"], down["paths"]) == ("files", ["/opt/drkit/stack"])
    extended = policy(tmp_path, "", "extended.toml")
    path = tmp_path / "extended.toml"
    path.write_text(path.read_text() + text)
    extended = load_policy(path)  # the suggestion validates
    again = judge(RECORDED, extended)
    assert again.uncovered == [] and again.suggested == []
    covered = {f.name: f.covered_by for f in again.findings if f.kind == "volume"}
    assert covered == {
        "shop_pgdata": ["pg-shop_db_1-shop"],  # a pg_dump in the container covers its volume
        "shop_redisdata": ["redis-shop_cache_1"],  # an RDB of the server using it
        "sessions-data": ["redis-sessions"],
    }
    rdb = {s["name"]: s for s in found.suggested if s["kind"] == "redis"}
    assert rdb["redis-sessions"]["container"] == "sessions"
    [compose] = [s for s in found.suggested if s["kind"] == "compose"]
    assert (compose["project"], compose["dir"], compose["dumps"]) == ("shop", "/srv/shop",
                                                                      ["cache", "db"])  # fmt: skip
    assert by(again.findings, "container")["shop_web_1"].covered_by == ["compose-shop"]
    assert by(again.findings, "bind")["/srv/shop/uploads"].covered_by == ["compose-shop"]


def test_suggested_names_do_not_clash_with_the_policy(tmp_path: Path) -> None:
    taken = (
        '[[source]]\nkind = "files"\nname = "compose-shop"\npaths = ["/etc/hosts"]\n'
        '[[source]]\nkind = "docker_volume"\nname = "redis-sessions"\nvolume = "other"\n'
    )
    found = judge(RECORDED, policy(tmp_path, taken))
    names = [s["name"] for s in found.suggested]
    assert "compose-shop-2" in names and "redis-sessions-2" in names
    path = tmp_path / "p.toml"
    path.write_text(path.read_text() + found.suggestion_toml())
    assert judge(RECORDED, load_policy(path)).uncovered == []


def test_policy_sources_that_cover_volumes_databases_and_files(tmp_path: Path) -> None:
    sources = (
        '[[source]]\nkind = "files"\nname = "docker-volumes"\n'
        'paths = ["/var/lib/docker/volumes/shop_*"]\n'
        '[[source]]\nkind = "command"\nname = "sessions-rdb"\n'
        'command = ["docker", "exec", "sessions", "redis-cli", "--rdb", "-"]\n'
        '[[source]]\nkind = "env"\nname = "envs"\npaths = ["/srv/*/.env", "/opt/*/.env"]\n'
        '[[source]]\nkind = "files"\nname = "shop"\npaths = ["/srv/shop/"]\n'
    )
    found = judge(RECORDED, policy(tmp_path, sources))
    volumes = by(found.findings, "volume")
    assert volumes["shop_pgdata"].covered_by == ["docker-volumes"]  # its mountpoint
    assert volumes["sessions-data"].covered_by == ["sessions-rdb"]  # names the container
    assert by(found.findings, "postgres-db")["shop"].covered_by == ["docker-volumes"]
    assert by(found.findings, "env-file")["/srv/shop/.env"].covered_by == ["envs", "shop"]
    # All but a compose file on disk that no container runs (a project that is down).
    [down] = found.uncovered
    assert (down.kind, down.name, down.project) == (
        "compose-file",
        "/opt/drkit/stack/docker-compose.yml",
        "",
    )
    assert down.detail == "on disk: no container runs it"


def test_postgres_sources_match_container_database_and_host_port(tmp_path: Path) -> None:
    output = RECORDED.replace(
        f"{MARKER} pm2",
        f"{MARKER} pg-clusters\n15 main 5433 online postgres /var/lib/postgresql/15/main\n"
        f"{MARKER} pg-databases 15 main 5433\npostgres|7000000\ncallmeback|9000000\n"
        f"{MARKER} pm2",
    )
    sources = (
        '[[source]]\nkind = "postgres"\nname = "wrong-db"\ndatabase = "other"\n'
        'container = "shop_db_1"\n'
        '[[source]]\nkind = "postgres"\nname = "wrong-port"\ndatabase = "callmeback"\n'
    )
    found = judge(output, policy(tmp_path, sources))
    dbs = {(f.where, f.name): f for f in found.findings if f.kind == "postgres-db"}
    assert dbs[("shop_db_1", "shop")].covered_by == []
    assert dbs[("host 15/main", "callmeback")].covered_by == []  # 5432 is not 5433
    assert not dbs[("host 15/main", "postgres")].data
    [suggested] = [s for s in found.suggested if s.get("database") == "callmeback"]
    assert suggested["port"] == 5433 and suggested["sudo_user"] == "postgres"
    good = '[[source]]\nkind = "postgres"\nname = "cmb"\ndatabase = "callmeback"\nport = 5433\n'
    again = judge(output, policy(tmp_path, good, "good.toml"))
    assert by(again.findings, "postgres-db")["callmeback"].covered_by == ["cmb"]


# Compose v2 (docker compose): containers project-service-1, the env file in a label.
V2 = [
    {
        "Id": "a" * 64, "Name": "/platform-nats-1", "Path": "/nats-server",
        "Args": ["-js", "-sd", "/data/jetstream"], "State": {"Status": "running"},
        "Config": {"Image": "nats:2.10-alpine", "Labels": {
            "com.docker.compose.project": "platform",
            "com.docker.compose.service": "nats",
            "com.docker.compose.project.working_dir": "/opt/conversational-platform",
            "com.docker.compose.project.config_files":
                "/opt/conversational-platform/docker-compose.prod.yml",
            "com.docker.compose.project.environment_file":
                "/opt/conversational-platform/config/.env",
        }},
        "Mounts": [{"Type": "bind", "Source": "/var/lib/platform-data/nats",
                    "Destination": "/data", "RW": True}],
    },
    {
        "Id": "b" * 64, "Name": "/platform-api-1", "Path": "/app/api", "Args": [],
        "State": {"Status": "running"},
        "Config": {"Image": "platform-api:latest", "Labels": {
            "com.docker.compose.project": "platform",
            "com.docker.compose.service": "api",
            "com.docker.compose.project.working_dir": "/opt/conversational-platform",
            "com.docker.compose.project.config_files": "docker-compose.prod.yml",
        }},
        "Mounts": [{"Type": "bind", "Source": "/opt/conversational-platform/config",
                    "Destination": "/config", "RW": False}],
    },
]  # fmt: skip


def test_compose_v2_names_env_file_label_and_nats_in_a_container(tmp_path: Path) -> None:
    output = (
        f"{MARKER} whoami\ndocker\nplatform\n{MARKER} docker-version\n27.3.1\n"
        f"{MARKER} docker-containers\n{json.dumps(V2)}\n{MARKER} docker-volumes\n[]\n"
        f"{MARKER} ps\n  901 root /nats-server -js -sd /data/jetstream\n"
        f"  77 nats nats-server -js -p 4223 -sd /var/lib/nats\n"
        f"{MARKER} containerized\n901 0::/system.slice/docker-{'a' * 64}.scope\n"
        f"{MARKER} end\n"
    )
    facts = parse(output)
    [project] = facts.projects
    assert project.name == "platform" and project.services == ["api", "nats"]
    assert project.files == ["/opt/conversational-platform/docker-compose.prod.yml"]
    assert project.env_files == ["/opt/conversational-platform/config/.env"]
    assert [(n.where, n.store_dir) for n in facts.nats] == [
        ("host", "/var/lib/nats"),  # pid 901 is the container's: not listed twice
        ("platform-nats-1", "/data/jetstream"),
    ]
    found = judge(output, policy(tmp_path))
    binds = by(found.findings, "bind")
    assert binds["/var/lib/platform-data/nats"].uncovered
    assert not binds["/opt/conversational-platform/config"].data  # read-only mount
    nats = '[[source]]\nkind = "nats"\nname = "nats"\ncontainer = "platform-nats-1"\n'
    again = judge(output, policy(tmp_path, nats, "nats.toml"))
    servers = {f.where: f.covered_by for f in again.findings if f.kind == "nats-server"}
    assert servers == {"host": [], "platform-nats-1": ["nats"]}  # the host's is on 4223
    on_host = '[[source]]\nkind = "nats"\nname = "host-nats"\nurl = "nats://127.0.0.1:4223"\n'
    third = judge(output, policy(tmp_path, on_host, "host.toml"))
    servers = {f.where: f.covered_by for f in third.findings if f.kind == "nats-server"}
    assert servers == {"host": ["host-nats"], "platform-nats-1": ["host-nats"]}


def test_redis_keyspaces_are_one_server() -> None:
    output = (
        f"{MARKER} container-redis falkordb\n# Keyspace\ndb0:keys=3,expires=0,avg_ttl=0\n"
        "db2:keys=4,expires=1,avg_ttl=9\ndir\n/data\n"
    )
    [db] = parse(output).databases
    assert (db.engine, db.container, db.name, db.size) == ("redis", "falkordb", "db0,db2", 7)


def test_compose_env_file_forms() -> None:
    text = """
services:
  a:
    env_file: .env
  b:
    env_file: [./a.env, "b.env"]
  c:
    env_file:
      - ./config/c.env   # comment
      - path: ./d.env
        required: false
    image: x
"""
    assert compose_env_files(text) == [".env", "./a.env", "b.env", "./config/c.env", "./d.env"]


def test_path_coverage_with_globs_and_parents() -> None:
    assert path_covered("/srv/shop/.env", ["/srv/*/.env"])
    assert path_covered("/srv/shop/uploads/a", ["/srv/shop"])
    assert path_covered("/srv/shop", ["/srv/shop/"])
    assert not path_covered("/srv/shopping", ["/srv/shop"])
    assert not path_covered("relative", ["/"])


def test_pm2_caddy_nginx_and_certificate_stores() -> None:
    apps = parse_pm2(
        '@home /root/.pm2 root\n"name":"voice-pipeline"\n"pm_cwd":"/root/voice-pipeline"\n'
        '"pm_exec_path":"/root/voice-pipeline/server.js"\n"name":"voice-pipeline"\n'
        '@home /home/deploy/.pm2 deploy\n"name": "db-proxy"\n'  # pm2 writes JSON indented
    )
    assert [(a.name, a.user, a.cwd, a.script) for a in apps] == [
        ("voice-pipeline", "root", "/root/voice-pipeline", "/root/voice-pipeline/server.js"),
        ("db-proxy", "deploy", "", ""),
    ]
    [app] = parse_pm2('@home /root/.pm2 root\n"name":"a"\n"pm_cwd":"/root/a"\n')
    assert (app.name, app.user, app.cwd) == ("a", "root", "/root/a")
    caddyfile = """
{
    email ops@example.com
}
(common) {
    encode gzip
}
voice.example.com, db.example.com {
    reverse_proxy localhost:8080
}
logs.example.com {
    import common
}
"""
    assert caddy_sites(caddyfile) == ["voice.example.com", "db.example.com", "logs.example.com"]
    assert nginx_names("server_name api.example.com www.example.com;\nserver_name _;") == [
        "api.example.com", "www.example.com",
    ]  # fmt: skip


def test_sections_and_errors_are_reported() -> None:
    output = (
        f"noise\n{MARKER} docker-version\npermission denied\n{MARKER} docker-containers\nnot json\n"
    )
    assert [s[0] for s in sections(output)] == ["docker-version", "docker-containers"]
    facts = parse(output)
    assert facts.docker == ""
    assert facts.errors == ["docker: permission denied", "docker inspect: not json"]


def test_the_script_is_valid_sh_and_runs_here() -> None:
    """On this machine, with the Docker CLI pointed at no engine: other tests' containers
    are not ours to exec into. Docker's absence is an error in its section, not a failure."""
    subprocess.run(["sh", "-n"], input=SCRIPT.encode(), check=True, timeout=30)
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    done = subprocess.run(["sh", "-s"], input=SCRIPT.encode(), capture_output=True, env=env,
                          timeout=120, check=True)  # fmt: skip
    output = done.stdout.decode()
    names = [s[0] for s in sections(output)]
    assert names[0] == "whoami" and names[-1] == "end"
    facts = parse(output)
    assert facts.user == "root" and facts.containers == []


def test_mysql_and_redis_sources_cover_their_containers(tmp_path: Path) -> None:
    """A ``mysql`` source covers the databases it lists (or all) in its container and
    that container's volumes; a ``redis`` source its container's server and volume."""
    output = RECORDED.replace(
        f"{MARKER} container-redis sessions",
        f"{MARKER} container-mysql shop_web_1\nmysql\nopik\nextra\n"
        f"{MARKER} container-redis sessions",
    )
    sources = (
        '[[source]]\nkind = "mysql"\nname = "opik"\ncontainer = "shop_web_1"\n'
        'databases = ["opik"]\n'
        '[[source]]\nkind = "redis"\nname = "sessions-rdb"\ncontainer = "sessions"\n'
    )
    found = judge(output, policy(tmp_path, sources))
    dbs = by(found.findings, "mysql-db")
    assert set(dbs) == {"opik", "extra"}  # the mysql schema is the server's
    assert dbs["opik"].covered_by == ["opik"] and dbs["extra"].uncovered
    assert by(found.findings, "redis")["sessions"].covered_by == ["sessions-rdb"]
    assert by(found.findings, "volume")["sessions-data"].covered_by == ["sessions-rdb"]
    suggested = {s["kind"]: s for s in found.suggested if s["kind"] in ("mysql", "redis")}
    assert suggested["mysql"]["databases"] == ["extra"]
    assert suggested["redis"]["container"] == "shop_cache_1"
    path = tmp_path / "p.toml"
    path.write_text(path.read_text() + found.suggestion_toml())
    again = judge(output, load_policy(path))  # validates, and covers what was missing
    assert [f.name for f in again.uncovered] == []


def test_a_compose_source_covers_its_project_but_not_its_dumped_services(tmp_path: Path) -> None:
    sources = (
        '[[source]]\nkind = "compose"\nname = "shop"\nproject = "shop"\ndir = "/srv/shop"\n'
        'dumps = ["db"]\n'
        '[[source]]\nkind = "env"\nname = "env"\npaths = ["/opt/*/.env"]\n'
    )
    found = judge(RECORDED, policy(tmp_path, sources))
    volumes = by(found.findings, "volume")
    assert volumes["shop_redisdata"].covered_by == ["shop"]  # copied with the project down
    assert volumes["shop_pgdata"].uncovered  # db is dumped: by a source the policy lacks
    assert by(found.findings, "bind")["/srv/shop/uploads"].covered_by == ["shop"]
    assert by(found.findings, "compose-file")["/srv/shop/docker-compose.yml"].covered_by == ["shop"]
    assert by(found.findings, "postgres-db")["shop"].uncovered
    assert by(found.findings, "redis")["shop_cache_1"].covered_by == ["shop"]
    # db; sessions; the image's copy of the stack, which no container runs
    assert {s["kind"] for s in found.suggested} == {"postgres", "redis", "files"}


def test_a_path_a_source_excludes_is_not_covered_by_it(tmp_path: Path) -> None:
    """``exclude`` as tar reads it: ``.env`` leaves out the project's .env file (the env
    source must take it), ``uploads`` the bind mount under the directory."""
    files = (
        '[[source]]\nkind = "files"\nname = "shop"\npaths = ["/srv/shop"]\n'
        'exclude = [".env", "uploads"]\n'
    )
    found = judge(RECORDED, policy(tmp_path, files))
    paths = {(f.kind, f.name): f.covered_by for f in found.findings}
    assert paths[("compose-file", "/srv/shop/docker-compose.yml")] == ["shop"]
    assert paths[("env-file", "/srv/shop/.env")] == []
    assert paths[("bind", "/srv/shop/uploads")] == []
    with_env = files + '[[source]]\nkind = "env"\nname = "env"\npaths = ["/srv/shop/.env"]\n'
    again = judge(RECORDED, policy(tmp_path, with_env, name="q.toml"))
    assert {(f.kind, f.name): f.covered_by for f in again.findings}[
        ("env-file", "/srv/shop/.env")
    ] == ["env"]


def test_an_env_file_a_compose_source_excludes_gets_an_env_suggestion(tmp_path: Path) -> None:
    compose = (
        '[[source]]\nkind = "compose"\nname = "c"\nproject = "shop"\ndir = "/srv/shop"\n'
        'exclude = [".env"]\n'
    )
    found = judge(RECORDED, policy(tmp_path, compose))
    [env] = [f for f in found.uncovered if f.kind == "env-file" and f.project == "shop"]
    assert env.name == "/srv/shop/.env" and env.suggestion is not None
    [source] = [s for s in found.suggested if s["name"] == env.suggestion["source"]]
    assert source["kind"] == "env" and "/srv/shop/.env" in source["paths"]
