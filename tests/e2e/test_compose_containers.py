"""``redis`` and ``mysql`` sources with ``container =``, over SSH, on a host running its
own Docker engine (the dockerhost image of tests/e2e/test_discover.py, its compose
stack up).

The containers are those of the e2i droplet under their seed names, from the
stand-in images (docker/hosts/e2i-droplet/containers/: Debian's Redis for
FalkorDB, MariaDB for Opik's MySQL; built by this machine's engine FROM the drkit
base and loaded into the host's engine): ``e2i_falkordb`` (root-owned /data,
appendonly no), ``opik-mysql-1`` (root's password only in the container's
MYSQL_ROOT_PASSWORD), plus the stack's ``shop_cache_1`` (Redis as user redis,
appendonly yes). Backup, then data lost (FLUSHALL, DROP DATABASE, junk written),
restore --force-db: keys and rows as at backup, the AOF server keeps them across
a restart, and every source's check passes.

In ``make drills`` (pytestmark): minutes of image builds and vfs copies.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from drkit.drills.container import HostContainer
from drkit.drills.engine import docker, docker_binary
from drkit.drills.images import docker_dir, ensure_base_image, image_exists
from tests.e2e.test_discover import dockerhost  # noqa: F401 - the fixture
from tests.helpers import drkit, write_policy
from tests.seeded.containers import Login

pytestmark = [pytest.mark.docker, pytest.mark.drills, pytest.mark.timeout(2400)]
STANDINS = docker_dir() / "hosts" / "e2i-droplet" / "containers"
PASSWORD = "opik-" + hashlib.sha256(b"drkit compose test").hexdigest()[:16]


def standin_image(name: str, base: str) -> str:
    """The stand-in image of ``name`` built FROM ``base`` unless its hash tag exists."""
    context = STANDINS / name
    digest = hashlib.sha256(base.encode())
    for path in sorted(context.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    tag = f"drkit-compose-test-{name}:{digest.hexdigest()[:12]}"
    if not image_exists(tag):
        docker("build", "--force-rm", "--tag", tag, "--build-arg", f"BASE={base}",
               str(context), timeout=1800, what=f"build the {name} stand-in")  # fmt: skip
    return tag


def load_into(box: HostContainer, *tags: str) -> None:
    save = subprocess.Popen([docker_binary(), "save", *tags], stdout=subprocess.PIPE)
    try:
        argv = [docker_binary(), "exec", "-i", box.id, "docker", "load"]
        done = subprocess.run(
            argv, stdin=save.stdout, capture_output=True, timeout=900, check=False
        )
    finally:
        if save.stdout is not None:
            save.stdout.close()
        save.wait(timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def sh(box: HostContainer, script: str, *, check: bool = True) -> str:
    done = box.exec(["sh", "-c", script], check=False)
    if check:
        assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
    out = done.stdout if check else done.stdout + done.stderr
    return out.decode(errors="replace").strip()


def rcli(box: HostContainer, container: str, *args: str) -> str:
    return sh(box, f"docker exec {container} redis-cli --raw " + " ".join(args))


def opik_sql(box: HostContainer, sql: str) -> str:
    script = 'MYSQL_PWD="$MYSQL_ROOT_PASSWORD" exec mysql -uroot -N -B'
    done = box.exec(["docker", "exec", "-i", "opik-mysql-1", "sh", "-c", script],
                    input=sql.encode(), check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode().strip()


def wait_for(what: str, probe: Any, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not probe():
        assert time.monotonic() < deadline, f"{what} not ready in {seconds:.0f} s"
        time.sleep(0.5)


def start_standins(box: HostContainer) -> None:
    base = ensure_base_image().tag
    falkor, mysql = standin_image("falkordb", base), standin_image("opik-mysql", base)
    load_into(box, falkor, mysql)
    sh(box, f"docker run -d --name e2i_falkordb -v e2i_falkordb_data:/data {falkor} "
            f"&& MYSQL_ROOT_PASSWORD={PASSWORD} docker run -d --name opik-mysql-1 "
            f"-e MYSQL_ROOT_PASSWORD -v opik_mysql:/var/lib/mysql {mysql}")  # fmt: skip

    def up() -> bool:
        probe = (
            '[ "$(docker exec e2i_falkordb redis-cli ping)" = PONG ] && docker exec '
            'opik-mysql-1 sh -c \'MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mysql -uroot -e "SELECT 1"\''
        )
        return box.exec(["sh", "-c", probe], check=False).returncode == 0

    wait_for("e2i_falkordb and opik-mysql-1", up)


OPIK = """
CREATE DATABASE opik;
CREATE TABLE opik.projects (id INT PRIMARY KEY, name VARCHAR(100));
CREATE TABLE opik.traces (id INT PRIMARY KEY AUTO_INCREMENT, project_id INT, name TEXT,
  FOREIGN KEY (project_id) REFERENCES opik.projects(id));
