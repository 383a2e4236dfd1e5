"""``drkit discover`` over SSH against a host running its own Docker engine (issue #18).

The host is the dockerhost drill image (docker/hosts/dockerhost/), started with
the flags a nested engine needs (not --privileged), running a compose project
built here from Debian packages: an HTTP app, PostgreSQL and Redis with data in
named volumes, a bind mount and an env file (``stack-up.sh``), plus one
standalone Redis container. The stack's images are built by this machine's
engine FROM the drkit base (cached by content hash, like drill images) and
loaded into the host's engine with ``docker save`` | ``docker load``: no
registry. A policy with no source for any of it: discover lists everything and
reports the volumes, the bind mount, the compose files and the database
uncovered; ``--suggest``'s TOML, appended, validates and covers them all.

In ``make drills`` (tests/conftest.py DRILL_SUITES): minutes of vfs copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.drills.container import NESTED_ENGINE_FLAGS, HostContainer, published_ports
from drkit.drills.engine import DockerError, docker, docker_binary, ensure_engine
from drkit.drills.images import docker_dir, ensure_base_image, ensure_host_image, image_exists
from tests.helpers import drkit, write_policy
from tests.seeded.containers import Login, ssh_login

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

STACK_SERVICES = {"app": "shop/web:1", "db": "shop/db:1", "cache": "shop/cache:1"}
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def stack_images(base: str) -> list[str]:
    """The stack's images, built by this machine's engine FROM ``base`` unless an image
    with the tag of their context's hash exists (docker/hosts/dockerhost/stack/*/)."""
    tags = []
    for service in STACK_SERVICES:
        context = docker_dir() / "hosts" / "dockerhost" / "stack" / service
        digest = hashlib.sha256(base.encode())
        for path in sorted(context.rglob("*")):
            if path.is_file():
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
        tag = f"drkit-dockerhost-stack-{service}:{digest.hexdigest()[:12]}"
        if not image_exists(tag):
            what = f"build the stack's {service} image"
            docker("build", "--force-rm", "--tag", tag, "--build-arg", f"BASE={base}",
                   str(context), timeout=1800, what=what)  # fmt: skip
        tags.append(tag)
    return tags


def _ssh_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            return conn.recv(4) == b"SSH-"
    except OSError:
        return False


def start_dockerhost(image: str, login: Login) -> HostContainer:
    """The dockerhost container, its sshd on a 127.0.0.1 port, once its engine and sshd
    are ready; removed again (with its engine's volume) if it does not get there."""
    done = docker(
        "run", "--detach", "--init", "--hostname", "dockerhost", *NESTED_ENGINE_FLAGS,
        "--label", "org.drkit.test=discover", "--publish", "127.0.0.1::22",
        "--env", "DRKIT_AUTHORIZED_KEYS", "--env", "DRKIT_ENGINE=1", image,
        env={"DRKIT_AUTHORIZED_KEYS": login.public}, timeout=600, what="start the dockerhost",
    )  # fmt: skip
    box = HostContainer(done.stdout.decode().strip(), "dockerhost", image, {})
    try:
        deadline = time.monotonic() + 300
        while True:
            state, code = box.status()
            if state != "running":
                raise DockerError(f"dockerhost {state} (exit {code}):\n{box.logs()}")
            box.ports = box.ports or published_ports(box)
            ready = box.exec(["test", "-e", "/run/drkit/ready"], check=False).returncode == 0
            if ready and _ssh_banner(box.port(22)):
                return box
            if time.monotonic() > deadline:
                raise DockerError(f"dockerhost not ready in 300 s:\n{box.logs()}")
            time.sleep(0.5)
    except BaseException:
        box.remove()
        raise


@pytest.fixture(scope="module")
def dockerhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostContainer, Login]]:
    try:
        ensure_engine()
        base = ensure_base_image().tag
        image = ensure_host_image("dockerhost", base_tag=base).tag
    except DockerError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Docker tests, but: {exc}")
        pytest.skip(f"no Docker engine or dockerhost image here: {exc}")
    images = stack_images(base)
    login = ssh_login(tmp_path_factory.mktemp("dockerhost-login"))
    box = start_dockerhost(image, login)
    try:
        save = subprocess.Popen([docker_binary(), "save", *images], stdout=subprocess.PIPE)
        try:
            up = subprocess.run(
                [docker_binary(), "exec", "-i", box.id, "/opt/drkit/stack-up.sh", "/srv/shop"],
                stdin=save.stdout, capture_output=True, timeout=900, check=False,
            )  # fmt: skip
        finally:
            if save.stdout is not None:
                save.stdout.close()
            save.wait(timeout=120)
        assert up.returncode == 0, (up.stdout + up.stderr).decode(errors="replace")
        yield box, login
    finally:
        box.remove()


def _policy(path: Path, box: HostContainer, login: Login, tmp: Path) -> Path:
    known = tmp / "known_hosts"
    known.write_text(box.known_hosts_line())
    connection = (
        f'[connection]\ntype = "ssh"\naddress = "127.0.0.1"\nport = {box.port(22)}\n'
        f'user = "root"\nidentity_file = "{login.identity}"\nknown_hosts = "{known}"\n'
    )
    # Only an env source for another directory: nothing of the stack is covered.
    sources = [{"kind": "env", "name": "env", "paths": ["/opt/*/.env"]}]
    # The box is a host of its own: its backups' coverage check is what is tested.
    return write_policy(path, "dockerhost", {"url": f"file://{tmp / 'repo'}"}, [RECIPIENT],
                        sources, extra=connection, discover=True)  # fmt: skip


def _by(found: dict, kind: str) -> dict[str, dict]:
    return {f["name"]: f for f in found["findings"] if f["kind"] == kind}


def test_discover_nats_on_the_conversational_platform_host(tmp_path: Path) -> None:
    """The conversational-platform image (nats-server on the host, JetStream in
    /var/lib/nats, Caddy) as the shipped policy's login user ``docker`` (sudo): the
    policy's nats source (snapshot API at 127.0.0.1:4222; its ``container`` is for
    stop-copy) covers the server discovery finds."""
    from tests.seeded.containers import host_containers, write_known_hosts
    from tests.seeded.policy import encryption_files, shipped_policy, ssh_connection

    login = ssh_login(tmp_path / "ssh")
    host = "conversational-platform"
    with host_containers(host, [host], login, user="docker") as boxes:
        box = boxes[host]
        known = write_known_hosts(tmp_path / "known_hosts", box)
        policy = shipped_policy(
            host, tmp_path / "policies",
            connection=ssh_connection(box.port(22), login.identity, known, user="docker"),
            repository={"url": (tmp_path / "repo").as_uri()},
            encryption=encryption_files(tmp_path, host, RECIPIENT),
        )  # fmt: skip
        found = json.loads(drkit("discover", "--policy", str(policy), "--json", check=True).stdout)
    assert found["login_user"] == "docker" and found["errors"] == [], found["errors"]
    [nats] = _by(found, "nats-server").values()
    assert (nats["name"], nats["where"], nats["covered_by"]) == (
        "/var/lib/nats",
        "host",
        ["jetstream"],
    )


def test_discover_the_seeded_visualkit_host_against_its_shipped_policy(tmp_path: Path) -> None:
    """The visualkit-hetzner image seeded as seed 004 describes it (tests/seeded/
    visualkit.py: Caddy with five sites and their certificates, the two compose
    projects' directories with .env files; no Docker in the image): the shipped
    policy covers all of it, the .env files by ``env`` (and not ``apps``, which
    excludes them), Caddy's store by ``caddy``. What the seed does not show (Chatwoot's
    project and databases) is not in the image either: only the real host can say."""
    from tests.seeded.containers import host_containers, write_known_hosts
    from tests.seeded.policy import encryption_files, shipped_policy, ssh_connection
    from tests.seeded.visualkit import HOST, SITES, seed_visualkit

    login = ssh_login(tmp_path / "ssh")
    with host_containers(HOST, [HOST], login) as boxes:
        box = boxes[HOST]
        seed = seed_visualkit(box)
        known = write_known_hosts(tmp_path / "known_hosts", box)
        policy = shipped_policy(
            HOST, tmp_path / "policies",
            connection=ssh_connection(box.port(22), login.identity, known),
            repository={"url": (tmp_path / "repo").as_uri()},
            encryption=encryption_files(tmp_path, HOST, RECIPIENT),
        )  # fmt: skip
        found = json.loads(drkit("discover", "--policy", str(policy), "--json", check=True).stdout)
    assert found["docker"] is None and found["errors"] == [], found["errors"]
    envs = _by(found, "env-file")
    assert {p: f["covered_by"] for p, f in envs.items()} == {p: ["env"] for p in seed.env_files}
    assert set(SITES) <= set(_by(found, "caddy-site"))
    [certs] = _by(found, "caddy-certs").values()
    assert certs["covered_by"] == ["caddy"]
    assert found["uncovered"] == 0, [f for f in found["findings"] if f["uncovered"]]