INSERT INTO opik.projects VALUES (1, 'e2i'), (2, 'it''s (quoted)');
"""


def dockerhost_policy(
    tmp_path: Path, box: HostContainer, login: Login, recipient: str, sources: list[Any]
) -> Path:
    """A policy reaching the dockerhost over SSH as root, its host key pinned."""
    known = tmp_path / "known_hosts"
    known.write_text(box.known_hosts_line())
    connection = (
        f'[connection]\ntype = "ssh"\naddress = "127.0.0.1"\nport = {box.port(22)}\n'
        f'user = "root"\nidentity_file = "{login.identity}"\nknown_hosts = "{known}"\n'
    )
    return write_policy(tmp_path / "dockerhost.toml", "dockerhost",
                        {"url": (tmp_path / "repo").as_uri()}, [recipient], sources,
                        extra=connection)  # fmt: skip


def target(box: HostContainer, login: Login) -> list[str]:
    """``drkit restore`` arguments restoring onto the box (the default is this machine)."""
    return ["--target", f"ssh://root@127.0.0.1:{box.port(22)}",
            "--target-identity", str(login.identity)]  # fmt: skip


def policy_for(tmp_path: Path, box: HostContainer, login: Login, recipient: str) -> Path:
    sources = [
        {"kind": "redis", "name": "falkordb", "container": "e2i_falkordb"},
        {"kind": "redis", "name": "shop-cache", "container": "shop_cache_1"},
        {"kind": "mysql", "name": "opik-mysql", "container": "opik-mysql-1",
         "databases": ["opik"], "container_password_env": "MYSQL_ROOT_PASSWORD"},
    ]  # fmt: skip
    return dockerhost_policy(tmp_path, box, login, recipient, sources)


def test_redis_and_mysql_in_containers_come_back(
    dockerhost: tuple[HostContainer, Login],  # noqa: F811 - the imported fixture
    tmp_path: Path,
    keys: Any,
) -> None:
    box, login = dockerhost
    start_standins(box)
    for i in range(40):
        rcli(box, "e2i_falkordb", "SET", f"node:{i}", f"'label {i}'")
    rcli(box, "e2i_falkordb", "-n", "1", "HSET", "graph:e2i", "nodes", "40")
    rcli(box, "shop_cache_1", "SET", "cart:3", "two-items")
    opik_sql(box, OPIK)
    values = ",".join(f"({1 + i % 2}, 'trace {i}')" for i in range(500))
    opik_sql(box, f"INSERT INTO opik.traces (project_id, name) VALUES {values};")
    policy = policy_for(tmp_path, box, login, keys.recipient)

    backup = drkit("backup", "--policy", str(policy), "--json", check=True)
    assert PASSWORD not in backup.output

    # Lost: keys flushed and junk written, the opik schema dropped.
    rcli(box, "e2i_falkordb", "FLUSHALL")
    rcli(box, "e2i_falkordb", "SET", "junk", "1")
    rcli(box, "shop_cache_1", "FLUSHALL")
    opik_sql(box, "DROP DATABASE opik;")

    identity = keys.identity_file
    plan = drkit("restore", "--policy", str(policy), "--identity", str(identity), "--plan",
                 *target(box, login))  # fmt: skip
    assert "place it as the base of a new AOF manifest" in plan.stdout, plan.output + sh(
        box, "docker ps -a; docker logs --tail 20 opik-mysql-1 2>&1", check=False
    )
    res = drkit("restore", "--policy", str(policy), "--identity", str(identity), "--yes",
                "--json", "--force-db", *target(box, login))  # fmt: skip
    report = json.loads(res.stdout) if res.stdout else {}
    assert res.returncode == 0 and report.get("verdict") == "pass", res.output
    checks = {(c["source"], c["name"]): c for c in report["checks"]}
    assert checks[("falkordb", "keys per database")]["status"] == "pass"
    assert checks[("shop-cache", "keys per database")]["status"] == "pass"
    assert checks[("opik-mysql", "rows per table")]["detail"].startswith("2 table(s), 502 rows")

    assert rcli(box, "e2i_falkordb", "GET", "node:7") == "label 7"
    assert rcli(box, "e2i_falkordb", "GET", "junk") == ""
    assert rcli(box, "e2i_falkordb", "-n", "1", "HGET", "graph:e2i", "nodes") == "40"
    assert rcli(box, "shop_cache_1", "GET", "cart:3") == "two-items"
    assert opik_sql(box, "SELECT name FROM opik.projects WHERE id = 2;") == "it's (quoted)"
    assert opik_sql(box, "SELECT COUNT(*) FROM opik.traces;") == "500"

    # The AOF server (appendonly yes, user redis) keeps the data across a restart: the
    # RDB is the base of its manifest, owned by redis, and new writes go on its AOF.
    rcli(box, "shop_cache_1", "SET", "after", "restore")
    sh(box, "docker restart shop_cache_1 >/dev/null")
    wait_for("shop_cache_1", lambda: box.exec(
        ["docker", "exec", "shop_cache_1", "redis-cli", "ping"], check=False
    ).stdout.strip() == b"PONG")  # fmt: skip
    assert rcli(box, "shop_cache_1", "GET", "cart:1") == "three-items"
    assert rcli(box, "shop_cache_1", "GET", "after") == "restore"
    # The server (user redis) can rewrite its AOF in the restored directory.
    assert rcli(box, "shop_cache_1", "BGREWRITEAOF").startswith("Background append only")
    wait_for("the AOF rewrite", lambda: "aof_rewrite_in_progress:0" in rcli(
        box, "shop_cache_1", "INFO", "persistence"))  # fmt: skip
    assert "aof_last_bgrewrite_status:ok" in rcli(box, "shop_cache_1", "INFO", "persistence")