# First in the file: the module's dockerhost container is started by the next test and
# removed only at the end of the module.


def test_discover_the_seeded_vultr_host_against_its_shipped_policy(tmp_path: Path) -> None:
    """A host without Docker, as seeds 000/003 describe it (tests/seeded/vultr.py):
    PostgreSQL on the host, PM2 apps, Caddy sites and certificates, apps' .env files.
    ``policies/vultr.toml`` covers all of it; discovery says so, source by source."""
    from tests.seeded.containers import host_containers, write_known_hosts
    from tests.seeded.policy import encryption_files, shipped_policy, ssh_connection
    from tests.seeded.vultr import DATABASE, PORTS, SITES, seed_vultr

    login = ssh_login(tmp_path / "ssh")
    with host_containers("vultr", ["vultr"], login) as boxes:
        box = boxes["vultr"]
        seed_vultr(box)
        known = write_known_hosts(tmp_path / "known_hosts", box)
        policy = shipped_policy(
            "vultr", tmp_path / "policies",
            connection=ssh_connection(box.port(22), login.identity, known),
            repository={"url": (tmp_path / "repo").as_uri()},
            encryption=encryption_files(tmp_path, "vultr", RECIPIENT),
        )  # fmt: skip
        found = json.loads(drkit("discover", "--policy", str(policy), "--json", check=True).stdout)
    assert found["docker"] is None and found["compose_projects"] == []
    assert found["errors"] == [], found["errors"]
    dbs = _by(found, "postgres-db")
    assert dbs[DATABASE]["where"] == "host 15/main" and dbs[DATABASE]["covered_by"] == [
        "callmeback"
    ]
    assert set(_by(found, "pm2-app")) == set(PORTS)
    assert {tuple(f["covered_by"]) for f in _by(found, "pm2-app").values()} == {("pm2",)}
    assert set(SITES) <= set(_by(found, "caddy-site"))
    [certs] = _by(found, "caddy-certs").values()
    assert certs["covered_by"] == ["caddy"]
    envs = _by(found, "env-file")
    assert envs and all("env" in f["covered_by"] for f in envs.values()), envs
    assert found["uncovered"] == 0, [f for f in found["findings"] if f["uncovered"]]


def test_discover_lists_the_compose_stack_and_suggest_covers_it(
    dockerhost: tuple[HostContainer, Login], tmp_path: Path
) -> None:
    box, login = dockerhost
    policy = _policy(tmp_path / "dockerhost.toml", box, login, tmp_path)

    started = time.monotonic()
    res = drkit("discover", "--policy", str(policy), "--json", check=True)
    took = time.monotonic() - started
    found = json.loads(res.stdout)
    assert found["docker"], found
    [project] = found["compose_projects"]
    assert project["name"] == "shop" and project["working_dir"] == "/srv/shop"
    assert project["files"] == ["/srv/shop/docker-compose.yml"]
    assert project["env_files"] == ["/srv/shop/.env"]
    services = {s["service"]: s for s in project["services"]}
    assert set(services) == {"web", "db", "cache"}
    # compose v1 names: project_service_1
    assert {s["container"] for s in services.values()} == {
        "shop_web_1",
        "shop_db_1",
        "shop_cache_1",
    }
    assert services["db"]["image"] == "shop/db:1"

    volumes = _by(found, "volume")
    assert {"shop_pgdata", "shop_redisdata", "sessions-data"} <= set(volumes)
    for name in ("shop_pgdata", "shop_redisdata", "sessions-data"):
        assert volumes[name]["uncovered"], volumes[name]
    assert volumes["shop_pgdata"]["where"] == "shop_db_1"
    binds = _by(found, "bind")
    assert (
        binds["/srv/shop/uploads"]["uncovered"] and binds["/srv/shop/uploads"]["project"] == "shop"
    )
    assert _by(found, "compose-file")["/srv/shop/docker-compose.yml"]["uncovered"]
    assert _by(found, "container")["sessions"]["project"] == ""  # standalone
    dbs = _by(found, "postgres-db")
    assert dbs["shop"]["where"] == "shop_db_1" and dbs["shop"]["uncovered"]
    assert not dbs["postgres"]["data"]  # the maintenance database beside a real one
    redis = _by(found, "redis")
    assert redis["shop_cache_1"]["detail"] == "db0: 2 keys"
    envs = _by(found, "env-file")
    assert envs["/srv/shop/.env"]["uncovered"]
    assert envs["/opt/drkit/stack/.env"]["covered_by"] == ["env"]

    table = drkit("discover", "--policy", str(policy), check=True).stdout
    assert "compose project shop in /srv/shop: services cache, db, web" in table
    for line in ("volume           shop_pgdata", "bind             /srv/shop/uploads"):
        assert any(row.startswith(line) and row.endswith("NOT COVERED")
                   for row in table.splitlines()), table  # fmt: skip

    suggestion = drkit("discover", "--policy", str(policy), "--suggest", check=True).stdout
    assert 'kind = "compose"' in suggestion and 'kind = "redis"' in suggestion
    extended = tmp_path / "extended.toml"
    extended.write_text(policy.read_text() + suggestion)
    drkit("policy", "validate", str(extended), check=True)
    again = json.loads(drkit("discover", "--policy", str(extended), "--json", check=True).stdout)
    assert again["uncovered"] == 0, [f for f in again["findings"] if f["uncovered"]]
    assert _by(again, "volume")["shop_pgdata"]["covered_by"] == ["pg-shop_db_1-shop"]
    assert _by(again, "volume")["shop_redisdata"]["covered_by"] == ["redis-shop_cache_1"]
    print(f"discover took {took:.1f} s")


def test_the_backup_time_check_over_ssh_names_the_stacks_gaps(
    dockerhost: tuple[HostContainer, Login], tmp_path: Path
) -> None:
    """``uncovered_data`` (what ``drkit backup`` runs once per run, over its own runner)
    on the Docker host: the same gaps as ``drkit discover``, and its warning names them."""
    from drkit.actions.backup_coverage import uncovered_data
    from drkit.policy.loader import load_policy
    from drkit.remote.ssh import SshRunner

    box, login = dockerhost
    path = _policy(tmp_path / "dockerhost.toml", box, login, tmp_path)
    found = json.loads(drkit("discover", "--policy", str(path), "--json", check=True).stdout)
    policy = load_policy(path)
    runner = SshRunner(policy.host, policy.connection)
    try:
        started = time.monotonic()
        check = uncovered_data(policy, runner)
        took = time.monotonic() - started
    finally:
        runner.close()
    assert check.note is None and check.errors == (), (check.note, check.errors)
    gaps = {(f["kind"], f["name"]) for f in found["findings"] if f["uncovered"]}
    assert {(f.kind, f.name) for f in check.findings} == gaps and check.count == len(gaps)
    [line] = check.lines()
    assert line.startswith(f"host dockerhost: {len(gaps)} data-bearing thing(s) no source ")
    assert "compose-project shop" in line, line
    print(f"backup-time check over ssh: {took:.1f} s, {check.count} uncovered")


def _add_user(box: HostContainer, user: str, login: Login, *, sudo: bool) -> None:
    script = (
        f"useradd -m -s /bin/bash {user} && usermod -p '*' {user} && "
        f"install -d -m 700 -o {user} -g {user} /home/{user}/.ssh && "
        f"install -m 600 -o {user} -g {user} /dev/stdin /home/{user}/.ssh/authorized_keys"
    )
    if sudo:
        script += f" && echo '{user} ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/90-{user}"
    box.exec(["sh", "-c", script], input=login.public.encode() + b"\n")


def test_discover_as_a_sudo_user_and_without_rights(
    dockerhost: tuple[HostContainer, Login], tmp_path: Path
) -> None:
    """A login user other than root reads through ``sudo -n``; one who may not gets
    what it can read and each section it could not as a warning, exit 0."""
    box, login = dockerhost
    _add_user(box, "deploy", login, sudo=True)
    _add_user(box, "guest", login, sudo=False)
    policy = _policy(tmp_path / "dockerhost.toml", box, login, tmp_path)

    deploy = tmp_path / "deploy.toml"
    deploy.write_text(policy.read_text().replace('user = "root"', 'user = "deploy"'))
    found = json.loads(drkit("discover", "--policy", str(deploy), "--json", check=True).stdout)
    assert found["login_user"] == "deploy" and found["errors"] == []
    [project] = found["compose_projects"]
    assert set(project["volumes"]) == {"shop_pgdata", "shop_redisdata"}
    assert project["binds"] == ["/srv/shop/uploads"]
    assert _by(found, "postgres-db")["shop"]["where"] == "shop_db_1"

    guest = tmp_path / "guest.toml"
    guest.write_text(policy.read_text().replace('user = "root"', 'user = "guest"'))
    res = drkit("discover", "--policy", str(guest))
    assert res.returncode == 0, res.output
    assert "warning: docker:" in res.stderr, res.output
    assert "compose project" not in res.stdout
